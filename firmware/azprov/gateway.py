# The IoT Hub leg, through an IoT Edge gateway (or straight to the assigned hub): TLS verified against the stored
# trust bundle, the hub's MQTT user name and SAS, telemetry at QoS 1. The token is renewed before it expires by
# reconnecting with a fresh one, as IoT Hub requires on MQTT.
import time

from micropython import const

from azprov import errors, log, sas, transport, watchdog
from azprov.clock import require_set_clock
from azprov.encoding import url_encode

HUB_API_VERSION = "2021-04-12"
_IO_TIMEOUT_MS = const(15000)
# Renew when this share of the token's lifetime has passed.
_RENEW_AT_PERCENT = const(80)


def username(hub, device_id):
    return "%s/%s/?api-version=%s" % (hub, device_id, HUB_API_VERSION)


def telemetry_topic(device_id, properties=None):
    """devices/{id}/messages/events/ plus a percent-encoded property bag; `properties` is a list of (name, value)."""
    topic = "devices/%s/messages/events/" % device_id
    if properties:
        topic += "&".join(
            "%s=%s" % (url_encode(k) if not k.startswith("$.") else "$." + url_encode(k[2:]), url_encode(v))
            for k, v in properties
        )
    return topic


def backoff_s(failures):
    # Exponential backoff with jitter, so a fleet that lost its gateway does not come back in one wave.
    import os

    base = min(60, 1 << min(failures, 6))
    return base / 2 + base / 2 * os.urandom(1)[0] / 256


JSON_PROPERTIES = (("$.ct", "application/json"), ("$.ce", "utf-8"))


class Gateway:
    def __init__(self, config, assignment, ca_pem_texts, trust_source="trust_bundle.pem"):
        self.config = config
        self.hub = assignment["assigned_hub"]
        self.device_id = assignment["device_id"]
        self.host = config["gateway_host"] or self.hub
        self.port = config["gateway_port"] if config["gateway_host"] else 8883
        self._ca_pem_texts = ca_pem_texts
        self.x509 = config["attestation"] == "x509"
        self._trust_source = trust_source
        self._ctx = None
        self.client = None
        self.token_expiry = 0
        self._renew_at = 0
        self.connections = 0
        self.renewals = 0
        self._last_ping = 0
        self.keepalive_s = config["mqtt_keepalive_s"]
        # An azprov.client.Client when the application uses twin, methods or C2D: told about every connect
        # (to subscribe again and reconcile the twin) and handed every message the hub sends.
        self.listener = None
        # MQTT servers drop a client silent for 1.5 keepalive periods; ping at half of it.
        self._ping_every_ms = self.keepalive_s * 500

    def tls_context(self):
        if self._ctx is None:
            # A stored bundle the TLS stack refuses is damaged storage (register again for a fresh one); the
            # provisioning file's CA file is the user's configuration.
            kind = errors.STORAGE if self._trust_source == "trust_bundle.pem" else errors.CONFIGURATION
            self._ctx, count = transport.tls_context(self._ca_pem_texts, self._trust_source, kind)
            if self.x509:
                transport.use_client_certificate(
                    self._ctx, self.config["client_certificates"], self.config["client_key"]
                )
            log.debug("gateway_trust_loaded", ("certificates", count))
        return self._ctx

    def connect(self):
        if self.x509:
            # Mutual TLS: the device certificate is the credential, there is no token to renew.
            password = None
        else:
            now = require_set_clock()
            ttl = self.config["sas_ttl_s"]
            self.token_expiry = now + ttl
            self._renew_at = now + ttl * _RENEW_AT_PERCENT // 100
            password = sas.hub_token(self.hub, self.device_id, self.config["symmetric_key"], self.token_expiry)
        self.connections += 1
        self.client = transport.connect(
            self.device_id,
            self.host,
            self.port,
            username(self.hub, self.device_id),
            password,
            self.tls_context(),
            _IO_TIMEOUT_MS,
            keepalive=self.keepalive_s,
            on_message=self._on_cloud_message,
            context="gateway",
        )
        self._last_ping = time.ticks_ms()
        log.info("gateway_verified", ("host", self.host), ("port", self.port), ("hub", self.hub))
        if self.listener is not None:
            try:
                self.listener.after_connect(self.client)
            except Exception as exc:
                if self.client is not None:
                    transport.close(self.client)
                    self.client = None
                raise transport.classify(exc, "gateway")

    def _on_cloud_message(self, topic, body):
        # Without a listener nothing is subscribed; whatever the hub still sends is noted and dropped.
        log.info("cloud_message_ignored", ("topic", bytes(topic).decode()), ("bytes", len(body)))

    def ping_if_due(self):
        if time.ticks_diff(time.ticks_ms(), self._last_ping) >= self._ping_every_ms:
            self.client.ping()
            self._last_ping = time.ticks_ms()
            log.debug("gateway_ping")

    def ms_to_ping(self):
        return max(0, self._ping_every_ms - time.ticks_diff(time.ticks_ms(), self._last_ping))

    def idle(self, seconds):
        """Waits `seconds` while keeping the connection alive: answers the server, pings before the keepalive runs
        out, renews the token when due."""
        end = time.ticks_add(time.ticks_ms(), int(seconds * 1000))
        while True:
            remaining = time.ticks_diff(end, time.ticks_ms())
            if remaining <= 0:
                return
            watchdog.feed()
            self.renew_if_due()
            if self.client is None:
                self.connect()
            since_ping = time.ticks_diff(time.ticks_ms(), self._last_ping)
            wait = min(remaining, max(0, self._ping_every_ms - since_ping), 1000)
            try:
                if self.client.sock.wait_readable(wait):
                    self.client.check_msg()
                if time.ticks_diff(time.ticks_ms(), self._last_ping) >= self._ping_every_ms:
                    self.client.ping()
                    self._last_ping = time.ticks_ms()
                    log.debug("gateway_ping")
            except Exception as exc:
                transport.close(self.client)
                self.client = None
                raise transport.classify(exc, "gateway")

    def renew_if_due(self):
        """Reconnects with a fresh token once most of the old one's lifetime has passed; True when it did."""
        if self.client is None or self.x509 or require_set_clock() < self._renew_at:
            return False
        transport.disconnect(self.client)
        self.client = None
        self.connect()
        self.renewals += 1
        log.info("gateway_token_renewed", ("expires", self.token_expiry))
        return True

    def send(self, payload, properties=JSON_PROPERTIES):
        """Publishes one telemetry message at QoS 1 and returns when the gateway acknowledged it."""
        if self.client is None:
            self.connect()
        topic = telemetry_topic(self.device_id, properties)
        try:
            self.client.publish(topic.encode(), payload, qos=1)
        except Exception as exc:
            transport.close(self.client)
            self.client = None
            raise transport.classify(exc, "telemetry")

    def close(self):
        if self.client is not None:
            transport.disconnect(self.client)
            self.client = None
