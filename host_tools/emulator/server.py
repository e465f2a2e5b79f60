"""Runs both endpoints: `EmulatorServer` is the asyncio core (used by the CLI), `Emulator` runs it in a
background thread with its own event loop (used by tests and other host tools).

    with Emulator(tmp_path, enrollments_file_or_dict) as emu:
        emu.dps_port, emu.gateway_port, emu.pki.dps_root, emu.pki.trust_root
        emu.set_faults({"throttle_register": {"count": 2}})
        ...
        emu.telemetry(), emu.registrations(), emu.stats["dps"]["by_client"]
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import ssl
import threading
from pathlib import Path
from typing import Any

from host_tools.emulator import client_tls
from host_tools.emulator.context import EmulatorContext
from host_tools.emulator.control import ControlServer, perform
from host_tools.emulator.dps import DpsEndpoint
from host_tools.emulator.enrollment_file import EnrollmentStore, write_enrollments
from host_tools.emulator.gateway import GatewayEndpoint
from host_tools.emulator.hub import HubService
from host_tools.emulator.limits import CONTROL_IDLE_TIMEOUT_S
from host_tools.emulator.records import JsonlLog, Stats, write_json_atomic
from host_tools.provisioning.emulator_pki import EmulatorPki, ensure_emulator_pki

log = logging.getLogger("host_tools.emulator")
# Test mode only (--record-credentials): every CONNECT user name and password received, one JSON line each.
CREDENTIALS_RECEIVED = "credentials-received.jsonl"


def server_ssl_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """TLS 1.2+ server context (DPS and IoT Hub require TLS 1.2). It asks every client for a certificate and takes
    whatever is presented (X.509 devices); the endpoints authenticate at CONNECT (client_tls.py)."""
    return client_tls.server_context(cert_file, key_file)


class EmulatorServer:
    """Both endpoints on one event loop, plus the files in the state folder."""

    def __init__(
        self,
        state_dir: str | os.PathLike,
        enrollments: str | os.PathLike | dict,
        *,
        host: str = "127.0.0.1",
        dps_port: int = 0,
        gateway_port: int = 0,
        dps_hostname: str = "localhost",
        gateway_hostname: str = "localhost",
        faults: dict | None = None,
        rate_limit: float | None = None,
        ip_addresses=(),
        gateway_certificate: tuple[str | os.PathLike, str | os.PathLike] | None = None,
        record_credentials: bool = False,
        control_idle_timeout: float = CONTROL_IDLE_TIMEOUT_S,
    ):
        self.state_dir = Path(state_dir).resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if isinstance(enrollments, dict):
            # A document given inline (tests): keep it as a file, so "re-read on change" works the same way.
            enrollments = write_enrollments(self.state_dir / "enrollments.json", enrollments)
        self.enrollments_path = Path(enrollments).absolute()  # not resolved: errors name the path as given
        self.host = host
        self.requested_ports = {"dps": dps_port, "gateway": gateway_port}
        self.dps_hostname, self.gateway_hostname = dps_hostname, gateway_hostname
        self.ip_addresses = tuple(ip_addresses)
        self.initial_faults = faults or {}
        self.rate_limit = rate_limit
        self.gateway_certificate = gateway_certificate
        self.record_credentials = record_credentials
        self.control_idle_timeout = control_idle_timeout
        self.pki: EmulatorPki | None = None
        self.ctx: EmulatorContext | None = None
        self.dps: DpsEndpoint | None = None
        self.gateway: GatewayEndpoint | None = None
        self.ports: dict[str, int] = {}
        self.info: dict[str, Any] = {}
        self.control: ControlServer | None = None

    def prepare(self) -> None:
        """Everything that can fail on bad input, before anything listens: PKI, enrollments, faults."""
        extra_ips = [h for h in (self.host,) if h not in ("0.0.0.0", "::", "")] + list(self.ip_addresses)
        self.pki = ensure_emulator_pki(
            self.state_dir / "pki",
            dps_hostname=self.dps_hostname,
            gateway_hostname=self.gateway_hostname,
            ip_addresses=extra_ips,
        )
        store = EnrollmentStore(self.enrollments_path, pki=self.pki)
        self.ctx = EmulatorContext(
            store=store,
            pki=self.pki,
            stats=Stats(),
            registrations=JsonlLog(self.state_dir / "registrations.jsonl"),
            telemetry=JsonlLog(self.state_dir / "telemetry.jsonl"),
            dps_hostname=self.dps_hostname,
            gateway_hostname=self.gateway_hostname,
            faults=self.initial_faults,
            rate_limit=self.rate_limit,
            issued_certificates=JsonlLog(self.state_dir / "issued-certificates.jsonl"),
        )
        if self.record_credentials:
            self.ctx.credentials_received = JsonlLog(self.state_dir / CREDENTIALS_RECEIVED, secret=True)
        self.ctx.hub = HubService(self.state_dir)
        gateway_cert, gateway_key = self.gateway_certificate or (self.pki.gateway_server, self.pki.gateway_server_key)
        self.dps = DpsEndpoint(self.ctx, server_ssl_context(self.pki.dps_server, self.pki.dps_server_key))
        self.gateway = GatewayEndpoint(self.ctx, server_ssl_context(Path(gateway_cert), Path(gateway_key)))

    async def start(self) -> dict:
        if self.ctx is None:
            self.prepare()
        self.ports["dps"] = await self.dps.listen(self.host, self.requested_ports["dps"])
        self.ports["gateway"] = await self.gateway.listen(self.host, self.requested_ports["gateway"])
        self.control = ControlServer(self.gateway, secrets.token_urlsafe(16), self.control_idle_timeout)
        control_port = await self.control.listen("127.0.0.1")
        self.info = {
            "dps": {"host": self.host, "port": self.ports["dps"], "hostname": self.dps_hostname},
            "gateway": {"host": self.host, "port": self.ports["gateway"], "hostname": self.gateway_hostname},
            "pki": self.pki.paths(),
            "telemetry": str(self.ctx.telemetry.path),
            "hub_records": str(self.ctx.hub.records.path),
            "twins": str(self.ctx.hub.twins.path),
            "control": {"host": "127.0.0.1", "port": control_port, "token": self.control.token},
            "registrations": str(self.ctx.registrations.path),
            "issued_certificates": str(self.ctx.issued_certificates.path),
            "enrollments": str(self.enrollments_path),
            "id_scope": self.ctx.store.current().id_scope,
            "pid": os.getpid(),
        }
        # Written last and atomically: its presence means "both endpoints accept connections".
        write_json_atomic(self.state_dir / "emulator.json", self.info)
        log.debug("state written to %s", self.state_dir / "emulator.json")
        return self.info

    async def close(self) -> None:
        if self.info:  # the ready marker goes with the endpoints: a stopped emulator leaves no stale emulator.json
            (self.state_dir / "emulator.json").unlink(missing_ok=True)
            self.info = {}
        if self.control is not None:
            await self.control.close()
        for endpoint in (self.dps, self.gateway):
            if endpoint is not None:
                await endpoint.close()
        if self.ctx is not None:
            self.ctx.telemetry.close()
            self.ctx.registrations.close()
            self.ctx.issued_certificates.close()
            if getattr(self.ctx, "credentials_received", None) is not None:
                self.ctx.credentials_received.close()
            if self.ctx.hub is not None:
                self.ctx.hub.close()

    def use_gateway_certificate(self, cert_file, key_file) -> None:
        """Serve another certificate chain from now on (new connections); e.g. one for another host name."""
        self.gateway.ssl_context.load_cert_chain(str(cert_file), str(key_file))


class EmulatorError(RuntimeError):
    """The emulator could not start (bad enrollment file, port in use, ...)."""


class Emulator:
    """The emulator in a background thread: `with Emulator(state_dir, enrollments) as emu: ...`.

    `enrollments` is the path of an enrollment file or a document (dict), which is written to
    `state_dir/enrollments.json`. Keyword options are those of `EmulatorServer`."""

    def __init__(self, state_dir: str | os.PathLike, enrollments: str | os.PathLike | dict, **options):
        self.server = EmulatorServer(state_dir, enrollments, **options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle

    def start(self, timeout: float = 30) -> Emulator:
        try:
            self.server.prepare()  # in the caller's thread, so errors (bad enrollment file) surface right here
        except Exception as exc:
            raise EmulatorError(str(exc)) from exc
        ready = threading.Event()
        failure: list[BaseException] = []

        def run():
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.server.start())
            except BaseException as exc:  # e.g. address in use
                failure.append(exc)
                ready.set()
                loop.run_until_complete(self.server.close())
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.server.close())
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="azprov-emulator", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise EmulatorError("emulator did not start in time")
        if failure:
            raise EmulatorError(f"emulator failed to start: {failure[0]}") from failure[0]
        return self

    def stop(self, timeout: float = 10) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        self._thread = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _call(self, function, *args):
        """Run `function(*args)` on the emulator's loop and return its result (thread-safe)."""

        async def wrapper():
            return function(*args)

        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(10)

    # --- where things are

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def dps_port(self) -> int:
        return self.server.ports["dps"]

    @property
    def gateway_port(self) -> int:
        return self.server.ports["gateway"]

    @property
    def pki(self) -> EmulatorPki:
        return self.server.pki

    @property
    def state_dir(self) -> Path:
        return self.server.state_dir

    @property
    def enrollments_path(self) -> Path:
        return self.server.enrollments_path

    @property
    def id_scope(self) -> str:
        return self.server.ctx.store.current().id_scope

    @property
    def info(self) -> dict:
        """The content of emulator.json."""
        return dict(self.server.info)

    # --- records

    def telemetry(self, device_id: str | None = None) -> list[dict]:
        records = self.server.ctx.telemetry.records()
        return [r for r in records if device_id is None or r["device_id"] == device_id]

    def registrations(self, registration_id: str | None = None) -> list[dict]:
        records = self.server.ctx.registrations.records()
        return [r for r in records if registration_id is None or r["registration_id"] == registration_id]

    def issued_certificates(self, registration_id: str | None = None) -> list[dict]:
        """Certificates DPS signed in this run (issued-certificates.jsonl): registration_id, device_id, policy, serial
        (upper-case hex), subject_cn, issuer, not_before, not_after (ISO 8601, UTC)."""
        records = self.server.ctx.issued_certificates.records()
        return [r for r in records if registration_id is None or r["registration_id"] == registration_id]

    def wait_for_telemetry(self, count: int = 1, timeout: float = 10, device_id: str | None = None) -> list[dict]:
        """Block until `count` records (for `device_id` if given) arrived; returns them (fewer on timeout)."""

        def enough(records):
            return sum(1 for r in records if device_id is None or r["device_id"] == device_id) >= count

        records = self.server.ctx.telemetry.wait_for(enough, timeout)
        return [r for r in records if device_id is None or r["device_id"] == device_id]

    def wait_for_registrations(
        self, count: int = 1, timeout: float = 10, registration_id: str | None = None, status: str | None = None
    ) -> list[dict]:
        def pick(records):
            return [
                r
                for r in records
                if (registration_id is None or r["registration_id"] == registration_id)
                and (status is None or r["status"] == status)
            ]

        records = self.server.ctx.registrations.wait_for(lambda rs: len(pick(rs)) >= count, timeout)
        return pick(records)

    @property
    def stats(self) -> dict:
        return self.server.ctx.stats.snapshot()

    def connections(self, endpoint: str, client_id: str | None = None) -> int:
        """How many connections `endpoint` ("dps" or "gateway") accepted in all, or CONNECTs from `client_id`."""
        snapshot = self.stats[endpoint]
        return snapshot["connections"] if client_id is None else snapshot["by_client"].get(client_id, 0)

    # --- control

    def set_faults(self, faults: dict | None = None, **more) -> None:
        """Replace the global faults (`set_faults()` clears them). Counters start afresh."""
        self._call(self.server.ctx.set_faults, {**(faults or {}), **more})

    def update_faults(self, **faults) -> None:
        """Add or change some global faults, keeping the others."""
        self._call(self.server.ctx.set_faults, {**self._raw_global_faults(), **faults})

    def _raw_global_faults(self) -> dict:
        return dict(self.server.ctx.global_faults)

    def reset_fault_counters(self) -> None:
        self._call(self.server.ctx.fault_book.reset)

    def drop_gateway_connections(self) -> int:
        """Cut every open gateway connection now (as a network failure would); returns how many."""
        return self._call(self.server.gateway.drop_connections)

    def drop_dps_connections(self) -> int:
        return self._call(self.server.dps.drop_all, "dropped on request")

    def reload_enrollments(self):
        """Re-read the enrollment file now (it is also re-read automatically when it changes)."""
        return self._call(self.server.ctx.store.reload)

    @property
    def enrollment_error(self):
        """The error of the last rejected edit of the enrollment file, or None."""
        return self.server.ctx.store.last_error

    def use_gateway_certificate(self, cert_file, key_file) -> None:
        self._call(self.server.use_gateway_certificate, cert_file, key_file)

    # --- the IoT Hub service side (twin, direct methods, C2D), as host_tools.emulator.control.ServiceClient

    def _service(self, op: str, wait: float = 10, **args):
        future = asyncio.run_coroutine_threadsafe(perform(self.server.gateway, op, args), self._loop)
        return future.result(wait)

    def twin(self, device_id: str) -> dict:
        return self._service("twin", device_id=device_id)

    def set_desired(self, device_id: str, patch: dict) -> dict:
        return self._service("set_desired", device_id=device_id, patch=patch)

    def invoke_method(self, device_id: str, name: str, payload=None, timeout: float = 30) -> dict:
        return self._service(
            "invoke_method", wait=timeout + 10, device_id=device_id, name=name, payload=payload, timeout=timeout
        )

    def send_c2d(self, device_id: str, payload: bytes | str, properties: dict | None = None) -> str:
        data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        return self._service("send_c2d", device_id=device_id, payload_b64=_b64(data), properties=properties)

    def publish_raw(self, device_id: str, topic: str, payload: bytes | str = b"", qos: int = 0) -> bool:
        data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        return self._service("publish_raw", device_id=device_id, topic=topic, payload_b64=_b64(data), qos=qos)

    def hub_records(self, device_id: str | None = None) -> list[dict]:
        """What the service side recorded (hub.jsonl): twin requests, desired patches, methods, C2D."""
        records = self.server.ctx.hub.records.records()
        return [r for r in records if device_id is None or r["device_id"] == device_id]

    def forget_assignments(self) -> None:
        """Forget what DPS assigned (as after an emulator restart)."""
        self._call(self.server.ctx.assignments.clear)


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()
