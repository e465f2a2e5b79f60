"""Fleet driver for `make bench`: N simulated devices power on together and provision against the emulator,
each running the firmware's own protocol code.

Why not N MicroPython processes: the Unix-port wheel runs MicroPython inside a CPython process of about 110 MB RSS,
so 1,000 of them do not fit on a bench machine at once, and batches of them would measure process start-up, not
the fleet. This driver runs every device in one asyncio loop instead, and keeps what decides the fleet's behaviour
identical to the device:

- imported from the firmware's sources at run time (a stub `micropython` module provides `const`, as in
  tests/device/conftest.py): `azprov.config.parse` (each device's provisioning file and its defaults: registration
  deadline, SAS lifetime, retry base and cap), `azprov.sas` (the device's DPS token), `azprov.dps` (user name,
  topics, bodies and the `Registration` state machine: start, resume, on_message), `azprov.policy.decide` (every
  wait: after a failure, and before a poll through its PENDING decision) and `azprov.provision` (the client
  version a `Provisioner` announces, the I/O timeout and keep-alive);
- the driver's own: the per-device keys, derived from the group key on the host as for any group enrollment;
  a minimal MQTT 3.1.1 client over asyncio + ssl (CERT_REQUIRED and the host-name check against the DPS root,
  like the firmware's transport), and a loop that mirrors the supervisor's provision step in a one-shot run
  (`azprov.supervisor.Supervisor.failed` around `azprov.provision.Provisioner.attempt`): each attempt within what
  is left of `registration_timeout_s`; after any ProvisioningError, `policy.decide(kind, failures, retry_after, cfg,
  random, elapsed_ms, "provision")`; stop at `final` or `over_budget`, else sleep `wait_ms` and resume the
  registration (poll the accepted operation or register again). As the Provisioner, the connection is held across
  that sleep when DPS itself answered 429/5xx (pinged at half its keep-alive, as `Supervisor._sleep`), and the next
  attempt resumes on it unless the server has closed it; any other failure closes it and the next attempt connects
  again. The only difference from a device is that the sleeps are `asyncio.sleep`, so 1,000 devices share one thread.

Each device has its own TLS connection; the driver only ever connects to a loopback address.

    python -m host_tools.bench.fleet_driver SPEC.json RESULT.json

SPEC (written by host_tools/bench/command.py, mode 0600 because it holds the group key): firmware_dir, devices,
id_scope, group_key, registration_prefix, dps_address, dps_port, dps_hostname, dps_ca_file, progress_interval_s.
Progress goes to stdout as `progress key=value ...` lines; the result (no key, no token) to RESULT.json.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import random
import resource
import ssl
import statistics
import sys
import time
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path

# The shell's constants the driver's connections use, read from azprov.provision (a rename fails loudly).
_SHELL_CONSTANTS = ("_IO_TIMEOUT_MS", "_KEEPALIVE_S")
# Extra time the whole fleet gets beyond one device's registration deadline before stragglers are cancelled:
# a connect attempt and a last answer may each take one I/O timeout.
_IO_TIMEOUTS_OF_SLACK = 3
_MQTT_PROTOCOL_LEVEL = 4  # MQTT 3.1.1
_MAX_PACKET_BYTES = 1 << 20  # refuse absurd lengths from a broken peer instead of allocating them


def load_firmware(firmware_dir: Path) -> types.SimpleNamespace:
    """Imports the firmware's pure modules from `firmware_dir` under CPython."""
    if "micropython" not in sys.modules:
        sys.modules["micropython"] = types.SimpleNamespace(const=lambda value: value)
    sys.path.insert(0, str(firmware_dir))
    from azprov import config, dps, errors, policy, provision, sas  # noqa: PLC0415 (needs the path set above)
    from azprov.clock import require_set_clock  # noqa: PLC0415

    return types.SimpleNamespace(
        config=config,
        dps=dps,
        errors=errors,
        policy=policy,
        provision=provision,
        sas=sas,
        require_set_clock=require_set_clock,
        constants={name: getattr(provision, name) for name in _SHELL_CONSTANTS},
    )


