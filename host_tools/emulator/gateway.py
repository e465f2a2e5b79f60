"""The emulated IoT Edge gateway (edgeHub-like MQTT endpoint), per reference section 3.

- CONNECT: client id = device id; user name `{hub}/{deviceId}/?api-version=...` (also `/api-version=`, any
  extra parameters such as `DeviceClientType`); the hub must be the device's hub; password = hub SAS over
  `{hub}/devices/{deviceId}` (or the gateway host name instead of the hub), signed with the device key DPS knows.
  Anything wrong -> CONNACK 5 (4 for a malformed user name, 2 for a client id that differs from the device id).
- Which devices are known: a device DPS assigned during this run (its key and hub), and, in the default
  "enrolled" mode, any device its enrollment would assign even if it never registered (set
  `settings.gateway_devices` to "registered" to require a registration first).
- Telemetry on `devices/{deviceId}/messages/events/{propertyBag}` at QoS 0/1 is recorded to telemetry.jsonl
  (QoS 1 is acknowledged after the record is flushed, as edgeHub acknowledges once stored).
- QoS 2, a publish to another device's topic or to an unknown topic -> the connection is dropped; so is a telemetry
  message over IoT Hub's 256 KB (host_tools/emulator/limits.py), which MQTT 3.1.1 has no way to refuse alone.
- A reported-properties patch over IoT Hub's 32 KB is answered 413 (too deep: 400) and not applied.
- A device that connects becomes known to the hub (its twin is created and saved): service requests about it are
  served from then on, across runs (hub.py says which devices the hub knows).
- The token's expiry is enforced on the live connection: when `se` passes, the gateway closes the connection.
- Twin, direct methods and C2D as IoT Hub serves them (host_tools/emulator/hub.py holds the service side): twin
  answers, desired patches and method requests at QoS 0, C2D at QoS 1 (at most the granted QoS); for a
  `clean_session=0` client the subscriptions are kept per client id across connections (CONNACK session present),
  as IoT Hub does and the official SDK relies on (it never subscribes again after a reconnect).
"""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import unquote

from host_tools.emulator import client_tls, x509_auth
from host_tools.emulator import mqtt_codec as mqtt
from host_tools.emulator.connection import ConnectionDropped, Endpoint, MqttSession, parse_query, raw_query
from host_tools.emulator.hub import HubError, HubService, ServiceSide
from host_tools.emulator.limits import TELEMETRY_MAX_BYTES, TWIN_REPORTED_MAX_BYTES
from host_tools.emulator.sas import SasError, check_token, parse_sas_token, signature_matches


def parse_hub_username(username: str | None) -> tuple[str, str, dict[str, str]]:
    """`{hub}/{deviceId}/?api-version=...` or `{hub}/{deviceId}/api-version=...` -> (hub, device id, params)."""
    expected = "expected {hub}/{deviceId}/?api-version=..."
    if not username:
        raise ValueError(f"no user name; {expected}")
    parts = username.split("/", 2)
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise ValueError(f"user name {username!r} malformed; {expected}")
    hub, device_id, rest = parts
    query = rest[1:] if rest.startswith("?") else rest
    if not query.startswith("api-version=") and "&api-version=" not in query:
        if "/" in rest.partition("?")[0]:
            raise ValueError(f"user name {username!r} names a module identity; only devices are emulated")
        raise ValueError(f"user name {username!r} has no api-version; {expected}")
    return hub, device_id, parse_query(query)


def decode_property_bag(bag: str) -> dict[str, str]:
    """`k=v&%24.ct=application%2Fjson` -> {'k': 'v', '$.ct': 'application/json'} (keys and values decoded;
    a name without `=` gets the empty string; `+` stays `+`, as IoT Hub does not use form encoding)."""
    properties: dict[str, str] = {}
    for part in bag.split("&"):
        if part:
            name, _, value = part.partition("=")
            properties[unquote(name)] = unquote(value)
    return properties


