"""Twin, direct methods and C2D on the MicroPython Unix port against the emulator (a child process, used from the host
as the IoT Hub service would be): the default application (firmware/main.py) and an application written against the
public API (azprov.connect) in an asyncio task; across a dropped connection and a token renewal."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from host_tools.board.harness import parse_device_line
from host_tools.board.unix_port import run_device, start_device
from host_tools.emulator.control import ServiceClient
from tests.helpers import assert_no_secret, enrollment_doc, individual, new_key

FAST = ("--fault", "retry_after=0")
APP = Path(__file__).parent / "apps" / "hub_app.py"


class RunningDevice:
    """A device process whose output lines are collected as they come."""

    def __init__(self, dev, script: str = "main.py", heapsize=None):
        self.proc = start_device(dev.root, script=script, runtime=dev.runtime, heapsize=heapsize)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def events(self, name: str) -> list[dict]:
        with self._changed:
            parsed = [parse_device_line(line) for line in self.lines]
        return [fields for p in parsed if p and p[1] == name for fields in (p[2],)]

    def wait(self, name: str, count: int = 1, timeout: float = 30, where=lambda fields: True) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            found = [f for f in self.events(name) if where(f)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"no {count}x {name} in time; output:\n" + self.output[-4000:])
            with self._changed:
                self._changed.wait(0.2)

    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        return self.output


def _wait_reported(service, device_id, check, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        reported = service.twin(device_id)["reported"]
        if check(reported):
            return reported
        if time.monotonic() > deadline:
            raise AssertionError(f"reported properties never matched: {reported}")
        time.sleep(0.1)


def _hub_records(emu) -> list[dict]:
    path = Path(emu.info["hub_records"])
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _check_ping_and_c2d(service, dev, device_id, round_):
    answer = service.invoke_method(device_id, "ping", {"round": round_}, timeout=15)
    assert answer == {"status": 200, "payload": {"pong": {"round": round_}}}
    service.send_c2d(device_id, f"c2d-{round_}", {"round": str(round_), "$.ct": "text/plain"})
    (logged,) = dev.wait("c2d_received", where=lambda f: json.loads(f["properties"]).get("round") == str(round_))
    assert logged["size"] == str(len(f"c2d-{round_}"))
    assert json.loads(logged["properties"])["$.ct"] == "text/plain"


def test_default_app_twin_methods_c2d_across_drop_and_renewal(emulator, device):
    key = new_key()
    emu = emulator(enrollment_doc([individual("hub-dev", key)]), *FAST)
    service = ServiceClient.from_state_dir(emu.state_dir)
    # Set before the device ever connected: applied from the twin GET after the first connect.
    service.set_desired("hub-dev", {"telemetryIntervalSeconds": 2})
    dev_folder = device(emu, "hub-dev", key, telemetry_count=0, telemetry_interval_s=1, sas_ttl_s=10)
    dev = RunningDevice(dev_folder)
    try:
        dev.wait("telemetry_interval_changed", where=lambda f: f["seconds"] == "2" and f["version"] == "2")
        reported = _wait_reported(service, "hub-dev", lambda r: "azprov" in r and "telemetryIntervalSeconds" in r)
        assert reported["telemetryIntervalSeconds"] == {"value": 2, "ac": 200, "av": 2}
        info = reported["azprov"]
        assert info["version"] == "0.1.0" and isinstance(info["heapFree"], int) and info["heapFree"] > 0
        state = json.loads((dev_folder.storage / "state.json").read_text())
        assert info["bundleEtag"] == state["trust_bundle"]["etag"]

        _check_ping_and_c2d(service, dev, "hub-dev", 1)
        assert service.invoke_method("hub-dev", "reboot", timeout=15)["status"] == 404

        # Invalid values are acknowledged with 400 and not applied.
        for bad in ("fast", 0, 86401, 2.5, True):
            twin = service.set_desired("hub-dev", {"telemetryIntervalSeconds": bad})
            version = twin["desired"]["$version"]
            reported = _wait_reported(
                service, "hub-dev", lambda r, v=version: r["telemetryIntervalSeconds"].get("av") == v
            )
            assert reported["telemetryIntervalSeconds"] == {"value": bad, "ac": 400, "av": version}
        assert len(dev.events("telemetry_interval_changed")) == 1

        # A change made while the device is offline is applied after it reconnects.
        assert service.drop_connection("hub-dev")
        version = service.set_desired("hub-dev", {"telemetryIntervalSeconds": 3})["desired"]["$version"]
        records = _hub_records(emu)
        assert not [r for r in records if r["event"] == "desired_sent" and r["version"] == version]
        dev.wait("telemetry_interval_changed", where=lambda f: f["seconds"] == "3")
        reported = _wait_reported(service, "hub-dev", lambda r: r["telemetryIntervalSeconds"].get("av") == version)
        assert reported["telemetryIntervalSeconds"] == {"value": 3, "ac": 200, "av": version}
        assert [r for r in dev.events("retry_scheduled") if r["step"] in ("connect", "serve")]
        _check_ping_and_c2d(service, dev, "hub-dev", 2)

        # Token renewal (reconnect with a fresh token): handlers still answer.
        dev.wait("gateway_token_renewed", timeout=30)
        _check_ping_and_c2d(service, dev, "hub-dev", 3)
        sent = len(dev.events("telemetry_acknowledged"))
        time.sleep(6.5)
        assert len(dev.events("telemetry_acknowledged")) - sent <= 3  # every 3 s now, not every second
    finally:
        output = dev.stop()
    assert "Traceback" not in output, output
    assert_no_secret(output, key)
    # Each C2D message was completed (acknowledged) exactly once.
    records = _hub_records(emu)
    assert len([r for r in records if r["event"] == "c2d_completed"]) == 3
    assert len([r for r in records if r["event"] == "method_answered" and r["status"] == 200]) == 3


@pytest.mark.parametrize("use_mpy", [True], ids=["mpy"])
def test_malformed_messages_are_classified_and_the_client_stays_connected(emulator, device, use_mpy):
    key = new_key()
    emu = emulator(enrollment_doc([individual("odd-dev", key)]), *FAST)
    service = ServiceClient.from_state_dir(emu.state_dir)
    dev_folder = device(emu, "odd-dev", key, use_mpy=use_mpy, telemetry_count=0, telemetry_interval_s=5)
    dev = RunningDevice(dev_folder)
    try:
        dev.wait("hub_ready")
        _wait_reported(service, "odd-dev", lambda r: "azprov" in r)
        bad = [
            ("$iothub/twin/PATCH/properties/desired/?$version=99", b"{not json", 0),
            ("$iothub/twin/PATCH/properties/desired/?$version=x", b'{"a": 1}', 0),
            ("$iothub/twin/res/abc/?$rid=1", b"", 0),
            ("$iothub/twin/res/200/?$rid=77", b"[]", 0),
            ("devices/odd-dev/messages/devicebound/a=%zz", b"x", 1),
            ("$iothub/unknown/topic", b"", 0),
        ]
        for topic, body, qos in bad:
            assert service.publish_raw("odd-dev", topic, body, qos)
        assert service.publish_raw("odd-dev", "$iothub/methods/POST/ping/?$rid=m1", b"{bad json", 0)
        rejected = dev.wait("cloud_message_rejected", count=4)
        assert all(f["kind"] == "malformed_response" for f in rejected)
        deadline = time.monotonic() + 10
        while not [r for r in _hub_records(emu) if r["event"] == "method_answered" and r["rid"] == "m1"]:
            assert time.monotonic() < deadline, "the malformed method request got no answer"
            time.sleep(0.1)
        answer = [r for r in _hub_records(emu) if r["event"] == "method_answered" and r["rid"] == "m1"][0]
        assert answer["status"] == 400
        # Still connected on the same connection, still serving.
        assert service.invoke_method("odd-dev", "ping", "still here", timeout=15) == {
            "status": 200,
            "payload": {"pong": "still here"},
        }
        # A method request delivered twice (QoS 1 redelivery) is answered once.
        for _ in range(2):
            assert service.publish_raw("odd-dev", "$iothub/methods/POST/ping/?$rid=dup", b'"x"', 1)
        dev.wait("method_repeated")
        assert [r["status"] for r in _hub_records(emu) if r["event"] == "method_answered" and r["rid"] == "dup"] == [
            200
        ]
        assert len(dev.events("gateway_verified")) == 1
    finally:
        output = dev.stop()
    assert "Traceback" not in output, output


def test_application_on_the_public_api_in_an_asyncio_task(emulator, device):
    key = new_key()
    emu = emulator(enrollment_doc([individual("app-dev", key)]), *FAST)
    service = ServiceClient.from_state_dir(emu.state_dir)
    dev_folder = device(emu, "app-dev", key, sas_ttl_s=8)
    (dev_folder.root / "app.py").write_text(APP.read_text())
    dev = RunningDevice(dev_folder, script="app.py")
    try:
        dev.wait("app_started")
        service.set_desired("app-dev", {"colour": "blue"})
        (seen,) = dev.wait("app_desired", where=lambda f: "blue" in f["patch"])
        assert json.loads(seen["patch"]) == {"colour": "blue"}
        assert service.invoke_method("app-dev", "echo", {"x": [1, 2]}, timeout=15) == {
            "status": 200,
            "payload": {"x": [1, 2]},
        }
        # A handler that raises: 500 to the caller, a classified error in the log, and the client lives on.
        answer = service.invoke_method("app-dev", "boom", timeout=15)
        assert answer["status"] == 500 and "ValueError" in answer["payload"]["error"]
        (failure,) = dev.wait("handler_failed")
        assert failure["kind"] == "handler_failed"
        service.send_c2d("app-dev", "boom")  # the C2D handler raises too: still acknowledged
        service.send_c2d("app-dev", "fine", {"k": "v"})
        (c2d,) = dev.wait("app_c2d", where=lambda f: f["body"] == "fine")
        properties = json.loads(c2d["properties"])
        assert properties["k"] == "v" and properties["$.mid"]  # the message id IoT Hub gives every message
        assert len(dev.wait("handler_failed", count=2)) == 2
        # The twin from the application's side, and a report it made.
        (twin,) = dev.wait("app_twin")
        assert json.loads(twin["desired"])["colour"] == "blue"
        reported = _wait_reported(service, "app-dev", lambda r: "lastEcho" in r)
        assert reported["lastEcho"] == {"x": [1, 2]}
        # Telemetry kept flowing from the other task all along, through a token renewal.
        dev.wait("gateway_token_renewed", timeout=30)
        assert service.invoke_method("app-dev", "echo", 7, timeout=15) == {"status": 200, "payload": 7}
        assert len(dev.wait("app_sent", count=3)) >= 3
    finally:
        output = dev.stop()
    assert "Traceback" not in output, output
    completed = [r for r in _hub_records(emu) if r["event"] == "c2d_completed"]
    assert len(completed) == 2
    telemetry = [json.loads(r["payload"]) for r in emu.telemetry() if r["device_id"] == "app-dev"]
    assert telemetry and all("n" in t for t in telemetry)


def test_the_readme_example_runs_as_written(emulator, device):
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Your application", 1)[1]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    key = new_key()
    emu = emulator(enrollment_doc([individual("readme-dev", key)]), *FAST)
    service = ServiceClient.from_state_dir(emu.state_dir)
    dev_folder = device(emu, "readme-dev", key)
    (dev_folder.root / "example.py").write_text(example)
    dev = RunningDevice(dev_folder, script="example.py")
    try:
        deadline = time.monotonic() + 30  # the first message is sent after the handlers were registered
        while not [r for r in emu.telemetry() if r["device_id"] == "readme-dev"]:
            assert time.monotonic() < deadline and dev.proc.poll() is None, dev.output
            time.sleep(0.1)
        assert service.invoke_method("readme-dev", "echo", {"a": 1}, timeout=15) == {"status": 200, "payload": {"a": 1}}
        _wait_reported(service, "readme-dev", lambda r: r.get("lastEcho") == {"a": 1})
        service.set_desired("readme-dev", {"x": 1})
        service.send_c2d("readme-dev", "hello", {"colour": "red"})
        deadline = time.monotonic() + 15
        while not ("desired {'x': 1} version 2" in dev.output and "c2d b'hello'" in dev.output):
            assert time.monotonic() < deadline and dev.proc.poll() is None, dev.output
            time.sleep(0.1)
        deadline = time.monotonic() + 15
        while len([r for r in emu.telemetry() if r["device_id"] == "readme-dev"]) < 2:
            assert time.monotonic() < deadline, dev.output
            time.sleep(0.1)
    finally:
        output = dev.stop()
    assert "Traceback" not in output, output
    record = [r for r in emu.telemetry() if r["device_id"] == "readme-dev"][0]
    assert record["properties"] == {"$.ct": "application/json", "$.ce": "utf-8", "source": "app"}


_MODULES_AFTER = """import sys
from azprov.supervisor import main
status = main("provisioning.json", hub_features=%s)
print("modules", " ".join(sorted(m for m in sys.modules if m.startswith("azprov"))))
sys.exit(status)
"""


def test_hub_modules_load_only_when_used(emulator, device):
    key = new_key()
    emu = emulator(enrollment_doc([individual("lazy-dev", key)]), *FAST)
    loaded = {}
    for features in (False, True):
        dev = device(emu, "lazy-dev", key)
        (dev.root / "flow.py").write_text(_MODULES_AFTER % features)
        proc = run_device(dev.root, script="flow.py", runtime=dev.runtime)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        line = next(x for x in proc.stdout.splitlines() if x.startswith("modules "))
        loaded[features] = set(line.split()[1:])
    assert not {"azprov.hub", "azprov.client", "azprov.default_app"} & loaded[False]
    assert {"azprov.hub", "azprov.client", "azprov.default_app"} <= loaded[True]
    # The provision step's code is let go once the device is provisioned, whichever application runs.
    provisioning_code = {"azprov.provision", "azprov.dps", "azprov.bundle", "azprov.store", "azprov.pem"}
    assert not provisioning_code & (loaded[False] | loaded[True])


_RELEASE = """import gc
import azprov.transport
from azprov import release
gc.collect()
before = gc.mem_alloc()
import azprov.provision
import azprov.bundle
gc.collect()
loaded = gc.mem_alloc()
release("provision", "dps", "bundle", "store", "pem", "sas", "encoding")
print("heap", loaded - before, loaded - gc.mem_alloc())
"""


@pytest.mark.runtimes("wheel")  # .mpy files: the frozen runtime keeps its code in the binary, not in the heap
def test_releasing_the_provision_code_returns_its_heap(emulator, device):
    """On a board without frozen modules the bytecode is in the heap: dropping the DPS leg's modules gives most of it
    back (what stays: their interned names, and the transport and supervisor the gateway needs too)."""
    key = new_key()
    emu = emulator(enrollment_doc([individual("release-dev", key)]), *FAST)
    dev = device(emu, "release-dev", key)
    (dev.root / "release.py").write_text(_RELEASE)
    proc = run_device(dev.root, script="release.py", runtime=dev.runtime)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    loaded, returned = map(int, next(x for x in proc.stdout.splitlines() if x.startswith("heap ")).split()[1:])
    # What stays is the names those modules interned (the qstr pool is never freed): 21,376 of 23,616 B came back.
    assert returned >= loaded * 3 // 4, (loaded, returned)
