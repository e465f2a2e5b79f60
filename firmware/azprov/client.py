# The device client an application lives in: telemetry, device twin, direct methods and cloud-to-device messages over
# the gateway connection (azprov.gateway owns TLS, the SAS token and its renewal). Messages from the hub are queued as
# they arrive and handed to the application's handlers only from poll(), never from inside another exchange, so a
# handler may itself send, report or read the twin. After every connect (first one, token renewal, reconnect after a
# drop) the client subscribes again and reads the twin, so the application never goes deaf and never misses a desired
# property changed while it was offline.
import json
import time

from micropython import const

from azprov import errors, hub, log, transport, watchdog
from azprov.errors import ProvisioningError

_REQUEST_TIMEOUT_MS = const(15000)
_QUEUE_LIMIT = const(16)  # messages held while waiting for an answer; QoS 1 beyond it is left to redelivery
_ANSWERED_KEPT = const(8)  # method request ids remembered, so a redelivered request is not answered twice
HANDLER_FAILED = "handler_failed"


def _handler_error(what, exc):
    # The handler's exception is the application's; its class and text say what went wrong without a traceback.
    error = ProvisioningError(HANDLER_FAILED, "%s raised %s: %s" % (what, type(exc).__name__, exc))
    log.error("handler_failed", *error.fields())
    return error


