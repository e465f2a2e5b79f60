"""Messages up to IoT Hub's limits, end to end on the MicroPython Unix port against the emulator (both runtimes): C2D,
desired patches and direct methods in three size classes (small, 20 KB, near the limit: 60 KB C2D, 30 KB desired,
100 KB method), plus a twin whose desired section is 30 KB at connect. With the runtime's default heap every message
reaches the default application; with a heap too small for the large ones each is read past and its fate logged
(`cloud_message_too_large`: C2D acknowledged, method answered 413, desired skipped). Either way the device keeps the
gateway connection it has (no new connection beyond the ones the test causes) and telemetry goes on, also on the
board path (`run_loop: true`) across a dropped connection."""

from __future__ import annotations

import json
import time

import pytest

from host_tools.emulator.control import ServiceClient
from tests.helpers import enrollment_doc, individual, new_key
from tests.test_hub_features import RunningDevice, _hub_records, _wait_reported
from tests.test_runloop_faults import board_device  # noqa: F401 (the fixture)

FAST = ("--fault", "retry_after=0")
KB = 1024
C2D_SIZES = (200, 20 * KB, 60 * KB)
DESIRED_SIZES = (200, 20 * KB, 30 * KB)
METHOD_SIZES = (200, 20 * KB, 100 * KB)
# A heap in which the default application runs but the near-limit messages do not fit (the 32-bit frozen build is
# the ESP32 proxy; the 64-bit wheel runs the firmware from .mpy files, with about 150 KB resident).
SMALL_HEAP = {"unix32-frozen": "96K", "wheel": "240K"}


def _fate(dev, event, where, timeout=30):
    """The first `event` matching `where`, or the cloud_message_too_large event that took its place."""
    deadline = time.monotonic() + timeout
    while True:
        found = [f for f in dev.events(event) if where(f)]
        if found:
            return "delivered", found[0]
        too_large = [f for f in dev.events("cloud_message_too_large") if where(f)]
        if too_large:
            return too_large[0]["action"], too_large[0]
        if time.monotonic() > deadline or not dev.alive():
            raise AssertionError(f"no fate for a message ({event}) in time; output:\n" + dev.output[-4000:])
        time.sleep(0.1)


def _mid(fields):
    return json.loads(fields.get("properties", "{}")).get("$.mid")


def _exercise(service, dev, device_id, round_):
    """Sends every kind in every size class; returns {kind: [fate per size]} (fates: delivered, acknowledged,
    answered_413, skipped)."""
    fates = {"c2d": [], "desired": [], "method": []}
    for size in C2D_SIZES:
        mid = service.send_c2d(device_id, b"c" * size, {"round": str(round_)})
        fate, fields = _fate(dev, "c2d_received", lambda f, mid=mid: mid in (f.get("mid"), _mid(f)))
        if fate == "delivered":
            assert fields["size"] == str(size)
        fates["c2d"].append(fate)
    for size in DESIRED_SIZES:
        interval = 1 + len(fates["desired"])
        patch = {"blob": "d" * (size - 60), "telemetryIntervalSeconds": interval}
        version = service.set_desired(device_id, patch)["desired"]["$version"]
        fate, fields = _fate(
            dev,
            "telemetry_interval_changed",
            lambda f, v=version: f.get("version") == str(v),
        )
        if fate == "delivered":
            reported = _wait_reported(
                service, device_id, lambda r, v=version: r.get("telemetryIntervalSeconds", {}).get("av") == v
            )
            assert reported["telemetryIntervalSeconds"] == {"value": interval, "ac": 200, "av": version}
        fates["desired"].append(fate)
    for size in METHOD_SIZES:
        payload = "m" * (size - 2)
        answer = service.invoke_method(device_id, "ping", payload, timeout=20)
        if answer["status"] == 200:
            assert answer["payload"] == {"pong": payload}
            fates["method"].append("delivered")
        else:
            assert answer["status"] == 413, answer["status"]
            assert "does not fit" in answer["payload"]["error"]
            fates["method"].append("answered_413")
    return fates