class GatewayClient:
    """Per-connection state."""

    def __init__(self, device_id: str, hub: str, ctx, enrollment, token_expiry: int | None, skew: int):
        # token_expiry None: an X.509 device (mutual TLS), nothing expires on the live connection.
        self.device_id, self.hub, self._ctx, self._enrollment = device_id, hub, ctx, enrollment
        self.token_expiry, self.skew = token_expiry, skew
        self.subscriptions: dict[str, int] = {}
        self.password_field = True  # X.509: whether the CONNECT carried a (necessarily empty) password field
        self.clean_session = True
        self.in_flight: dict[int, object] = {}  # packet id -> C2DMessage delivered on this connection, not acked
        self.messages = 0
        self.expiry_task: asyncio.Task | None = None

    @property
    def faults(self):
        # Resolved on every use, so `set_faults()` reaches live connections.
        return self._ctx.faults_for(self._enrollment)

    @property
    def telemetry_prefix(self) -> str:
        return f"devices/{self.device_id}/messages/events"

    def allowed_filters(self) -> set[str]:
        return {
            f"devices/{self.device_id}/messages/devicebound/#",
            "devices/+/messages/devicebound/#",
            "$iothub/twin/res/#",
            "$iothub/twin/PATCH/properties/desired/#",
            "$iothub/methods/POST/#",
        }