class Client:
    """Use azprov.connect("provisioning.json") to get one. Handlers:

    on_desired(handler)        handler(patch, version): a desired patch (without "$version"), or after a connect the
                               whole desired section when it is newer than the last one handed over
    on_method(name, handler)   handler(payload) -> (status, payload): answers the direct method `name`
    on_c2d(handler)            handler(body, properties): body bytes, properties dict ("$.mid" etc. for system ones);
                               the message is acknowledged after the handler returns (or raises)
    """

    def __init__(self, gateway, reprovision=None):
        self.gateway = gateway
        self.device_id = gateway.device_id
        self._reprovision = reprovision  # () -> a fresh Gateway, when a cached assignment looks stale
        self._desired = None
        self._methods = {}
        self._c2d = None
        self._sync = hub.DesiredSync()
        self._twin_used = False
        self._subscribed = []
        self._queue = []
        self._generation = 0
        self._next_rid = 0
        self._answered = []
        self._dispatching = False
        self.failures = 0
        self._retry_at = None
        self.methods_answered = 0
        self.c2d_received = 0
        gateway.listener = self

    # --- the application's side

    def on_desired(self, handler):
        self._desired = handler
        self._twin_used = True
        self._after_registration()
        if self.gateway.client is not None:
            try:
                self._sync_twin(self._generation, connecting=False)
            except ProvisioningError as exc:
                self.recover(exc, give_up=False)

    def on_method(self, name, handler):
        self._methods[name] = handler
        self._after_registration()

    def on_c2d(self, handler):
        self._c2d = handler
        self._after_registration()

    def send(self, payload, properties=None, **system):
        """Sends one telemetry message at QoS 1; returns when the gateway acknowledged it. A dict or list is sent as
        JSON (content type application/json, utf-8). Keywords: content_type, content_encoding, message_id,
        correlation_id; `properties` holds the application properties (a dict)."""
        if isinstance(payload, (dict, list)):
            payload = json.dumps(payload)
            system.setdefault("content_type", "application/json")
            system.setdefault("content_encoding", "utf-8")
        topic = hub.telemetry_topic(self.device_id, properties, **system)
        self._publish(topic, payload, "telemetry")

    def twin(self):
        """The full twin {"desired": {...}, "reported": {...}} (each with "$version")."""
        self._twin_used = True
        message = self._request(hub.twin_get_topic, b" ", "twin GET")
        return hub.twin_document(message)

    def report(self, patch):
        """Merges `patch` into the reported properties (None deletes a property); returns the new reported
        $version, or None when the gateway does not say (edgeHub)."""
        self._twin_used = True
        body = hub.reported_body(patch)
        message = self._request(hub.reported_patch_topic, body, "reported patch")
        if message.error is not None:
            raise message.error
        if message.status not in (200, 204):
            raise hub.twin_response_error(message, "reported patch")
        return message.version

    def poll(self, timeout_ms=0):
        """Keeps the connection alive and runs the handlers of whatever arrived, for up to `timeout_ms`. A dropped
        connection is retried with backoff on later calls; errors a retry cannot fix (authentication, ...) raise."""
        end = time.ticks_add(time.ticks_ms(), timeout_ms)
        while True:
            try:
                self._poll_once(max(0, time.ticks_diff(end, time.ticks_ms())))
            except ProvisioningError as exc:
                self.recover(exc, give_up=False)
            if time.ticks_diff(end, time.ticks_ms()) <= 0:
                return

    def run(self):
        """Serves the handlers forever."""
        while True:
            self.poll(1000)

    async def run_async(self, interval_ms=50):
        """The same from an asyncio task: polls without blocking, then lets the other tasks run."""
        import asyncio

        while True:
            self.poll(0)
            await asyncio.sleep(interval_ms / 1000)

    def connect(self):
        """Connects now (subscribing and reading the twin as after every connect); a failure is handled as in
        recover(): retried later by poll(), reprovisioned, or raised."""
        try:
            self._ensure_connected()
        except ProvisioningError as exc:
            self.recover(exc)

    @property
    def connected(self):
        return self.gateway.client is not None

    def close(self):
        self.gateway.close()

    # --- connection

    def after_connect(self, mqtt):
        """Called by the gateway after every CONNACK: subscribe again, then read the twin."""
        self._generation += 1
        self._subscribed = []
        generation = self._generation

        def wait_msg():
            return self._read_packet(mqtt, generation)

        mqtt.wait_msg = wait_msg  # umqtt's publish/subscribe loops call it: every PUBLISH goes to our queue
        self._subscribe()
        if self._desired is not None:
            self._sync_twin(generation, connecting=True)
        log.info(
            "hub_ready",
            ("subscriptions", len(self._subscribed)),
            ("desired_version", self._sync.version if self._sync.version is not None else "-"),
        )

    def _sync_twin(self, generation, connecting):
        # What changed while we were away: the whole desired section, when newer than the last handed over.
        twin = hub.twin_document(self._request(hub.twin_get_topic, b" ", "twin GET", connecting))
        missed = self._sync.on_twin(twin["desired"])
        if missed is not None:
            self._queue.insert(0, (None, missed, None, generation))

    def _wanted(self):
        wanted = []
        if self._methods:
            wanted.append(hub.METHOD_REQUESTS)
        if self._c2d is not None:
            wanted.append(hub.c2d_filter(self.device_id))
        if self._desired is not None:
            wanted.append(hub.DESIRED_PATCHES)
        if self._twin_used:
            wanted.append(hub.TWIN_RESPONSES)
        return wanted

    def _subscribe(self):
        mqtt = self.gateway.client
        for topic in self._wanted():
            if topic not in self._subscribed:
                mqtt.subscribe(topic.encode(), 1)
                self._subscribed.append(topic)
                log.debug("subscribed", ("topic", topic))

    def _after_registration(self):
        if self.gateway.client is not None:
            try:
                self._subscribe()
            except Exception as exc:
                self.recover(self._dropped(exc, "subscribe"), give_up=False)

    def _ensure_connected(self):
        if self.gateway.client is None:
            if self._retry_at is not None:
                early = time.ticks_diff(self._retry_at, time.ticks_ms())
                if early > 0:
                    watchdog.sleep_ms(early)  # the backoff recover() chose
            self._retry_at = None
            self.gateway.connect()

    def _poll_once(self, wait_ms):
        if self.gateway.client is None:
            if self._retry_at is not None:
                early = time.ticks_diff(self._retry_at, time.ticks_ms())
                if early > 0:
                    time.sleep_ms(min(early, wait_ms))
                    return
            self._ensure_connected()
        self.gateway.renew_if_due()
        self._dispatch()
        mqtt = self.gateway.client
        if mqtt is None:
            return  # a handler's exchange lost the connection: the next poll reconnects
        try:
            if mqtt.sock.wait_readable(min(wait_ms, self.gateway.ms_to_ping(), 1000)):
                mqtt.check_msg()
                while mqtt.sock.wait_readable(0):
                    mqtt.check_msg()
            self.gateway.ping_if_due()
        except Exception as exc:
            raise self._dropped(exc, "gateway")
        self._dispatch()
        self.failures = 0

    def _dropped(self, exc, context):
        if self.gateway.client is not None:
            transport.close(self.gateway.client)
            self.gateway.client = None
        return transport.classify(exc, context)

    def recover(self, exc, give_up=True):
        """After a failed exchange (a ProvisioningError from send, twin or report): closes the connection and
        schedules a reconnect with backoff (poll makes it), or reprovisions when the cached assignment looks stale;
        raises what retrying cannot fix (or the error after max_gateway_failures failures in a row)."""
        if self.gateway.client is not None:
            transport.close(self.gateway.client)
            self.gateway.client = None
        self.failures += 1
        limit = self.gateway.config["max_gateway_failures"]
        stale = exc.kind in (errors.AUTHENTICATION, errors.TLS_VERIFICATION, errors.STORAGE) or self.failures >= limit
        if stale and self._reprovision is not None:
            log.warning("reprovisioning", ("reason", exc.kind), ("failures", self.failures))
            self.gateway = self._reprovision()
            self._reprovision = None  # fresh from DPS now: nothing staler to go back to
            self.gateway.listener = self
            self.device_id = self.gateway.device_id
            self.failures = 0
            self._retry_at = None
            return
        if not exc.transient or (give_up and self.failures >= limit):
            raise exc
        from azprov.gateway import backoff_s

        delay = backoff_s(self.failures)
        log.warning("gateway_retry", ("reason", exc.kind), ("in_s", int(delay)), ("failures", self.failures))
        self._retry_at = time.ticks_add(time.ticks_ms(), int(delay * 1000))

    # --- packets

    def _read_packet(self, mqtt, generation):
        # umqtt.simple's wait_msg, except that a PUBLISH is queued with its packet id instead of handed to a
        # callback and acknowledged at once: a C2D message is acknowledged only after its handler returned.
        sock = mqtt.sock
        first = sock.read(1)
        sock.setblocking(True)
        if first is None:
            return None
        if first == b"":
            raise OSError(-1)
        if first == b"\xd0":  # PINGRESP
            sock.read(1)
            return None
        op = first[0]
        if op & 0xF0 != 0x30:
            return op
        size = mqtt._recv_len()
        head = sock.read(2)
        topic_length = head[0] << 8 | head[1]
        topic = bytes(sock.read(topic_length))
        size -= topic_length + 2
        pid = None
        if op & 6:
            if op & 6 != 2:
                raise ProvisioningError(errors.MALFORMED_RESPONSE, "the hub sent a QoS 2 message")
            head = sock.read(2)
            pid = head[0] << 8 | head[1]
            size -= 2
        body = bytes(sock.read(size)) if size > 0 else b""
        if len(self._queue) >= _QUEUE_LIMIT:
            log.warning("cloud_message_deferred", ("topic", topic.decode()), ("queued", len(self._queue)))
            return None  # not acknowledged: a QoS 1 message comes again
        self._queue.append((topic, body, pid, generation))
        return None

    def _ack(self, pid, generation):
        if pid is None or generation != self._generation or self.gateway.client is None:
            return  # from a connection that is gone: the hub delivers it again
        try:
            self.gateway.client.sock.write(bytes((0x40, 2, pid >> 8, pid & 255)))
        except Exception as exc:
            raise self._dropped(exc, "acknowledge")

    def _publish(self, topic, body, context):
        self._ensure_connected()
        try:
            self.gateway.client.publish(topic.encode(), body, qos=1)
        except Exception as exc:
            raise self._dropped(exc, context)

    def _request(self, topic_for, body, what, connecting=False):
        """Publishes a twin request and waits for the answer with its $rid; other messages stay queued."""
        if not connecting:
            self._ensure_connected()
            self._subscribe()
        self._next_rid += 1
        rid = str(self._next_rid)
        mqtt = self.gateway.client
        deadline = time.ticks_add(time.ticks_ms(), _REQUEST_TIMEOUT_MS)
        try:
            mqtt.publish(topic_for(rid).encode(), body, qos=1)
            while True:
                answer = self._take_answer(rid)
                if answer is not None:
                    return answer
                remaining = time.ticks_diff(deadline, time.ticks_ms())
                if remaining <= 0:
                    raise ProvisioningError(errors.TIMEOUT, "%s: no answer in time" % what)
                if mqtt.sock.wait_readable(min(remaining, 1000)):
                    mqtt.check_msg()
        except Exception as exc:
            raise self._dropped(exc, what)

    def _take_answer(self, rid):
        for index in range(len(self._queue)):
            topic = self._queue[index][0]
            if topic is not None and topic.startswith(b"$iothub/twin/res/"):
                try:
                    message = hub.parse(self.device_id, topic, self._queue[index][1])
                except ProvisioningError:
                    continue  # left for dispatch, which logs it
                if message.rid == rid:
                    self._queue.pop(index)
                    return message
        return None

    # --- handing messages to the application

    def _dispatch(self):
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while self._queue:
                topic, body, pid, generation = self._queue.pop(0)
                if pid is not None and generation != self._generation:
                    continue  # a QoS 1 message of a connection that is gone: the hub delivers it again
                if topic is None:
                    self._give_desired(body[0], body[1])
                else:
                    self._handle(topic, body)
                self._ack(pid, generation)
        finally:
            self._dispatching = False

    def _handle(self, topic, body):
        try:
            message = hub.parse(self.device_id, topic, body)
        except ProvisioningError as exc:
            log.error("cloud_message_rejected", *exc.fields())
            return
        kind = message.kind
        if kind == hub.METHOD:
            self._answer(message)
        elif message.error is not None:
            log.error("cloud_message_rejected", ("topic", topic.decode()), *message.error.fields())
        elif kind == hub.DESIRED:
            if self._desired is not None and self._sync.on_patch(message.version):
                self._give_desired(message.body, message.version)
            else:
                log.debug("desired_patch_skipped", ("version", message.version))
        elif kind == hub.C2D:
            self.c2d_received += 1
            if self._c2d is None:
                log.warning("c2d_unhandled", ("bytes", len(message.body)))
                return
            try:
                self._c2d(message.body, message.properties)
            except Exception as exc:
                _handler_error("c2d handler", exc)
        else:
            log.debug("late_twin_answer", ("rid", message.rid))

    def _give_desired(self, patch, version):
        try:
            self._desired(patch, version)
        except Exception as exc:
            _handler_error("desired handler", exc)

    def _answer(self, message):
        rid = message.rid
        if rid in self._answered:
            log.info("method_repeated", ("name", message.name), ("rid", rid))
            return
        self._answered.append(rid)
        if len(self._answered) > _ANSWERED_KEPT:
            self._answered.pop(0)
        handler = self._methods.get(message.name)
        if message.error is not None:
            log.error("cloud_message_rejected", ("method", message.name), *message.error.fields())
            status, payload = 400, {"error": message.error.message}
        elif handler is None:
            status, payload = 404, {"error": "no method named %s" % message.name}
        else:
            try:
                status, payload = handler(message.body)
                if not isinstance(status, int):
                    raise TypeError("status %r is not a whole number" % (status,))
                body = hub.method_response_body(payload)
            except Exception as exc:
                error = _handler_error("method %s" % message.name, exc)
                status, payload = 500, {"error": error.message}
        body = hub.method_response_body(payload)
        self.methods_answered += 1
        log.info("method_answered", ("name", message.name), ("status", status))
        self._publish(hub.method_response_topic(status, rid), body, "method response")
