"""The emulated Device Provisioning Service endpoint (MQTT over TLS), per reference section 1.

Flow for one connection: CONNECT (username `{idScope}/registrations/{registrationId}/api-version=...`, SAS
password) -> SUBSCRIBE `$dps/registrations/res/#` -> PUBLISH register -> 202 `assigning` with an operation id ->
PUBLISH poll(s) -> 200 with the result. Faults from `faults.py` bend each step. Responses go only to the
connection that asked, and only if it subscribed to a matching filter (as a broker would deliver them).

Behaviour choices where the service's exact answer is unknown (documented in docs/emulator.md):
- malformed user name, unsupported api-version -> CONNACK 4; client id != registration id -> CONNACK 2;
- wrong key / expired token / wrong ID scope -> accepted, then 401 (401002) on every request, or CONNACK 5
  with `auth_failure: connack`;
- no enrollment matches -> 401 (default), 404 or CONNACK 5 (`unknown_registration`);
- a disabled enrollment answers the register request directly with 200 `disabled` (operationId "");
- a PUBLISH to any other topic, or at QoS 2, drops the connection.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

from host_tools.emulator import mqtt_codec as mqtt
from host_tools.emulator.connection import ConnectionDropped, Endpoint, MqttSession, raw_query
from host_tools.emulator.dps_auth import AuthProblem, identify, parse_dps_username
from host_tools.emulator.dps_result import final_result, utc_now
from host_tools.emulator.enrollments import Enrollment, EnrollmentError, Enrollments
from host_tools.emulator.faults import FaultSet
from host_tools.emulator.issuance import ISSUANCE_API_VERSION, CsrProblem, parse_csr
from host_tools.emulator.sas import SasError, check_token
from host_tools.emulator.trust_bundle import dotnet_datetime

# api-version -> whether results carry `trustBundle`. Certificate issuance (a `csr` in the register body) only with
# ISSUANCE_API_VERSION; whether the service still sends trustBundle with it is unconfirmed: the emulator does.
API_VERSIONS = {"2019-03-31": False, "2021-11-01-preview": True, ISSUANCE_API_VERSION: True}
REGISTER_TOPIC = "$dps/registrations/PUT/iotdps-register/"
POLL_TOPIC = "$dps/registrations/GET/iotdps-get-operationstatus/"
SAMPLE_RESPONSE_TOPIC = "$dps/registrations/res/200/?$rid=1"
MAX_OPERATIONS = 100_000

# errorCode for each HTTP status we send (status x 1000 + n). 401002 is the service's; the others follow
# the same scheme and are the emulator's choice.
ERROR_CODES = {400: 400004, 401: 401002, 404: 404201, 429: 429001}
ERROR_MESSAGES = {
    401: "The request is unauthorized.",
    404: "The registration was not found.",
    429: "Operations are being throttled; retry after the interval given.",
}


@dataclass
class DpsClient:
    """Per-connection state."""

    registration_id: str
    api_version: str
    client_version: str | None
    id_scope: str
    enrollments: Enrollments
    enrollment: Enrollment | None = None
    problem: AuthProblem | None = None
    ctx: Any = field(default=None, repr=False)
    certificate: Any = field(default=None, repr=False)  # X.509: the device certificate it authenticated with
    x509: bool = False  # presented a certificate and no password: judged as an X.509 device
    password_field: bool = True  # X.509: whether the CONNECT carried a (necessarily empty) password field
    subscriptions: dict[str, int] = field(default_factory=dict)
    tasks: set = field(default_factory=set)

    @property
    def faults(self) -> FaultSet:
        """Resolved on every use, so `set_faults()` and enrollment file edits reach live connections too.
        An unauthenticated client only gets global faults (its enrollment is not proven)."""
        return self.ctx.faults_for(self.enrollment if self.problem is None else None)

    @property
    def preview(self) -> bool:
        return API_VERSIONS[self.api_version]

    def granted_qos(self, topic: str) -> int | None:
        matching = [qos for flt, qos in self.subscriptions.items() if mqtt.topic_matches(flt, topic)]
        return max(matching) if matching else None


@dataclass
class Operation:
    operation_id: str
    registration_id: str
    enrollment: Enrollment
    enrollments: Enrollments
    polls_remaining: int
    attempts: int
    request_payload: Any
    polls: int = 0
    csr: Any = None  # the checked CSR (issuance api-version only), signed when the enrollment has a policy
    issued: Any = None  # the operational certificate signed for it (the same on every later poll)


class DpsEndpoint(Endpoint):
    name = "dps"

    # ------------------------------------------------------------------------------ connection

    async def serve(self, session: MqttSession) -> None:
        client = await self.accept_client(session)
        if client is None:
            return
        self._maybe_drop(client, "connack")
        timeout = session.keepalive_timeout
        while not session.closed:
            packet = await session.read_packet(timeout)
            if packet is None:
                return
            await self._dispatch(session, client, packet)

    async def on_session_end(self, session: MqttSession) -> None:
        client = session.state
        if client is not None:
            for task in list(client.tasks):
                task.cancel()

    async def _authenticate(self, session: MqttSession, connect: mqtt.Connect) -> DpsClient | None:
        try:
            scope, registration_id, params = parse_dps_username(connect.username)
        except ValueError as exc:
            await self.refuse(session, mqtt.CONNACK_BAD_USERNAME_OR_PASSWORD, str(exc))
            return None
        if registration_id != connect.client_id:
            await self.refuse(
                session,
                mqtt.CONNACK_IDENTIFIER_REJECTED,
                f"client id {connect.client_id!r} differs from registration id {registration_id!r}",
            )
            return None
        api_version = params["api-version"]
        if api_version not in API_VERSIONS:
            await self.refuse(
                session,
                mqtt.CONNACK_BAD_USERNAME_OR_PASSWORD,
                f"unsupported api-version {api_version!r} (supported: {', '.join(API_VERSIONS)})",
            )
            return None

        enrollments = self.ctx.store.current()
        client = DpsClient(
            registration_id=registration_id,
            api_version=api_version,
            client_version=params.get("ClientVersion"),
            id_scope=scope,
            enrollments=enrollments,
            ctx=self.ctx,
        )
        token = identify(client, connect, session)
        if client.problem is None and client.certificate is None:
            try:
                check_token(
                    token,
                    expected_resources=[f"{scope}/registrations/{registration_id}"],
                    allowed_key_names=(None, "registration"),
                    clock_skew_s=client.faults.get("sas_clock_skew_s", 0),
                )
            except SasError as exc:
                client.problem = AuthProblem("auth", str(exc))

        if client.problem is not None:
            problem = client.problem
            mode = client.faults.get("auth_failure" if problem.kind == "auth" else "unknown_registration")
            if mode.startswith("connack_"):
                await self.refuse(session, int(mode[len("connack_") :]), problem.reason)
                return None
            problem.status = int(mode)
            self.log.info(
                "%s: accepted but not authorized (%s); requests will get %d", session, problem.reason, problem.status
            )

        refusal = self.ctx.fault_book.consume(client.faults, "connack_refuse", registration_id)
        if refusal:
            await self.refuse(session, refusal["code"], "fault connack_refuse")
            return None
        self.log.info(
            "%s: connected (api-version %s, %s%s)",
            session,
            api_version,
            client.enrollment.label if client.enrollment and not client.problem else "unauthorized",
            (", X.509 certificate, " + ("empty password field" if client.password_field else "no password field"))
            if client.x509
            else "",
        )
        return client

    def _maybe_drop(self, client: DpsClient, point: str) -> None:
        if self.ctx.fault_book.consume(
            client.faults, "drop_after", client.registration_id, when=lambda v: v["at"] == point
        ):
            raise ConnectionDropped(f"fault drop_after={point}")

    # ------------------------------------------------------------------------------ packets

    async def _dispatch(self, session: MqttSession, client: DpsClient, packet) -> None:
        if isinstance(packet, mqtt.Publish):
            if packet.qos == 2:
                raise ConnectionDropped("QoS 2 PUBLISH (not supported by Azure IoT)")
            if packet.qos == 1:
                await session.send(mqtt.PubAck(packet.packet_id))
            topic = packet.topic.partition("?")[0]
            if topic == REGISTER_TOPIC:
                handler = self._register
            elif topic == POLL_TOPIC:
                handler = self._poll
            else:
                raise ConnectionDropped(f"PUBLISH to a topic DPS does not serve: {packet.topic!r}")
            delay_ms = client.faults.get("delay_ms", 0)
            if delay_ms:
                # Answer later without blocking the read loop (pings keep working meanwhile).
                task = asyncio.create_task(self._delayed(session, client, delay_ms, handler(session, client, packet)))
                client.tasks.add(task)
                task.add_done_callback(client.tasks.discard)
            else:
                await handler(session, client, packet)
        elif isinstance(packet, mqtt.Subscribe):
            codes = []
            for topic_filter, qos in packet.topics:
                if mqtt.topic_matches(topic_filter, SAMPLE_RESPONSE_TOPIC):
                    client.subscriptions[topic_filter] = min(qos, 1)
                    codes.append(min(qos, 1))
                else:
                    self.log.info(
                        "%s: refusing subscription to %r (DPS only serves $dps/registrations/res/#)",
                        session,
                        topic_filter,
                    )
                    codes.append(mqtt.SUBACK_FAILURE)
            await session.send(mqtt.SubAck(packet.packet_id, codes))
            self._maybe_drop(client, "suback")
        elif isinstance(packet, mqtt.Unsubscribe):
            for topic_filter in packet.topics:
                client.subscriptions.pop(topic_filter, None)
            await session.send(mqtt.UnsubAck(packet.packet_id))
        elif isinstance(packet, mqtt.PingReq):
            await session.send(mqtt.PingResp())
        elif isinstance(packet, mqtt.PubAck):
            pass  # acknowledgement of one of our QoS 1 responses; no redelivery is modelled
        elif isinstance(packet, mqtt.Disconnect):
            session.close("client DISCONNECT")
        elif isinstance(packet, mqtt.Connect):
            raise mqtt.MqttProtocolError("second CONNECT on one connection")
        else:
            raise mqtt.MqttProtocolError(f"{type(packet).__name__} is not a packet a client sends")

    async def _delayed(self, session, client, delay_ms, coroutine) -> None:
        try:
            await asyncio.sleep(delay_ms / 1000)
            await coroutine
        except ConnectionDropped as exc:
            self.stats.incr(self.name, "dropped")
            self.log.info("%s: dropping the connection: %s", session, exc)
            session.close(str(exc))
        except (ConnectionError, OSError):
            session.abort("connection lost")
        except asyncio.CancelledError:
            coroutine.close()
            raise
        except Exception:
            self.stats.incr(self.name, "internal_errors")
            self.log.exception("%s: internal error while answering", session)
            session.abort("internal error")

    # ------------------------------------------------------------------------------ requests

    async def _register(self, session: MqttSession, client: DpsClient, packet: mqtt.Publish) -> None:
        params = raw_query(packet.topic)
        rid = params.get("$rid")
        if rid is None:
            raise ConnectionDropped("register PUBLISH without $rid (nothing to answer on)")
        registration_id = client.registration_id
        with self.ctx.lock:
            attempts = self.ctx.register_attempts.get(registration_id, 0) + 1
            self.ctx.register_attempts[registration_id] = attempts
        self.stats.incr(self.name, "register_requests")
        self._maybe_drop(client, "register")
        faults = client.faults

        request_payload, csr_text, body_error = self._parse_register_body(packet.payload, registration_id)
        if body_error:
            return await self._error(session, client, rid, 400, body_error, "register", attempts)
        if client.problem:
            return await self._error(
                session, client, rid, client.problem.status, client.problem.reason, "register", attempts
            )
        csr = None
        if csr_text is not None:
            if client.api_version != ISSUANCE_API_VERSION:
                self.log.info(
                    "%s: csr ignored (api-version %s has no certificate issuance)", session, client.api_version
                )
            else:
                try:
                    refused = client.faults.get("refuse_csr")
                    if refused:
                        raise CsrProblem(int(refused), "fault refuse_csr: the CSR is refused")
                    csr = parse_csr(csr_text, registration_id)
                except CsrProblem as exc:
                    return await self._error(
                        session, client, rid, 400, str(exc), "register", attempts, error_code=exc.error_code
                    )
        if self.ctx.rate_limiter is not None:
            allowed, wait_s = self.ctx.rate_limiter.try_acquire()
            if not allowed:
                return await self._error(
                    session, client, rid, 429, "rate limit exceeded", "register", attempts, retry_after=wait_s
                )
        if await self._injected_error(session, client, rid, faults, "register", attempts):
            return

        enrollment = client.enrollment
        if enrollment.disabled:
            body = {
                "operationId": "",
                "status": "disabled",
                "registrationState": {"registrationId": registration_id, "status": "disabled"},
            }
            # Recorded before answering, so the record exists by the time the client sees the answer.
            self._record(client, status="disabled", http_status=200, attempts=attempts, request_payload=request_payload)
            await self._respond(session, client, 200, rid, body, stage="200")
            return
        operation = Operation(
            operation_id=f"4.{secrets.token_hex(8)}.{uuid.uuid4()}",
            registration_id=registration_id,
            enrollment=enrollment,
            enrollments=client.enrollments,
            polls_remaining=faults.get("assigning_polls", 0),
            attempts=attempts,
            request_payload=request_payload,
            csr=csr,
        )
        self.ctx.operations[operation.operation_id] = operation
        if len(self.ctx.operations) > MAX_OPERATIONS:  # a long fleet run: forget the oldest operations
            del self.ctx.operations[next(iter(self.ctx.operations))]
        await self._respond(
            session,
            client,
            202,
            rid,
            {"operationId": operation.operation_id, "status": "assigning"},
            retry_after=faults.get("retry_after"),
            stage="202",
        )
        self._maybe_drop(client, "202")

    @staticmethod
    def _parse_register_body(payload: bytes, registration_id: str) -> tuple[Any, Any, str | None]:
        """Accepts `{"registrationId":..,"payload":..}`, `{"payload":..}` or an empty body, each with or without
        `"csr"` (certificate issuance). Returns (payload, csr as sent or None, problem)."""
        if not payload.strip():
            return None, None, None
        try:
            body = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return None, None, f"register body is not JSON ({exc})"
        if not isinstance(body, dict):
            return None, None, "register body is not a JSON object"
        if "registrationId" in body and body["registrationId"] != registration_id:
            return None, None, f"registrationId {body['registrationId']!r} in the body differs from the connection's"
        return body.get("payload"), body.get("csr"), None

    async def _poll(self, session: MqttSession, client: DpsClient, packet: mqtt.Publish) -> None:
        params = raw_query(packet.topic)
        rid = params.get("$rid")
        if rid is None:
            raise ConnectionDropped("poll PUBLISH without $rid (nothing to answer on)")
        self.stats.incr(self.name, "poll_requests")
        registration_id = client.registration_id
        attempts = self.ctx.register_attempts.get(registration_id, 0)
        operation_id = params.get("operationId")
        faults = client.faults
        if not operation_id:
            return await self._error(session, client, rid, 400, "poll without operationId", "poll", attempts)
        if client.problem:
            return await self._error(
                session, client, rid, client.problem.status, client.problem.reason, "poll", attempts
            )
        if await self._injected_error(session, client, rid, faults, "poll", attempts):
            return
        operation = self.ctx.operations.get(operation_id)
        if operation is None or operation.registration_id != registration_id:
            return await self._error(
                session,
                client,
                rid,
                404,
                f"no operation {operation_id!r} for this registration",
                "poll",
                attempts,
                error_code=404202,
            )
        operation.polls += 1
        if operation.polls_remaining > 0:
            operation.polls_remaining -= 1
            interim = faults.get("interim_answer", {})
            interim_status = interim.get("status", "assigning")
            body = {
                "operationId": operation.operation_id,
                "status": interim_status,
                "registrationState": {"registrationId": registration_id, "status": interim_status},
            }
            await self._respond(
                session,
                client,
                interim.get("http_status", 202),
                rid,
                body,
                retry_after=faults.get("retry_after"),
                stage="202",
            )
            return
        try:
            body, record = final_result(self.ctx, client, operation)
        except EnrollmentError as exc:  # e.g. a certificate file of the bundle vanished: our problem, not the client's
            self.log.error("%s: cannot build the result: %s", session, exc)
            return await self._error(
                session, client, rid, 500, "emulator configuration error (see its log)", "poll", attempts
            )
        if record["status"] == "assigned":
            self.stats.incr(self.name, "assigned")
        self._record(
            client,
            http_status=200,
            attempts=operation.attempts,
            polls=operation.polls,
            operation_id=operation.operation_id,
            request_payload=operation.request_payload,
            **record,
        )
        await self._respond(session, client, 200, rid, body, stage="200")

    def _topic(self, status: int, rid: str, retry_after: int | None, faults: FaultSet) -> str:
        params = [("$rid", rid)]
        if retry_after is not None and not faults.get("no_retry_after"):
            name = {"lower": "retry-after", "upper": "RETRY-AFTER", "title": "Retry-After"}[
                faults.get("retry_after_case", "lower")
            ]
            retry = (name, str(retry_after))
            params = [retry] + params if faults.get("topic_param_order") == "retry_first" else params + [retry]
        return f"$dps/registrations/res/{status}/?" + "&".join(f"{k}={v}" for k, v in params)

    async def _respond(
        self,
        session: MqttSession,
        client: DpsClient,
        status: int,
        rid: str,
        body: dict,
        retry_after: int | None = None,
        stage: str | None = None,
    ) -> None:
        faults = client.faults
        topic = self._topic(status, rid, retry_after, faults)
        payload = json.dumps(body, separators=(",", ":")).encode("utf-8")
        book = self.ctx.fault_book
        if stage and book.consume(faults, "malformed_json", client.registration_id, when=lambda v: v["at"] == stage):
            self.log.info("%s: fault malformed_json: truncating the %s body", session, stage)
            payload = payload[: len(payload) // 2]
        cut = stage == "200" and book.consume(
            faults, "drop_after", client.registration_id, when=lambda v: v["at"] == "mid_payload"
        )
        qos = client.granted_qos(topic)
        if qos is None:
            self.stats.incr(self.name, "undelivered")
            self.log.warning(
                "%s: answer %d not delivered: the client has not subscribed to $dps/registrations/res/#",
                session,
                status,
            )
            return
        packet = mqtt.Publish(
            topic=topic, payload=payload, qos=qos, packet_id=session.next_packet_id() if qos else None
        )
        raw = mqtt.encode(packet)
        self.log.debug("%s: -> %s %s", session, topic, "(cut mid-payload)" if cut else "")
        if cut:
            await session.send_bytes(raw[: len(raw) - len(payload) // 2])
            raise ConnectionDropped("fault drop_after=mid_payload")
        await session.send_bytes(raw)

    async def _injected_error(
        self, session: MqttSession, client: DpsClient, rid: str, faults, request: str, attempts: int
    ) -> bool:
        """Answers a `request` ("register" or "poll") with a throttle_<request> 429 or a server_error 5xx when such
        a fault is due for this device; True when it did."""
        registration_id = client.registration_id
        throttle = self.ctx.fault_book.consume(faults, f"throttle_{request}", registration_id)
        if throttle:
            await self._error(
                session,
                client,
                rid,
                429,
                f"fault throttle_{request}",
                request,
                attempts,
                retry_after=throttle["retry_after"],
            )
            return True
        failure = self.ctx.fault_book.consume(
            faults, "server_error", registration_id, when=lambda v: v["on"] == request
        )
        if failure:
            await self._error(
                session,
                client,
                rid,
                failure["status"],
                "fault server_error",
                request,
                attempts,
                retry_after=failure.get("retry_after"),
            )
            return True
        return False

    async def _error(
        self,
        session: MqttSession,
        client: DpsClient,
        rid: str,
        status: int,
        reason: str,
        request: str,
        attempts: int,
        retry_after: int | None = None,
        error_code: int | None = None,
    ) -> None:
        code = error_code or ERROR_CODES.get(status, status * 1000 + 1)
        body = {
            "errorCode": code,
            "trackingId": str(uuid.uuid4()),
            "message": ERROR_MESSAGES.get(status, reason) if status in (401, 404) else reason,
            "timestampUtc": dotnet_datetime(utc_now(), "Z"),
        }
        self.log.info("%s: %s answered %d (%s)", session, request, status, reason)
        self._record(
            client,
            status="error",
            http_status=status,
            error_code=code,
            reason=reason,
            request=request,
            attempts=attempts,
        )
        await self._respond(session, client, status, rid, body, retry_after=retry_after)

    def _record(self, client: DpsClient, *, status: str, http_status: int, attempts: int, **extra) -> None:
        record = {
            "time": utc_now().isoformat(timespec="milliseconds"),
            "registration_id": client.registration_id,
            "api_version": client.api_version,
            "enrollment": client.enrollment.label if client.enrollment and not client.problem else None,
            "attestation": "x509" if client.x509 else "symmetric_key",
            "status": status,
            "http_status": http_status,
            "attempts": attempts,
        }
        record.update({k: v for k, v in extra.items()})
        if status != "error":
            self.log.info(
                "%s %s%s",
                client.registration_id,
                status,
                f" to {extra.get('assigned_hub')} as {extra.get('device_id')}" if status == "assigned" else "",
            )
        self.ctx.registrations.append(record)