class GatewayEndpoint(ServiceSide, Endpoint):
    name = "gateway"

    def __init__(self, ctx, ssl_context):
        super().__init__(ctx, ssl_context)
        self.live: dict[str, tuple[MqttSession, GatewayClient]] = {}  # device id -> its newest connection

    @property
    def hub(self) -> HubService:
        return self.ctx.hub

    def resume_session(self, client: GatewayClient, connect: mqtt.Connect) -> bool:
        """clean_session=0: the subscriptions stored for this client id (session present); 1: a fresh session."""
        client.clean_session = connect.clean_session
        if connect.clean_session:
            self.hub.sessions.pop(connect.client_id, None)
            return False
        present = connect.client_id in self.hub.sessions
        client.subscriptions = self.hub.sessions.setdefault(connect.client_id, {})
        return present

    async def serve(self, session: MqttSession) -> None:
        client = await self.accept_client(session)
        if client is None:
            return
        if client.token_expiry is None:
            self.log.info(
                "%s: connected to hub %s (X.509 certificate, %s)",
                session,
                client.hub,
                "empty password field" if client.password_field else "no password field",
            )
        else:
            self.log.info(
                "%s: connected to hub %s (token valid %d s more)",
                session,
                client.hub,
                int(client.token_expiry - time.time()),
            )
            client.expiry_task = asyncio.create_task(self._expire(session, client))
        self.live[client.device_id] = (session, client)
        self.hub.twins.ensure(client.device_id)
        if self.ctx.fault_book.consume(
            client.faults, "gateway_drop_after", client.device_id, when=lambda v: v["at"] == "connack"
        ):
            raise ConnectionDropped("fault gateway_drop_after=connack")
        timeout = session.keepalive_timeout
        await self._deliver_c2d(session, client)  # a kept session may already be subscribed
        while not session.closed:
            packet = await session.read_packet(timeout)
            if packet is None:
                return
            await self._dispatch(session, client, packet)

    async def on_session_end(self, session: MqttSession) -> None:
        client = session.state
        if client is not None and client.expiry_task is not None:
            client.expiry_task.cancel()
        if client is not None:
            if self.live.get(client.device_id, (None,))[0] is session:
                del self.live[client.device_id]
            for message in client.in_flight.values():
                message.in_flight = None  # not acknowledged: delivered again on the next connection
            client.in_flight.clear()

    async def _expire(self, session: MqttSession, client: GatewayClient) -> None:
        # Real hubs close a connection whose token has expired; a client must reconnect with a fresh token.
        await asyncio.sleep(max(0.0, client.token_expiry + client.skew - time.time()))
        if not session.closed:
            self.stats.incr(self.name, "expired")
            self.stats.incr(self.name, "dropped")
            self.log.info("%s: SAS token expired: closing the connection", session)
            session.close("token expired")

    async def _authenticate(self, session: MqttSession, connect: mqtt.Connect) -> GatewayClient | None:
        try:
            hub, device_id, _params = parse_hub_username(connect.username)
        except ValueError as exc:
            await self.refuse(session, mqtt.CONNACK_BAD_USERNAME_OR_PASSWORD, str(exc))
            return None
        if device_id != connect.client_id:
            await self.refuse(
                session,
                mqtt.CONNACK_IDENTIFIER_REJECTED,
                f"client id {connect.client_id!r} differs from device id {device_id!r} in the user name",
            )
            return None

        credentials = self.ctx.gateway_credentials(device_id)
        faults = self.ctx.faults_for(credentials[0].enrollment if credentials else None)
        refusal = self.ctx.fault_book.consume(faults, "gateway_refuse", device_id)
        if refusal:
            await self.refuse(session, refusal["code"], "fault gateway_refuse")
            return None
        not_authorized = mqtt.CONNACK_NOT_AUTHORIZED
        if not credentials:
            await self.refuse(session, not_authorized, f"device {device_id!r} is unknown to this gateway")
            return None
        if not connect.password:
            # As edgeHub: a password (even with a certificate) means SAS; without one the certificate decides.
            presented = client_tls.peer_certificates(session.writer)
            if presented:
                client = await self._authenticate_x509(session, hub, device_id, credentials, presented)
                if client is not None:
                    client.password_field = connect.password is not None
                return client
        if connect.password is None:
            await self.refuse(session, not_authorized, "no password (SAS token) and no client certificate")
            return None
        try:
            token = parse_sas_token(connect.password.decode("utf-8"))
        except (SasError, UnicodeDecodeError) as exc:
            await self.refuse(session, not_authorized, f"password is not a valid SAS token: {exc}")
            return None
        credential = next((c for c in credentials if not c.x509 and signature_matches(token, c.key)), None)
        if credential is None:
            await self.refuse(session, not_authorized, "token not signed with the device's key")
            return None
        if hub.lower() != credential.assigned_hub.lower():
            await self.refuse(
                session,
                not_authorized,
                f"hub {hub!r} in the user name is not the device's hub {credential.assigned_hub!r}",
            )
            return None
        faults = self.ctx.faults_for(credential.enrollment)
        skew = faults.get("sas_clock_skew_s", 0)
        try:
            check_token(
                token,
                expected_resources=[
                    f"{credential.assigned_hub}/devices/{device_id}",
                    f"{self.ctx.gateway_hostname}/devices/{device_id}",
                ],
                allowed_key_names=(None,),
                clock_skew_s=skew,
            )
        except SasError as exc:
            await self.refuse(session, not_authorized, str(exc))
            return None
        return GatewayClient(device_id, credential.assigned_hub, self.ctx, credential.enrollment, token.expiry, skew)

    async def _authenticate_x509(self, session, hub, device_id, credentials, presented) -> GatewayClient | None:
        """edgeHub's X.509 paths: the certificate's SHA-1 or SHA-256 thumbprint is the device's, or (CA
        authentication) its CN is the device id and its chain leads to the device's CA. Not expired, not a CA."""
        not_authorized = mqtt.CONNACK_NOT_AUTHORIZED
        # An issued (operational) certificate authenticates any device whose enrollment has an issuance policy,
        # whatever its onboarding credential.
        candidates = [c for c in credentials if c.x509 or c.issuing_ca is not None]
        if not candidates:
            await self.refuse(session, not_authorized, f"device {device_id!r} does not authenticate with X.509")
            return None
        device = presented[0]
        try:
            x509_auth.check_dates(device, "the device certificate")
            if x509_auth.is_ca(device):
                raise x509_auth.CertificateProblem("the device certificate is a CA certificate")
        except x509_auth.CertificateProblem as exc:
            await self.refuse(session, not_authorized, str(exc))
            return None
        prints = x509_auth.thumbprints(device)
        credential, reasons = None, []
        issued = False
        for candidate in candidates:
            if prints & candidate.thumbprints:
                credential = candidate
                break
            for anchor in (candidate.ca_certificate, candidate.issuing_ca):
                if anchor is None:
                    continue
                try:
                    x509_auth.check_device_certificate(presented, device_id, "device id")
                    x509_auth.chain_reaches(presented, anchor)
                except x509_auth.CertificateProblem as exc:
                    reasons.append(str(exc))
                    continue
                credential, issued = candidate, anchor is candidate.issuing_ca
                break
            if credential is not None:
                break
            if candidate.thumbprints:
                reasons.append("thumbprint differs from the device's")
        if credential is None:
            await self.refuse(session, not_authorized, f"certificate refused: {'; '.join(reasons)}")
            return None
        if hub.lower() != credential.assigned_hub.lower():
            await self.refuse(
                session,
                not_authorized,
                f"hub {hub!r} in the user name is not the device's hub {credential.assigned_hub!r}",
            )
            return None
        if issued:
            self.stats.incr(self.name, "issued_certificate_connections")
            self.log.info("%s: %s authenticated with an issued certificate", session, device_id)
        return GatewayClient(device_id, credential.assigned_hub, self.ctx, credential.enrollment, None, 0)

    # ------------------------------------------------------------------------------ packets

    async def _dispatch(self, session: MqttSession, client: GatewayClient, packet) -> None:
        if isinstance(packet, mqtt.Publish):
            await self._publish(session, client, packet)
        elif isinstance(packet, mqtt.Subscribe):
            codes = []
            for topic_filter, qos in packet.topics:
                if topic_filter in client.allowed_filters():
                    client.subscriptions[topic_filter] = min(qos, 1)
                    codes.append(min(qos, 1))
                else:
                    self.log.info("%s: refusing subscription to %r", session, topic_filter)
                    codes.append(mqtt.SUBACK_FAILURE)
            await session.send(mqtt.SubAck(packet.packet_id, codes))
            await self._deliver_c2d(session, client)
        elif isinstance(packet, mqtt.Unsubscribe):
            for topic_filter in packet.topics:
                client.subscriptions.pop(topic_filter, None)
            await session.send(mqtt.UnsubAck(packet.packet_id))
        elif isinstance(packet, mqtt.PingReq):
            await session.send(mqtt.PingResp())
        elif isinstance(packet, mqtt.PubAck):
            message = client.in_flight.pop(packet.packet_id, None)
            if message is not None:
                queue = self.hub.c2d.get(client.device_id, [])
                if message in queue:
                    queue.remove(message)
                self.hub.record(client.device_id, "c2d_completed", message_id=message.message_id)
        elif isinstance(packet, mqtt.Disconnect):
            session.close("client DISCONNECT")
        elif isinstance(packet, mqtt.Connect):
            raise mqtt.MqttProtocolError("second CONNECT on one connection")
        else:
            raise mqtt.MqttProtocolError(f"{type(packet).__name__} is not a packet a client sends")

    async def _publish(self, session: MqttSession, client: GatewayClient, packet: mqtt.Publish) -> None:
        if packet.qos == 2:
            raise ConnectionDropped("QoS 2 PUBLISH (IoT Hub drops the connection)")
        topic = packet.topic
        prefix = client.telemetry_prefix
        if topic == prefix or topic.startswith(prefix + "/"):
            await self._telemetry(session, client, packet, topic[len(prefix) + 1 :])
        elif topic.startswith("devices/"):
            raise ConnectionDropped(f"PUBLISH to {topic!r}, which is not this device's telemetry topic")
        elif topic.startswith("$iothub/twin/"):
            await self._ack(session, packet)
            await self._twin(session, client, topic, packet.payload)
        elif topic.startswith("$iothub/methods/res/"):
            self._method_answer(client, topic, packet.payload)  # recorded before the device hears the PUBACK
            await self._ack(session, packet)
        else:
            raise ConnectionDropped(f"PUBLISH to a topic the gateway does not serve: {topic!r}")

    @staticmethod
    async def _ack(session: MqttSession, packet: mqtt.Publish) -> None:
        if packet.qos == 1:
            await session.send(mqtt.PubAck(packet.packet_id))

    async def _telemetry(self, session: MqttSession, client: GatewayClient, packet: mqtt.Publish, bag: str) -> None:
        size = len(packet.payload) + len(bag.encode("utf-8"))
        if size > TELEMETRY_MAX_BYTES:
            # IoT Hub's limit covers body and properties (reference C.1); MQTT 3.1.1 cannot refuse one PUBLISH.
            self.stats.incr(self.name, "oversize_messages")
            raise ConnectionDropped(f"telemetry message of {size} bytes, over IoT Hub's {TELEMETRY_MAX_BYTES}")
        client.messages += 1
        if self.ctx.fault_book.consume(
            client.faults,
            "gateway_drop_after",
            client.device_id,
            when=lambda v: v["at"] == "message" and v["messages"] == client.messages,
        ):
            # Dropped before it is stored: not recorded, not acknowledged; the client must send it again.
            raise ConnectionDropped(f"fault gateway_drop_after message {client.messages}")
        record = {
            "received_at": time.time(),
            "device_id": client.device_id,
            "hub": client.hub,
            "topic": packet.topic,
            "properties": decode_property_bag(bag),
            "payload": packet.payload.decode("utf-8", errors="replace"),
            "qos": packet.qos,
        }
        self.ctx.telemetry.append(record)
        self.stats.incr(self.name, "messages")
        self.log.info("%s: telemetry (%d bytes, QoS %d)", session, len(packet.payload), packet.qos)
        await self._ack(session, packet)

    async def _twin(self, session: MqttSession, client: GatewayClient, topic: str, payload: bytes) -> None:
        """GET answers the whole twin; a reported PATCH merges (null deletes) and bumps the reported $version."""
        rid = raw_query(topic).get("$rid", "")
        twins = self.hub.twins
        if topic.startswith("$iothub/twin/GET/"):
            twin = twins.get(client.device_id)
            self.hub.record(client.device_id, "twin_get", rid=rid, desired_version=twin["desired"]["$version"])
            await self._deliver(session, client, f"$iothub/twin/res/200/?$rid={rid}", json.dumps(twin).encode(), 0)
        elif topic.startswith("$iothub/twin/PATCH/properties/reported/"):
            try:
                patch = json.loads(payload or b"{}")
                reported = twins.patch(client.device_id, "reported", patch, TWIN_REPORTED_MAX_BYTES)
            except (ValueError, RecursionError) as exc:
                status = exc.status if isinstance(exc, HubError) else 400  # 413 over IoT Hub's 32 KB (reference C.2)
                self.hub.record(client.device_id, "reported_patch", rid=rid, status=status)
                await self._deliver(session, client, f"$iothub/twin/res/{status}/?$rid={rid}", b"", 0)
                return
            version = reported["$version"]
            self.hub.record(client.device_id, "reported_patch", rid=rid, status=204, version=version, patch=patch)
            await self._deliver(session, client, f"$iothub/twin/res/204/?$rid={rid}&$version={version}", b"", 0)
        else:
            raise ConnectionDropped(f"PUBLISH to an unknown twin topic {topic!r}")

    async def _deliver(
        self, session: MqttSession, client: GatewayClient, topic: str, payload: bytes, qos: int = 0
    ) -> bool:
        """PUBLISH to the client at min(`qos`, granted QoS); False when no subscription matches."""
        granted = max((q for f, q in client.subscriptions.items() if mqtt.topic_matches(f, topic)), default=None)
        if granted is None:
            self.log.info("%s: %s not delivered: no matching subscription", session, topic[:60])
            return False
        qos = min(qos, granted)
        packet_id = session.next_packet_id() if qos else None
        await session.send(mqtt.Publish(topic=topic, payload=payload, qos=qos, packet_id=packet_id))
        return True

    def drop_connections(self, reason: str = "dropped on request") -> int:
        return self.drop_all(reason)
