# The device client an application lives in: telemetry, device twin, direct methods and cloud-to-device messages over
# the gateway connection the supervisor keeps (azprov.supervisor: it connects, waits after failures, registers again).
# Messages from the hub are queued as they arrive and handed to the application's handlers only from poll(), never
# from inside another exchange, so a handler may itself send, report or read the twin. After every connect (first
# one, token renewal, reconnect after a drop) the client subscribes again and reads the twin, so the application
# never goes deaf and never misses a desired property changed while it was offline. The client never sleeps and
# never registers again by itself: a failed exchange goes to the supervisor, which decides.
import json

from micropython import const

from azprov import errors, hub, log
from azprov.errors import ProvisioningError

_REQUEST_TIMEOUT_MS = const(15000)
_WAIT_SLICE_MS = const(1000)
# Bytes of messages held while waiting for an answer or for poll(): past it a QoS 1 message is left to redelivery
# (not acknowledged), a QoS 0 one (a method, a desired patch) is handled as too large. Twin answers are always taken.
_QUEUE_BYTES = const(16384)
_ANSWERED_KEPT = const(8)  # method request ids remembered, so a redelivered request is not answered twice
HANDLER_FAILED = "handler_failed"


def _shown(topic):
    # A topic as logged: text, and not the whole of a long property bag.
    text = bytes(topic).decode() if not isinstance(topic, str) else topic
    return text if len(text) <= 96 else text[:93] + "..."


