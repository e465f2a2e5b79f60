# The IoT Hub leg, through an IoT Edge gateway (or straight to the assigned hub): TLS verified against the stored
# trust bundle, the hub's MQTT user name and SAS, telemetry at QoS 1. The token is renewed before it expires by
# reconnecting with a fresh one, as IoT Hub requires on MQTT.
from micropython import const

from azprov import errors, log, sas, transport
from azprov.encoding import url_encode
from azprov.errors import ProvisioningError

HUB_API_VERSION = "2021-04-12"
_IO_TIMEOUT_MS = const(15000)
# Renew when this share of the token's lifetime has passed.
_RENEW_AT_PERCENT = const(80)
# Payloads from this size on are handed to the listener still in the socket (transport.PayloadStream): it holds
# them when the free heap can, else reads past them; smaller ones are read whole.
_STREAM_OVER = const(1024)


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


JSON_PROPERTIES = (("$.ct", "application/json"), ("$.ce", "utf-8"))


class Gateway:
    """The connection to the gateway (or hub) for one assignment. It connects, renews the token and keeps the
    connection alive; it never waits to retry and never registers again: a failure is raised, classified, with the
    connection closed, and the supervisor (azprov.supervisor) decides what comes next."""

    def __init__(self, config, assignment, ca_pem_texts, trust_source="trust_bundle.pem", clock=None, identity=None):
        if clock is None:
            from azprov.clock import Clock

            clock = Clock()
        self.clock = clock
        self.config = config
        self.hub = assignment["assigned_hub"]
        self.device_id = assignment["device_id"]
        self.host = config["gateway_host"] or self.hub
        self.port = config["gateway_port"] if config["gateway_host"] else 8883
        self._ca_pem_texts = ca_pem_texts
        # The client certificate for mutual TLS: the operational one DPS issued ((DER chain, DER key)), else the
        # X.509 attestation's own; with either there is no SAS token.
        if identity is None and config["attestation"] == "x509":
            identity = (config["client_certificates"], config["client_key"])
        self._identity = identity
        self.x509 = identity is not None
        self._trust_source = trust_source
        self._ctx = None
        self.connection = None  # an azprov.transport.Connection while connected
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

    @property
    def connected(self):
        return self.connection is not None and self.connection.open

    def tls_context(self):
        if self._ctx is None:
            # A stored bundle the TLS stack refuses is damaged storage (register again for a fresh one); the
            # provisioning file's CA file is the user's configuration.
            kind = errors.STORAGE if self._trust_source == "trust_bundle.pem" else errors.CONFIGURATION
            ctx, count = transport.tls_context(self._ca_pem_texts, self._trust_source, kind)
            if self._identity is not None:
                transport.use_client_certificate(ctx, self._identity[0], self._identity[1])
            self._ctx = ctx
            # The context holds its own copies now: the trust source (a PemFile would keep azprov.pem's code alive)
            # and the certificate and key are let go, and every reconnect reuses the context.
            self._ca_pem_texts = self._identity = None
            log.debug("gateway_trust_loaded", ("certificates", count))
        return self._ctx

    def connect(self):
        if self.x509:
            # Mutual TLS: the device certificate is the credential, there is no token to renew.
            password = None
        else:
            now = self.clock.require_set()
            ttl = self.config["sas_ttl_s"]
            self.token_expiry = now + ttl
            self._renew_at = now + ttl * _RENEW_AT_PERCENT // 100
            password = sas.hub_token(self.hub, self.device_id, self.config["symmetric_key"], self.token_expiry)
        self.connections += 1
        self.connection = transport.connect(
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
        self.connection.stream_over = _STREAM_OVER
        self._last_ping = self.clock.ticks_ms()
        log.info("gateway_verified", ("host", self.host), ("port", self.port), ("hub", self.hub))
        if self.listener is not None:
            try:
                self.listener.after_connect(self.connection)
            except Exception as exc:
                self.drop()
                raise transport.classify(exc, "gateway")

    def _on_cloud_message(self, topic, body, pid):
        if self.listener is not None:
            self.listener.on_message(topic, body, pid)
            return
        # Without a listener nothing is subscribed; whatever the hub still sends is noted, acknowledged and dropped.
        size = len(body) if isinstance(body, (bytes, bytearray)) else body.size  # a stream is read past after this
        log.info("cloud_message_ignored", ("topic", bytes(topic).decode()), ("bytes", size))
        if pid is not None:
            self.connection.ack(pid)

    def _check(self):
        if not self.connected:
            raise ProvisioningError(errors.NETWORK, "gateway: not connected")
        return self.connection

    def ms_to_ping(self):
        return max(0, self._ping_every_ms - self.clock.ticks_diff(self.clock.ticks_ms(), self._last_ping))

    def ping_if_due(self):
        if not self.ms_to_ping():
            self._check().ping()
            self._last_ping = self.clock.ticks_ms()
            log.debug("gateway_ping")

    def wait(self, ms):
        """Reads what the gateway sends for up to `ms` (at most until the next keepalive ping is due), then pings
        when due. Raises a classified error when the connection fails."""
        self._check().receive(min(ms, self.ms_to_ping()))
        self.ping_if_due()

    def renew_if_due(self):
        """Reconnects with a fresh token once most of the old one's lifetime has passed; True when it did."""
        if not self.connected or self.x509 or self.clock.require_set() < self._renew_at:
            return False
        self.close()
        self.connect()
        self.renewals += 1
        log.info("gateway_token_renewed", ("expires", self.token_expiry))
        return True

    def publish(self, topic, body, what):
        """Publishes at QoS 1 and returns when the gateway acknowledged it."""
        self._check().publish(topic, body, what)

    def send(self, payload, properties=JSON_PROPERTIES):
        """Publishes one telemetry message at QoS 1 and returns when the gateway acknowledged it."""
        self.publish(telemetry_topic(self.device_id, properties), payload, "telemetry")

    def drop(self):
        """Closes after a failure, without a goodbye."""
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def close(self):
        if self.connection is not None:
            self.connection.disconnect()
            self.connection = None