# ------------------------------------------------------------------------------------------------ MQTT 3.1.1


class MqttClosed(Exception):
    """The peer closed the connection or sent something this client does not accept."""


class ConnackRefused(Exception):
    def __init__(self, code: int):
        super().__init__(f"CONNACK {code}")
        self.code = code


def _utf8(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def _packet(first_byte: int, body: bytes) -> bytes:
    length = len(body)
    encoded = bytearray()
    while True:
        byte, length = length % 128, length // 128
        encoded.append(byte | (0x80 if length else 0))
        if not length:
            break
    return bytes([first_byte]) + bytes(encoded) + body


class MqttConnection:
    """Just what a DPS client needs: CONNECT, SUBSCRIBE, PUBLISH at QoS 0/1 both ways, DISCONNECT."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self._packet_id = 0

    @classmethod
    async def open(
        cls,
        address: str,
        port: int,
        hostname: str,
        context: ssl.SSLContext,
        client_id: str,
        username: str,
        password: str,
        keepalive_s: int,
        timeout_s: float,
    ) -> MqttConnection:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                address, port, ssl=context, server_hostname=hostname, ssl_handshake_timeout=timeout_s
            ),
            timeout_s,
        )
        conn = cls(reader, writer)
        try:
            flags = 0x80 | 0x40 | 0x02  # user name, password, clean session (umqtt.simple's default)
            body = (
                _utf8("MQTT")
                + bytes([_MQTT_PROTOCOL_LEVEL, flags])
                + keepalive_s.to_bytes(2, "big")
                + _utf8(client_id)
                + _utf8(username)
                + _utf8(password)
            )
            writer.write(_packet(0x10, body))
            kind, _, payload = await asyncio.wait_for(conn.read_packet(), timeout_s)
            if kind != 0x20 or len(payload) != 2:
                raise MqttClosed("expected CONNACK")
            if payload[1]:
                raise ConnackRefused(payload[1])
        except BaseException:
            conn.abort()
            raise
        return conn

    def _next_packet_id(self) -> int:
        self._packet_id = self._packet_id % 0xFFFF + 1
        return self._packet_id

    async def subscribe(self, topic_filter: str, qos: int, timeout_s: float) -> None:
        packet_id = self._next_packet_id()
        self.writer.write(_packet(0x82, packet_id.to_bytes(2, "big") + _utf8(topic_filter) + bytes([qos])))
        kind, _, payload = await asyncio.wait_for(self.read_packet(), timeout_s)
        if kind != 0x90 or payload[:2] != packet_id.to_bytes(2, "big") or payload[2:3] == b"\x80":
            raise MqttClosed("subscription refused")

    def publish(self, topic: str, body: bytes, qos: int) -> None:
        header = _utf8(topic) + (self._next_packet_id().to_bytes(2, "big") if qos else b"")
        self.writer.write(_packet(0x30 | (qos << 1), header + body))

    async def read_packet(self) -> tuple[int, int, bytes]:
        """(packet type << 4, flags, body) of the next packet."""
        try:
            first = (await self.reader.readexactly(1))[0]
            length, multiplier = 0, 1
            for _ in range(4):
                byte = (await self.reader.readexactly(1))[0]
                length += (byte & 0x7F) * multiplier
                multiplier *= 128
                if not byte & 0x80:
                    break
            else:
                raise MqttClosed("malformed remaining length")
            if length > _MAX_PACKET_BYTES:
                raise MqttClosed("packet too large")
            body = await self.reader.readexactly(length)
        except asyncio.IncompleteReadError as exc:
            raise MqttClosed("connection closed") from exc
        return first & 0xF0, first & 0x0F, body

    async def next_publish(self, timeout_s: float) -> tuple[str, bytes]:
        """The next PUBLISH from the server (acknowledged when QoS 1); other packets (PUBACK...) are skipped."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            kind, flags, body = await asyncio.wait_for(self.read_packet(), max(0.001, deadline - loop.time()))
            if kind != 0x30:
                continue
            qos = (flags >> 1) & 3
            topic_length = int.from_bytes(body[:2], "big")
            topic = body[2 : 2 + topic_length].decode()
            rest = body[2 + topic_length :]
            if qos:
                self.writer.write(_packet(0x40, rest[:2]))
                rest = rest[2:]
            return topic, rest

    async def disconnect(self) -> None:
        try:
            self.writer.write(b"\xe0\x00")
            await asyncio.wait_for(self.writer.drain(), 1)
        except (TimeoutError, OSError, ConnectionError):
            pass
        self.abort()

    def abort(self) -> None:
        self.writer.close()


# ------------------------------------------------------------------------------------------------ the fleet


def device_key(group_key_b64: str, registration_id: str) -> str:
    """A group enrollment's per-device key, derived on the host (the group key never goes on a device):
    base64(HMAC-SHA256(b64decode(group key), registration id))."""
    digest = hmac.new(base64.b64decode(group_key_b64), registration_id.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


@dataclass
class DeviceRecord:
    registration_id: str
    attempts: int = 0  # register requests sent
    polls: int = 0
    throttled: int = 0  # 429 answers
    connections: int = 0
    resumed: int = 0  # attempts made on a connection held since the last attempt
    retries: int = 0  # waits the retry policy scheduled
    outcome: str = "pending"  # assigned | failed
    kind: str | None = None  # the firmware's error kind when failed
    finished_s: float | None = None


@dataclass
class HeldConnection:
    """A device's DPS connection between attempts (azprov.provision.Provisioner.connection)."""

    conn: MqttConnection | None = None
    quiet_since: float = 0.0  # loop time of its last packet

    def take(self) -> MqttConnection | None:
        """The held connection if the server has not closed it (Provisioner._held), else None; nothing stays held."""
        conn, self.conn = self.conn, None
        if conn is not None and (conn.reader.at_eof() or conn.writer.is_closing()):
            conn.abort()
            return None
        return conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.abort()
            self.conn = None


@dataclass
class FleetRun:
    spec: dict
    fw: types.SimpleNamespace
    context: ssl.SSLContext
    started: float = 0.0
    attempt_times: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, attempt number)
    records: list[DeviceRecord] = field(default_factory=list)

    def registration_id(self, index: int) -> str:
        return f"{self.spec['registration_prefix']}{index:05d}"

    def now(self) -> float:
        return asyncio.get_running_loop().time() - self.started

    def _provisioning(self, registration_id: str, key: str) -> dict:
        # The device's provisioning file, parsed by the firmware's own parser (defaults come from it).
        spec = self.spec
        document = {
            "dps_host": spec["dps_hostname"],
            "dps_port": spec["dps_port"],
            "id_scope": spec["id_scope"],
            "registration_id": registration_id,
            "symmetric_key": key,
            "dps_ca_file": spec["dps_ca_file"],
        }
        return self.fw.config.parse(json.dumps(document), "provisioning.json")

    def _transport_error(self, exc: BaseException, context: str):
        errors = self.fw.errors
        if isinstance(exc, errors.ProvisioningError):
            return exc
        if isinstance(exc, ConnackRefused):
            kind = (
                errors.AUTHENTICATION
                if exc.code in (4, 5)
                else (errors.SERVICE_UNAVAILABLE if exc.code == 3 else errors.BAD_REQUEST)
            )
            return errors.ProvisioningError(kind, f"{context}: refused at CONNACK", status=exc.code)
        if isinstance(exc, ssl.SSLCertVerificationError):
            return errors.ProvisioningError(errors.TLS_VERIFICATION, f"{context}: server certificate rejected")
        if isinstance(exc, asyncio.TimeoutError):
            return errors.ProvisioningError(errors.TIMEOUT, f"{context}: no answer in time")
        return errors.ProvisioningError(errors.NETWORK, f"{context}: connection failed ({type(exc).__name__})")

    async def _connect(self, cfg: dict, client_version: str, record: DeviceRecord, deadline: float) -> MqttConnection:
        """As azprov.provision.Provisioner._connect: a fresh SAS token, connect within min(I/O timeout, what is
        left of the attempt's budget), subscribe to the responses."""
        fw, spec = self.fw, self.spec
        loop = asyncio.get_running_loop()
        expiry = fw.require_set_clock() + cfg["sas_ttl_s"]
        password = fw.sas.dps_token(cfg["id_scope"], cfg["registration_id"], cfg["symmetric_key"], expiry)
        timeout_s = max(0.001, min(fw.constants["_IO_TIMEOUT_MS"] / 1000, deadline - loop.time()))
        record.connections += 1
        try:
            conn = await MqttConnection.open(
                spec["dps_address"],
                spec["dps_port"],
                cfg["dps_host"],
                self.context,
                cfg["registration_id"],
                fw.dps.username(cfg["id_scope"], cfg["registration_id"], client_version),
                password,
                fw.constants["_KEEPALIVE_S"],
                timeout_s,
            )
        except Exception as exc:
            raise self._transport_error(exc, "DPS") from None
        try:
            await conn.subscribe(fw.dps.RESPONSE_FILTER, 1, timeout_s)
        except Exception as exc:
            conn.abort()
            raise self._transport_error(exc, "DPS subscribe") from None
        return conn

    async def _attempt(
        self, cfg: dict, client_version: str, reg, record: DeviceRecord, budget_s: float, held: HeldConnection
    ) -> None:
        """One attempt of the provision step, as azprov.provision.Provisioner._register: the held connection or a new
        one, the registration's next request (start, or resume after an earlier attempt), polls while DPS is
        assigning (each waiting the policy's PENDING decision), until the assignment or a ProvisioningError. The
        connection is held for the next attempt when DPS answered 429/5xx, else closed."""
        fw = self.fw
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget_s
        request = reg.start() if reg.rid is None else reg.resume()
        conn = held.take()
        if conn is None:
            conn = await self._connect(cfg, client_version, record, deadline)
        else:
            record.resumed += 1
        keep = False
        try:
            while True:
                delay, topic, body = request
                if delay != 0:
                    wait_ms = fw.policy.decide(fw.policy.PENDING, 0, delay, cfg, 0, 0).wait_ms
                    if wait_ms / 1000 >= deadline - loop.time():
                        raise fw.errors.ProvisioningError(
                            fw.errors.TIMEOUT, "DPS asked to wait %d ms, past the registration deadline" % wait_ms
                        )
                    await asyncio.sleep(wait_ms / 1000)
                if "iotdps-register" in topic:
                    record.attempts += 1
                    self.attempt_times.append((self.now(), record.attempts))
                else:
                    record.polls += 1
                try:
                    conn.publish(topic, body, 1)
                    request = await self._await_decision(conn, reg, record, deadline)
                except fw.errors.ProvisioningError:
                    raise
                except Exception as exc:
                    raise self._transport_error(exc, "DPS") from None
                if request is None:
                    return
        except fw.errors.ProvisioningError as exc:
            keep = exc.status is not None and exc.transient  # the service answered: the connection is healthy
            raise
        finally:
            if keep:
                held.conn, held.quiet_since = conn, loop.time()
            else:
                await conn.disconnect()

    async def _sleep(self, seconds: float, held: HeldConnection) -> None:
        """As azprov.supervisor.Supervisor._sleep: a held connection is pinged at half its keep-alive meanwhile."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        ping_every = self.fw.constants["_KEEPALIVE_S"] / 2
        while held.conn is not None and held.quiet_since + ping_every < end:
            await asyncio.sleep(max(0.0, held.quiet_since + ping_every - loop.time()))
            try:
                held.conn.writer.write(b"\xc0\x00")  # PINGREQ (the PINGRESP is skipped by next_publish)
                await held.conn.writer.drain()
                held.quiet_since = loop.time()
            except (OSError, ConnectionError):
                held.close()  # the server let it go: the next attempt connects again
        await asyncio.sleep(max(0.0, end - loop.time()))

    async def _await_decision(self, conn: MqttConnection, reg, record: DeviceRecord, deadline: float):
        """Answers until the state machine decides: None when assigned, else the next request."""
        fw = self.fw
        loop = asyncio.get_running_loop()
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise fw.errors.ProvisioningError(fw.errors.TIMEOUT, "no DPS answer before the registration deadline")
            answer_topic, answer = await conn.next_publish(remaining)
            parsed = fw.dps.parse_topic(answer_topic)
            if parsed is not None and parsed[0] == 429:
                record.throttled += 1
            next_request = reg.on_message(answer_topic, answer)
            if reg.done:
                return None
            if next_request is not None:
                return next_request

    async def device(self, index: int) -> None:
        """One device's provision step in a one-shot run, as azprov.supervisor.Supervisor drives it: attempts
        within what is left of registration_timeout_s, the retry policy's decision after each failure."""
        fw, spec = self.fw, self.spec
        registration_id = self.registration_id(index)
        record = DeviceRecord(registration_id)
        self.records.append(record)
        key = device_key(spec["group_key"], registration_id)
        cfg = self._provisioning(registration_id, key)
        # The Provisioner is built for what it announces (its client version) and nothing else: no I/O here.
        client_version = fw.provision.Provisioner(cfg, None, None).client_version
        loop = asyncio.get_running_loop()
        since = loop.time()  # the device's last useful work: power-on
        timeout_s = cfg["registration_timeout_s"]
        failures = 0
        reg = None  # kept across attempts, as Provisioner.registration
        held = HeldConnection()  # as Provisioner.connection
        try:
            while True:
                if reg is None:
                    reg = fw.dps.Registration(registration_id, cfg["payload"])
                budget_s = max(0.001, timeout_s - (loop.time() - since))  # Supervisor._registration_budget_ms
                try:
                    await self._attempt(cfg, client_version, reg, record, budget_s, held)
                    record.outcome = "assigned"
                    return
                except fw.errors.ProvisioningError as exc:
                    if exc.status is not None and not exc.transient:
                        reg = None  # a final answer: a later attempt registers anew (Provisioner.attempt)
                    failures += 1
                    decision = fw.policy.decide(
                        exc.kind,
                        failures,
                        exc.retry_after,
                        cfg,
                        random.random(),
                        int((loop.time() - since) * 1000),
                        "provision",
                    )
                    if decision.final or decision.over_budget:  # the one-shot stop rule
                        raise
                    record.retries += 1
                    await self._sleep(decision.wait_ms / 1000, held)
        except fw.errors.ProvisioningError as exc:
            record.outcome, record.kind = "failed", exc.kind
        except asyncio.CancelledError:
            record.outcome, record.kind = "failed", "driver_deadline"
            raise
        finally:
            held.close()  # the stop rule ended the run (Supervisor.failed closes it too)
            record.finished_s = self.now()

    async def _report_progress(self, total: int) -> None:
        interval = self.spec.get("progress_interval_s", 0.5)
        while True:
            done = [r for r in self.records if r.outcome != "pending"]
            failed = sum(1 for r in done if r.outcome == "failed")
            print(
                f"progress elapsed_s={self.now():.1f} devices={total} done={len(done)} failed={failed} "
                f"attempts={len(self.attempt_times)}",
                flush=True,
            )
            await asyncio.sleep(interval)

    async def run(self) -> None:
        total = self.spec["devices"]
        loop = asyncio.get_running_loop()
        self.started = loop.time()
        # The whole fleet is bounded too: one registration deadline plus slack for a connect and a last answer.
        first_id = self.registration_id(1)
        deadline_s = self._provisioning(first_id, device_key(self.spec["group_key"], first_id))[
            "registration_timeout_s"
        ]
        timeout_s = deadline_s + _IO_TIMEOUTS_OF_SLACK * self.fw.constants["_IO_TIMEOUT_MS"] / 1000
        reporter = asyncio.create_task(self._report_progress(total))
        tasks = [asyncio.create_task(self.device(i)) for i in range(1, total + 1)]  # every device powers on now
        try:
            await asyncio.wait(tasks, timeout=timeout_s)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            reporter.cancel()


def summarize(run: FleetRun, cpu_s: float) -> dict:
    records = run.records
    finished = [r.finished_s for r in records if r.finished_s is not None]
    assigned = [r for r in records if r.outcome == "assigned"]
    fleet_seconds = max(finished) if finished else 0.0
    seconds = int(fleet_seconds) + 1
    per_second = [0] * seconds
    retries_per_second = [0] * seconds
    for at, attempt in run.attempt_times:
        slot = min(int(at), seconds - 1)
        per_second[slot] += 1
        if attempt > 1:
            retries_per_second[slot] += 1
    histogram: dict[str, int] = {}
    for record in records:
        histogram[str(record.attempts)] = histogram.get(str(record.attempts), 0) + 1
    kinds: dict[str, int] = {}
    for record in records:
        if record.outcome != "assigned":
            kinds[record.kind or "unknown"] = kinds.get(record.kind or "unknown", 0) + 1
    latencies = sorted(r.finished_s for r in assigned)
    return {
        "devices": len(records),
        "assigned": len(assigned),
        "failures": len(records) - len(assigned),
        "failure_kinds": kinds,
        "seconds": round(fleet_seconds, 3),
        "last_assignment_s": round(max(latencies), 3) if latencies else None,
        "median_assignment_s": round(statistics.median(latencies), 3) if latencies else None,
        "register_attempts": len(run.attempt_times),
        "throttled_answers": sum(r.throttled for r in records),
        "polls": sum(r.polls for r in records),
        "connections": sum(r.connections for r in records),
        "resumed_attempts": sum(r.resumed for r in records),
        "retries_scheduled": sum(r.retries for r in records),
        "max_attempts": max((r.attempts for r in records), default=0),
        "attempts_histogram": dict(sorted(histogram.items(), key=lambda kv: int(kv[0]))),
        "attempts_per_second": per_second,
        "retry_attempts_per_second": retries_per_second,
        "driver_cpu_s": round(cpu_s, 3),
        "shell_constants": run.fw.constants,
    }


def _loopback(address: str) -> str:
    if not ipaddress.ip_address(address).is_loopback:
        raise SystemExit(f"fleet traffic goes to loopback addresses only, not {address}")
    return address


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[1]).read_text())
    _loopback(spec["dps_address"])
    fw = load_firmware(Path(spec["firmware_dir"]))
    context = ssl.create_default_context(cafile=spec["dps_ca_file"])  # CERT_REQUIRED + host name, like the device
    run = FleetRun(spec, fw, context)
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    wall_before = time.monotonic()
    asyncio.run(run.run())
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    result = summarize(run, cpu_s)
    result["driver_wall_s"] = round(time.monotonic() - wall_before, 3)
    result["devices_detail"] = [asdict(r) for r in sorted(run.records, key=lambda r: r.registration_id)]
    Path(argv[2]).write_text(json.dumps(result, indent=1))
    print(f"finished devices={result['devices']} failures={result['failures']} seconds={result['seconds']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
