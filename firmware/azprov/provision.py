# The thin shell around azprov.dps: owns the MQTT connection, the clock and the deadline. It reconnects when the
# connection drops and resumes the registration (poll the operation DPS accepted, or register again).
import time

from micropython import const

from azprov import __version__, dps, errors, log, sas, transport, watchdog
from azprov.clock import require_set_clock
from azprov.errors import ProvisioningError
from azprov.store import read_text

_IO_TIMEOUT_MS = const(15000)
_KEEPALIVE_S = const(60)
_MAX_RECONNECTS = const(5)
# DPS payloads at least this large are read from the socket in _CHUNK pieces (a trust bundle's certificates go
# to flash one at a time and the whole answer is never in heap); smaller ones are read whole.
_STREAM_OVER = const(2048)
_CHUNK = const(512)


def _random():
    # Jitter source for retries; os.urandom exists on every port we target.
    import os

    return os.urandom(1)[0] / 256


def _remaining_ms(deadline):
    return time.ticks_diff(deadline, time.ticks_ms())


def _sleep_within(seconds, deadline, cause=None):
    """Waits before the next request; when that would pass the deadline, gives up with the answer that asked for
    the wait (a 429 or 5xx keeps its errorCode and trackingId) or else a timeout."""
    if seconds <= 0:
        return
    if seconds * 1000 >= _remaining_ms(deadline):
        if cause is not None:
            cause.answered = True
            raise cause
        raise ProvisioningError(
            errors.TIMEOUT, "DPS asked to wait %d s, past the registration deadline" % seconds, retry_after=int(seconds)
        )
    watchdog.sleep_ms(int(seconds * 1000))  # a DPS retry-after can be long: the watchdog stays fed


class Session:
    """One DPS registration for a loaded provisioning file (azprov.config)."""

    def __init__(self, config, client_version="azprov/" + __version__, bundle_sink=None):
        self.config = config
        self.bundle_sink = bundle_sink  # see dps.Registration
        self.streamed = []
        self.client_version = client_version
        self.connections = 0
        self._inbox = []
        self._ctx = None

    def _on_message(self, topic, body):
        streamed = None
        if isinstance(body, transport.PayloadStream):
            body, streamed = self._take(topic, body)
        self._inbox.append((topic, body, streamed))

    def _take(self, topic, stream):
        """Consumes a payload still in the socket: a 200 answer through the bundle Extractor (certificates to the
        sink as they arrive), anything else read whole. Returns (body, streamed sha256 list or None)."""
        parsed = dps.parse_topic(topic)
        if self.bundle_sink is None or parsed is None or parsed[0] != 200:
            return stream.read_all(), None
        from azprov.bundle import Extractor

        self.bundle_sink.start()
        extractor = Extractor(self.bundle_sink)
        try:
            buf = bytearray(_CHUNK)
            view = memoryview(buf)
            while stream.remaining:
                extractor.feed(view[: stream.readinto(view)])
            buf = view = None
            return extractor.finish(), extractor.found
        except MemoryError:  # the rest of the answer or one of its certificates: not the whole answer at once
            raise transport.too_large(stream.size, streamed=True)

    def _connect(self, deadline):
        cfg = self.config
        x509 = cfg["attestation"] == "x509"
        if self._ctx is None:
            self._ctx, _ = transport.tls_context((read_text(cfg["dps_ca_file"], "dps_ca_file"),))
            if x509:
                transport.use_client_certificate(self._ctx, cfg["client_certificates"], cfg["client_key"])
        if x509:
            password = None  # the certificate in the TLS handshake is the credential
        else:
            expiry = require_set_clock() + cfg["sas_ttl_s"]
            password = sas.dps_token(cfg["id_scope"], cfg["registration_id"], cfg["symmetric_key"], expiry)
        timeout = max(1, min(_IO_TIMEOUT_MS, _remaining_ms(deadline)))
        log.debug("dps_connecting", ("host", cfg["dps_host"]), ("port", cfg["dps_port"]))
        self.connections += 1
        client = transport.connect(
            cfg["registration_id"],
            cfg["dps_host"],
            cfg["dps_port"],
            dps.username(cfg["id_scope"], cfg["registration_id"], self.client_version),
            password,
            self._ctx,
            timeout,
            keepalive=_KEEPALIVE_S,
            on_message=self._on_message,
            max_packet=None,  # a trust bundle may be large: the limit is what the free heap can take
            context="DPS",
        )
        client.sock.stream_over = _STREAM_OVER
        try:
            client.subscribe(dps.RESPONSE_FILTER, qos=1)
        except Exception as exc:
            transport.close(client)
            raise transport.classify(exc, "DPS subscribe")
        log.info("dps_connected", ("host", cfg["dps_host"]), ("api_version", dps.API_VERSION))
        return client

    def register(self):
        """Registers and returns the registrationState dict of an `assigned` result; raises ProvisioningError."""
        cfg = self.config
        deadline = time.ticks_add(time.ticks_ms(), cfg["registration_timeout_s"] * 1000)
        reg = dps.Registration(cfg["registration_id"], cfg["payload"], random=_random, bundle_sink=self.bundle_sink)
        request = reg.start()
        client = None
        reconnects = 0
        try:
            while True:
                try:
                    if client is None:
                        client = self._connect(deadline)
                    request = self._exchange(client, reg, request, deadline)
                    if request is None:
                        self.streamed = reg.streamed
                        return reg.result
                except ProvisioningError as exc:
                    # The service's own answers were judged by the state machine; what is left to retry here is
                    # a connection that failed or went quiet, or a server that was briefly unavailable.
                    if exc.answered or not exc.transient or exc.retry_after is not None:
                        raise
                    if _remaining_ms(deadline) <= 0 or reconnects >= _MAX_RECONNECTS:
                        raise
                    reconnects += 1
                    log.warning("dps_connection_lost", ("reason", exc.message), ("reconnect", reconnects))
                    if client is not None:
                        transport.close(client)
                    client = None
                    self._inbox = []
                    request = reg.resume()
                    _sleep_within(min(reconnects, 3), deadline)
        finally:
            if client is not None:
                transport.disconnect(client)
            self._inbox = []

    def _exchange(self, client, reg, request, deadline):
        """Sends one request and waits for the answer that decides what comes next (None: registration done)."""
        delay, topic, body = request
        _sleep_within(delay, deadline, reg.last_error)
        log.debug("dps_request", ("topic", topic))
        try:
            client.publish(topic.encode(), body, qos=1)
            return self._await_decision(client, reg, deadline)
        except ProvisioningError:
            raise
        except Exception as exc:
            raise transport.classify(exc, "DPS")

    def _await_decision(self, client, reg, deadline):
        while True:
            while self._inbox:
                topic, body, streamed = self._inbox.pop(0)
                try:
                    request = reg.on_message(topic, body, streamed)
                except ProvisioningError as exc:
                    exc.answered = True
                    raise
                if reg.done:
                    return None
                if request is not None:
                    status = dps.parse_topic(topic)[0]
                    log.info("dps_status", ("status", status), ("next_in_s", request[0]))
                    return request
            remaining = _remaining_ms(deadline)
            if remaining <= 0:
                raise ProvisioningError(errors.TIMEOUT, "no DPS answer before the registration deadline")
            watchdog.feed()
            client.sock.wait_readable(min(remaining, 1000))
            client.check_msg()