def _log_too_large(topic, message):
    pairs = [("topic", _shown(topic)), ("bytes", message.too_large), ("action", hub.too_large_action(message.kind))]
    if message.version is not None:
        pairs.append(("version", message.version))
    if message.properties:
        pairs.append(("mid", message.properties.get("$.mid", "-")))
    if message.name is not None:
        pairs.append(("method", message.name))
    log.warning("cloud_message_too_large", *pairs)


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

    send(), twin(), report() and poll() ride out every transient fault (reconnecting with backoff, registering again
    when the gateway refuses the cached credentials); only an error that needs a person is raised."""

    def __init__(self, supervisor):
        self.supervisor = supervisor
        supervisor.listener = self  # attached to every gateway connection the supervisor opens
        self._desired = None
        self._methods = {}
        self._c2d = None
        self._sync = hub.DesiredSync()
        self._twin_used = False
        self._subscribed = []
        self._queue = []  # (topic, body, pid, generation, bytes held)
        self._queued = 0  # bytes held in the queue
        self._generation = 0
        self._next_rid = 0
        self._answered = []
        self._dispatching = False
        self.methods_answered = 0
        self.c2d_received = 0

    @property
    def gateway(self):
        return self.supervisor.gateway

    @property
    def config(self):
        return self.supervisor.config

    @property
    def device_id(self):
        gateway = self.supervisor.gateway
        return gateway.device_id if gateway is not None else None

    @property
    def connected(self):
        gateway = self.supervisor.gateway
        return gateway is not None and gateway.connected

    # --- the application's side

    def on_desired(self, handler):
        self._desired = handler
        self._twin_used = True
        self._after_registration(True)

    def on_method(self, name, handler):
        self._methods[name] = handler
        self._after_registration(False)

    def on_c2d(self, handler):
        self._c2d = handler
        self._after_registration(False)

    def send(self, payload, properties=None, **system):
        """Sends one telemetry message at QoS 1; returns when the gateway acknowledged it. A dict or list is sent as
        JSON (content type application/json, utf-8). Keywords: content_type, content_encoding, message_id,
        correlation_id; `properties` holds the application properties (a dict)."""
        if isinstance(payload, (dict, list)):
            payload = json.dumps(payload)
            system.setdefault("content_type", "application/json")
            system.setdefault("content_encoding", "utf-8")
        self.supervisor.attempt(lambda: self.publish_telemetry(payload, properties, system))

    def twin(self):
        """The full twin {"desired": {...}, "reported": {...}} (each with "$version")."""
        self._twin_used = True
        return self.supervisor.attempt(self._twin)

    def report(self, patch):
        """Merges `patch` into the reported properties (None deletes a property); returns the new reported
        $version, or None when the gateway does not say (edgeHub)."""
        self._twin_used = True
        body = hub.reported_body(patch)
        return self.supervisor.attempt(lambda: self._report(body))

    def poll(self, timeout_ms=0):
        """Keeps the connection alive and runs the handlers of whatever arrived, for up to `timeout_ms`. A dropped
        connection is retried after the wait the retry policy chose, within later calls."""
        supervisor = self.supervisor
        clock = supervisor.clock
        end = clock.ticks_add(clock.ticks_ms(), timeout_ms)
        while True:
            remaining = max(0, clock.ticks_diff(end, clock.ticks_ms()))
            if supervisor.ready(remaining):
                try:
                    self.serve(remaining)
                except Exception as exc:
                    supervisor.failed(exc, "serve")
            if clock.ticks_diff(end, clock.ticks_ms()) <= 0:
                return

    def run(self):
        """Serves the handlers forever."""
        while True:
            self.poll(_WAIT_SLICE_MS)

    async def run_async(self, interval_ms=50):
        """The same from an asyncio task: polls without blocking, then lets the other tasks run."""
        import asyncio

        while True:
            self.poll(0)
            await asyncio.sleep(interval_ms / 1000)

    def close(self):
        self.supervisor.close()

    # --- exchanges (each raises a classified error; the callers above hand it to the supervisor)

    def publish_telemetry(self, payload, properties=None, system=None):
        topic = hub.telemetry_topic(self.device_id, properties, **(system or {}))
        self.gateway.publish(topic, payload, "telemetry")

    def _twin(self):
        message = self._request(hub.twin_get_topic, b" ", "twin GET")
        if message.too_large is not None:
            _log_too_large("$iothub/twin/res/%d/?$rid=%s" % (message.status, message.rid), message)
            message.error.judged = True  # the answer came, too large to hold: asking again would not help
        return hub.twin_document(message)

    def _report(self, body):
        message = self._request(hub.reported_patch_topic, body, "reported patch")
        if message.error is not None:
            raise message.error
        if message.status not in (200, 204):
            raise hub.twin_response_error(message, "reported patch")
        return message.version

    def serve(self, wait_ms):
        """Runs the handlers of what arrived, then waits up to `wait_ms` (at most a second) for more."""
        gateway = self.gateway
        gateway.renew_if_due()
        self._dispatch()
        if gateway.connected:
            gateway.wait(min(wait_ms, _WAIT_SLICE_MS))
            self._dispatch()

    # --- connection

    def after_connect(self, connection):
        """Called by the gateway after every CONNACK: subscribe again, then read the twin."""
        self._generation += 1
        self._subscribed = []
        # QoS 1 messages of the connection that is gone will come again: holding them would crowd out the answers
        # this connection's requests wait for.
        kept = []
        self._queued = 0
        for item in self._queue:
            if item[2] is None:
                kept.append(item)
                self._queued += item[4]
        self._queue = kept
        self._subscribe()
        if self._desired is not None:
            self._sync_twin()
        log.info(
            "hub_ready",
            ("subscriptions", len(self._subscribed)),
            ("desired_version", self._sync.version if self._sync.version is not None else "-"),
        )

    def on_message(self, topic, body, pid):
        """Every PUBLISH the hub sends, from inside the connection's read: queued for poll(). A payload the
        connection streams (transport.PayloadStream, from 1 KB on) is held when the free heap can hold and handle it,
        else read past and queued as hub.TooLarge, so that poll() acknowledges, answers or logs it."""
        kind = hub.kind_of(topic)
        streamed = not isinstance(body, (bytes, bytearray))
        size = body.size if streamed else len(body)
        if kind != hub.TWIN_RESPONSE and self._queued >= _QUEUE_BYTES:
            # A twin answer is always taken: a request is waiting for it, and a backlog must not keep it out.
            if streamed:
                body.skip()
            if pid is not None:
                log.warning(
                    "cloud_message_deferred", ("topic", _shown(topic)), ("bytes", size), ("queued", self._queued)
                )
                return  # not acknowledged: a QoS 1 message comes again
            body = hub.TooLarge(size)  # a QoS 0 one would be lost: answered or logged as too large
        elif streamed:
            held = body.take(size + hub.handling_bytes(kind, size))
            body = held if held is not None else hub.TooLarge(size)
        self._queue.append((topic, body, pid, self._generation, len(body)))
        self._queued += len(body)

    def _sync_twin(self):
        # What changed while we were away: the whole desired section, when newer than the last handed over.
        message = self._request(hub.twin_get_topic, b" ", "twin GET")
        if message.too_large is not None:
            # Read past, not handed over: the desired version handed over last stays, so the next patch (or the twin
            # after the next connect, when it fits) is still handed over.
            _log_too_large("$iothub/twin/res/%d/?$rid=%s" % (message.status, message.rid), message)
            return
        twin = hub.twin_document(message)
        missed = self._sync.on_twin(twin["desired"])
        if missed is not None:
            self._queue.insert(0, (None, missed, None, self._generation, 0))

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
        connection = self.gateway.connection
        for topic in self._wanted():
            if topic not in self._subscribed:
                connection.subscribe(topic)
                self._subscribed.append(topic)
                log.debug("subscribed", ("topic", topic))

    def _after_registration(self, sync_twin):
        if not self.connected:
            return  # the next connect subscribes
        if sync_twin:
            self.supervisor.attempt(self._subscribe_and_sync)
        else:
            self.supervisor.attempt(self._subscribe)

    def _subscribe_and_sync(self):
        self._subscribe()
        self._sync_twin()

    def _request(self, topic_for, body, what):
        """Publishes a twin request and waits for the answer with its $rid; other messages stay queued."""
        self._subscribe()
        self._next_rid += 1
        rid = str(self._next_rid)
        gateway = self.gateway
        clock = self.supervisor.clock
        deadline = clock.ticks_add(clock.ticks_ms(), _REQUEST_TIMEOUT_MS)
        gateway.publish(topic_for(rid), body, what)
        while True:
            answer = self._take_answer(rid)
            if answer is not None:
                return answer
            remaining = clock.ticks_diff(deadline, clock.ticks_ms())
            if remaining <= 0:
                gateway.drop()
                raise ProvisioningError(errors.TIMEOUT, "%s: no answer in time" % what)
            gateway.connection.receive(min(remaining, _WAIT_SLICE_MS))

    def _take_answer(self, rid):
        for index in range(len(self._queue)):
            topic = self._queue[index][0]
            if topic is not None and topic.startswith(b"$iothub/twin/res/"):
                try:
                    message = hub.parse(self.device_id, topic, self._queue[index][1])
                except ProvisioningError:
                    continue  # left for dispatch, which logs it
                if message.rid == rid:
                    self._queued -= self._queue.pop(index)[4]
                    return message
        return None

    def _ack(self, pid, generation):
        if pid is None or generation != self._generation or not self.connected:
            return  # from a connection that is gone: the hub delivers it again
        self.gateway.connection.ack(pid)

    # --- handing messages to the application

    def _dispatch(self):
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while self._queue:
                topic, body, pid, generation, size = self._queue.pop(0)
                self._queued -= size
                if pid is not None and generation != self._generation:
                    continue  # a QoS 1 message of a connection that is gone: the hub delivers it again
                if topic is None:
                    self._give_desired(body[0], body[1])
                else:
                    message = self._parse(topic, body)
                    body = None  # the raw payload is not held while its parsed form is handled
                    if message is not None:
                        self._handle(topic, message)
                        message = None
                self._ack(pid, generation)
        finally:
            self._dispatching = False

    def _parse(self, topic, body):
        try:
            return hub.parse(self.device_id, topic, body)
        except ProvisioningError as exc:
            log.error("cloud_message_rejected", *exc.fields())
            return None

    def _handle(self, topic, message):
        kind = message.kind
        if message.too_large is not None:
            _log_too_large(topic, message)
            if kind == hub.C2D:
                self.c2d_received += 1
        if kind == hub.METHOD:
            self._answer(message)
        elif message.too_large is not None:
            return  # logged above: a C2D message is acknowledged after this, a desired patch or twin answer skipped
        elif message.error is not None:
            log.error("cloud_message_rejected", ("topic", _shown(topic)), *message.error.fields())
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
        body = None
        if message.too_large is not None:
            # Logged by _handle; the caller learns why instead of waiting for its timeout.
            status, payload = 413, {"error": message.error.message}
        elif message.error is not None:
            log.error("cloud_message_rejected", ("method", message.name), *message.error.fields())
            status, payload = 400, {"error": message.error.message}
        elif handler is None:
            status, payload = 404, {"error": "no method named %s" % message.name}
        else:
            try:
                request, message.body = message.body, None
                status, payload = handler(request)
                request = None
                if not isinstance(status, int):
                    raise TypeError("status %r is not a whole number" % (status,))
                body = hub.method_response_body(payload)
            except Exception as exc:
                error = _handler_error("method %s" % message.name, exc)
                status, payload = 500, {"error": error.message}
        if body is None:
            body = hub.method_response_body(payload)
        payload = None  # a large answer is held once, as the JSON text that goes out
        self.methods_answered += 1
        log.info("method_answered", ("name", message.name), ("status", status))
        self.gateway.publish(hub.method_response_topic(status, rid), body, "method response")