def _telemetry_goes_on(dev, timeout=30):
    sent = len(dev.events("telemetry_acknowledged"))
    deadline = time.monotonic() + timeout
    while len(dev.events("telemetry_acknowledged")) < sent + 2:
        assert time.monotonic() < deadline and dev.alive(), "telemetry stopped:\n" + dev.output[-4000:]
        time.sleep(0.1)


def _check_fates(fates, small_heap):
    if not small_heap:
        assert fates == {kind: ["delivered"] * 3 for kind in fates}, fates
        return
    # The small messages are always handled; the near-limit ones cannot be, each its own way.
    assert fates["c2d"][0] == fates["desired"][0] == fates["method"][0] == "delivered", fates
    assert fates["c2d"][2] == "acknowledged" and fates["desired"][2] == "skipped", fates
    assert fates["method"][2] == "answered_413", fates


@pytest.mark.parametrize("heap", ["default", "small"])
def test_messages_of_every_size_class_keep_the_connection_and_telemetry(emulator, device, heap):
    key = new_key()
    emu = emulator(enrollment_doc([individual("big-dev", key)]), *FAST)
    service = ServiceClient.from_state_dir(emu.state_dir)
    # A desired section of 30 KB before the device connects: its twin GET answer is that large.
    service.set_desired("big-dev", {"blob": "t" * (30 * KB - 60)})
    dev_folder = device(emu, "big-dev", key, telemetry_count=0, telemetry_interval_s=1)
    small_heap = heap == "small"
    dev = RunningDevice(dev_folder, heapsize=SMALL_HEAP[dev_folder.runtime] if small_heap else None)
    try:
        dev.wait("hub_ready")
        if small_heap:
            (twin,) = dev.wait("cloud_message_too_large", where=lambda f: f["topic"].startswith("$iothub/twin/res/200"))
            assert twin["action"] == "skipped"
        _wait_reported(service, "big-dev", lambda r: "azprov" in r)
        _telemetry_goes_on(dev)
        fates = _exercise(service, dev, "big-dev", 1)
        print("fates", dev_folder.runtime, heap, fates)
        _check_fates(fates, small_heap)
        _telemetry_goes_on(dev)
        assert len(dev.events("gateway_verified")) == 1, dev.output[-4000:]
        assert not dev.events("retry_scheduled")
    finally:
        output = dev.stop()
    assert "Traceback" not in output, output
    records = _hub_records(emu)
    # Every C2D message was acknowledged once, held or not: none comes back.
    assert len([r for r in records if r["event"] == "c2d_completed"]) == len(C2D_SIZES)
    assert len([r for r in records if r["event"] == "c2d_sent"]) == len(C2D_SIZES)


@pytest.mark.parametrize("heap", ["default", "small"])
def test_messages_of_every_size_class_on_the_board_path_across_a_reconnect(board_device, heap):  # noqa: F811
    board = board_device("big-board", telemetry_interval_s=1)  # 0 would leave no time between messages to serve
    emu = board_device.state["emu"]
    runtime = board_device.state["dev"].runtime
    small_heap = heap == "small"
    if small_heap:
        board.heapsize = SMALL_HEAP[runtime]
    service = ServiceClient.from_state_dir(emu.state_dir)
    board.alive = lambda: board.status is None
    with board:
        board.wait_for("hub_ready")
        board.wait_for("telemetry_acknowledged", 2)
        # Dropped with a 60 KB C2D message and a 30 KB desired section waiting: both come with the reconnect.
        assert service.drop_connection("big-board")
        mid = service.send_c2d("big-board", b"c" * (60 * KB), {"round": "offline"})
        service.set_desired("big-board", {"blob": "t" * (30 * KB - 60)})
        board.wait_for("hub_ready", 2)
        fate, _ = _fate(board, "c2d_received", lambda f: mid in (f.get("mid"), _mid(f)))
        assert fate == ("acknowledged" if small_heap else "delivered")
        fates = _exercise(service, board, "big-board", 2)
        _check_fates(fates, small_heap)
        _telemetry_goes_on(board)
        assert len(board.events("gateway_verified")) == 2, board.output[-4000:]
        assert board.status is None and not board.resets
        assert "Traceback" not in board.output  # before the stop's KeyboardInterrupt
    records = _hub_records(emu)
    assert len([r for r in records if r["event"] == "c2d_completed"]) == len(C2D_SIZES) + 1
