"""Flows the host drives while the device runs: the big-messages floor (floors.BIG_MESSAGES). The device runs the
default application until stopped; once it is at the hub, the emulator's service API sends a 40 KB C2D message, a
30 KB desired patch and a 100 KB direct-method payload, one after the other, each waited for until the device says
what it did with it (handled, or read past as too large: C2D acknowledged, desired skipped, method answered 413, as
tests/test_big_messages.py checks). The run succeeds when every message met one of those fates, telemetry went on
afterwards, and the device kept its one gateway connection (no reconnect, no retry) and is still running.

Each run is a new device of a symmetric group enrollment (dev.BIG_MESSAGES_GROUP, a registration id per run), so a
message a failed run left queued, or the desired section it set, never reaches the next one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time

from host_tools.bench import device as dev
from host_tools.emulator.control import ServiceClient, ServiceError
from host_tools.provisioning.device_keys import derive_device_key

KB = 1024
C2D_BYTES = 40 * KB
DESIRED_BYTES = 30 * KB
METHOD_BYTES = 100 * KB
START_TIMEOUT_S = 60  # power-on to hub_ready
FATE_TIMEOUT_S = 30  # one message, sent to handled or read past
TELEMETRY_AFTER = 2  # acknowledged messages after the last big one


class _Running:
    """A device process whose output lines are collected as they come."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def events(self, name: str | None = None) -> list[dict]:
        return [fields for _, event, fields in dev.device_events(self.output) if name is None or event == name]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> str:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(5)
        return self.output


class _Stopped(Exception):
    """The run cannot succeed any more (the device exited, or a message met no fate in time)."""


def _until(running: _Running, found, what: str, timeout: float = FATE_TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while True:
        value = found()
        if value:
            return value
        if not running.alive():
            raise _Stopped(None)  # why: the device's own last words
        if time.monotonic() > deadline:
            raise _Stopped(f"no {what} within {timeout:.0f} s")
        time.sleep(0.05)


def _mid(fields: dict):
    try:
        return json.loads(fields.get("properties", "{}")).get("$.mid")
    except ValueError:
        return None


class BigMessages:
    """A floors runner (device.find_heap_floor `runner`) for the big-messages flow on one emulator."""

    def __init__(self, emulator_info: dict, group_key: str):
        control = emulator_info["control"]
        self.service = ServiceClient(control["host"], int(control["port"]), control["token"])
        self.group_key = group_key
        self._runs = 0
        self.fates: dict[int, dict[str, str]] = {}  # heap -> fate of each message, of the last run at that heap

    def __call__(self, image: dev.DeviceImage, label: str, heap: int | None, script: str = "main.py", **provisioning):
        self._runs += 1
        registration_id = f"{dev.BIG_MESSAGES_GROUP}-{self._runs:03d}"
        root = image.fresh_device(
            label,
            with_bench_scripts=script != "main.py",
            registration_id=registration_id,
            symmetric_key=derive_device_key(self.group_key, registration_id),
            **provisioning,
        )
        proc = subprocess.Popen(
            dev.device_command((), heap, script, image.runtime),
            cwd=root,
            env=dev.device_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        running = _Running(proc)
        fates: dict[str, str] = {}
        failed, problem = False, None
        try:
            self._drive(running, registration_id, fates)
        except _Stopped as stopped:
            failed, problem = True, stopped.args[0]
        except ServiceError as exc:
            failed, problem = True, f"service request failed: {exc}"
        finally:
            output = running.stop()
            shutil.rmtree(root, ignore_errors=True)
        events = dev.device_events(output)
        if not failed and "Traceback" in output:
            failed, problem = True, "a traceback in the output"
        if not failed:
            if heap is not None:
                self.fates[heap] = fates
            return True, "ok", events
        reason = problem or dev.failure_reason(output, events)  # None: the device exited, its last words say why
        done = ", ".join(f"{kind} {fate}" for kind, fate in fates.items())
        return False, reason + (f" (after: {done})" if done else ""), events

    def _fate(self, running: _Running, event: str, where, what: str) -> tuple[str, dict]:
        def found():
            handled = [f for f in running.events(event) if where(f)]
            if handled:
                return "handled", handled[0]
            too_large = [f for f in running.events("cloud_message_too_large") if where(f)]
            return (too_large[0]["action"], too_large[0]) if too_large else None

        return _until(running, found, what)

    def _drive(self, running: _Running, device_id: str, fates: dict[str, str]) -> None:
        _until(running, lambda: running.events("hub_ready"), "hub_ready", START_TIMEOUT_S)

        mid = self.service.send_c2d(device_id, b"c" * C2D_BYTES, {"bench": "big"})
        fates["c2d"], fields = self._fate(
            running, "c2d_received", lambda f: mid in (f.get("mid"), _mid(f)), "fate of the 40 KB C2D message"
        )
        if fates["c2d"] == "handled" and fields.get("size") != str(C2D_BYTES):
            raise _Stopped(f"the C2D message arrived with {fields.get('size')} bytes, not {C2D_BYTES}")

        patch = {"blob": "d" * (DESIRED_BYTES - 60), "telemetryIntervalSeconds": 1}
        version = str(self.service.set_desired(device_id, patch)["desired"]["$version"])
        fates["desired"], _ = self._fate(
            running,
            "telemetry_interval_changed",
            lambda f: f.get("version") == version,
            "fate of the 30 KB desired patch",
        )

        payload = "m" * (METHOD_BYTES - 2)
        answer = self.service.invoke_method(device_id, "ping", payload, timeout=FATE_TIMEOUT_S)
        if not running.alive():
            raise _Stopped(None)
        if answer["status"] == 200 and answer["payload"] == {"pong": payload}:
            fates["method"] = "handled"
        elif answer["status"] == 413:
            fates["method"] = "answered_413"
        else:
            raise _Stopped(f"the 100 KB method call was answered {answer['status']}")

        sent = len(running.events("telemetry_acknowledged"))
        _until(
            running,
            lambda: len(running.events("telemetry_acknowledged")) >= sent + TELEMETRY_AFTER,
            f"{TELEMETRY_AFTER} telemetry acknowledgements after the messages",
        )
        connections = len(running.events("gateway_verified"))
        if connections != 1 or running.events("retry_scheduled"):
            raise _Stopped(f"the device did not keep its connection ({connections} gateway connections)")
