"""The fault matrix through the run loop (azprov/runloop.py), on the Unix port against the emulator, with the board's
`machine`, `network`, `ntptime`, `time` and `socket` replaced by stand-ins (tests/standins/) and the hardware played
by tests/runloop_board.py: DPS unreachable at boot, a gateway refusing connections, Wi-Fi gone, an unset clock set by
NTP, a hang only the watchdog ends. Each ends with telemetry acknowledged and no registration that was not needed."""

from __future__ import annotations

import json
import time

import pytest

from tests.helpers import enrollment_doc, individual, new_key
from tests.runloop_board import Board, Gate, install_standins

FAST = ("--fault", "retry_after=0")
# Quick retries for tests; the watchdog at its shortest allowed timeout.
RUN_LOOP = {
    "run_loop": True,
    "retry_base_ms": 200,
    "retry_max_s": 2,
    "reset_after_failures": 0,
    "watchdog_timeout_s": 20,
    "telemetry_interval_s": 0,
}
WIFI = {"ssid": "lab-net", "password": "correct horse battery"}


def _registrations(emu) -> int:
    return len([r for r in emu.registrations() if r.get("status") == "assigned"])


def _sequences(emu, device_id: str) -> list[int]:
    return [json.loads(r["payload"])["sequence"] for r in emu.telemetry() if r["device_id"] == device_id]


@pytest.fixture
def board_device(emulator, device):
    """make_board(registration_id, provisioned=True, faults=None, **fields) -> Board, not started. With `provisioned`
    the device has registered once (a one-shot run), so it boots from its cached assignment; `faults` are emulator
    faults set after that."""
    key = new_key()
    state = {}

    def make(registration_id: str, provisioned: bool = True, faults=None, **fields) -> Board:
        doc = enrollment_doc([individual(registration_id, key)])
        emu = emulator(doc, *FAST)
        dev = device(emu, registration_id, key)
        if provisioned:
            first = dev.run()
            assert first.status == 0, first.output
        if faults:  # file-level faults: the running emulator applies them from now on
            emu.update_enrollments(dict(doc, faults=faults))
        dev.write_provisioning(**{**RUN_LOOP, **fields})
        install_standins(dev.root)
        state.update(emu=emu, dev=dev)
        return Board(dev.root)

    make.state = state
    return make


def test_dps_unreachable_at_boot_then_back(board_device):
    board = board_device("dps-outage", provisioned=False)
    emu, dev = board_device.state["emu"], board_device.state["dev"]
    gate = Gate(emu.info["dps"]["port"])  # closed: nothing listens on the DPS port the device dials
    dev.write_provisioning(dps_port=gate.port, telemetry_count=2)
    with board:
        # Each attempt is the DPS leg's own reconnects (about 12 s), then the run loop's backoff.
        retries = board.wait_for("retry_scheduled", 2, where=lambda e: e["step"] == "provision")
        assert all(r["reason"] == "network" for r in retries)
        # Exponential backoff: each wait's window doubles (a random half of it is waited), capped at retry_max_s.
        assert all(0.0 <= float(r["in_s"]) <= 2.0 for r in retries)
        gate.open()
        assert board.wait_done(timeout=90) == 0
    gate.close()
    assert len(board.events("registered")) == 1
    assert _registrations(emu) == 1
    assert _sequences(emu, "dps-outage") == [0, 1]


def test_board_reset_after_consecutive_failures_carries_the_backoff(board_device):
    board = board_device("reset-dev", provisioned=False)
    emu, dev = board_device.state["emu"], board_device.state["dev"]
    gate = Gate(emu.info["dps"]["port"])
    dev.write_provisioning(dps_port=gate.port, telemetry_count=1, reset_after_failures=2)
    with board:
        board.wait_for("board_reset")
        started = board.wait_for("run_loop_started", 2)
        assert started[1]["reset_cause"] == "soft" and started[1]["carried_failures"] == "2"
        gate.open()
        assert board.wait_done(timeout=90) == 0
    gate.close()
    assert board.resets[:1] == ["reset"]
    assert _registrations(emu) == 1 and _sequences(emu, "reset-dev") == [0]


def test_gateway_refusing_connections_for_a_while(board_device):
    # Fewer failures than max_gateway_failures: the outage is ridden out on the cached assignment.
    board = board_device(
        "gw-outage", faults={"gateway_refuse": {"code": 3, "count": 4}}, telemetry_count=3, max_gateway_failures=5
    )
    emu = board_device.state["emu"]
    with board:
        assert board.wait_done(timeout=90) == 0
    retries = board.events("retry_scheduled")
    assert len(retries) == 4 and {r["step"] for r in retries} == {"connect"}
    assert {r["reason"] for r in retries} == {"service_unavailable"}
    assert board.events("using_cached_assignment") and not board.events("registered")
    assert _registrations(emu) == 1  # the first, one-shot boot's
    assert _sequences(emu, "gw-outage")[-3:] == [0, 1, 2]


def test_max_gateway_failures_registers_again_on_a_board(board_device):
    board = board_device("gw-moved", faults={"gateway_refuse": {"code": 3, "count": 3}}, telemetry_count=1)
    board_device.state["dev"].write_provisioning(max_gateway_failures=2)
    emu = board_device.state["emu"]
    with board:
        assert board.wait_done(timeout=90) == 0
    again = board.events("reprovisioning")
    assert len(again) == 1 and again[0]["reason"] == "service_unavailable" and again[0]["failures"] == "2"
    assert board.events("using_cached_assignment") and board.events("registered")
    assert _registrations(emu) == 2
    assert _sequences(emu, "gw-moved")[-1:] == [0]


def test_deep_sleep_between_attempts(board_device):
    board = board_device(
        "sleepy",
        faults={"gateway_refuse": {"code": 3, "count": 2}},
        telemetry_count=1,
        retry_deep_sleep=True,
    )
    emu = board_device.state["emu"]
    with board:
        assert board.wait_done(timeout=90) == 0
    assert board.resets == ["deep_sleep", "deep_sleep"]
    started = board.events("run_loop_started")
    assert [s["reset_cause"] for s in started] == ["power_on", "deep_sleep", "deep_sleep"]
    assert [s["carried_failures"] for s in started] == ["0", "1", "2"]
    assert all(r["action"] == "deep_sleep" for r in board.events("retry_scheduled"))
    assert not board.events("registered") and _registrations(emu) == 1


def test_wifi_gone_for_a_while(board_device):
    board = board_device("wifi-dev", wifi=WIFI, telemetry_count=6, telemetry_interval_s=1)
    emu = board_device.state["emu"]
    with board:
        board.wait_for("telemetry_acknowledged", 2)
        board.control(wifi_up=False)
        board.wait_for("wifi_lost")
        board.wait_for("retry_scheduled", 2, where=lambda e: e["step"] == "link")
        board.control(wifi_up=True)
        assert board.wait_done(timeout=90) == 0
    joins = board.events("wifi_connected")
    assert [j["joins"] for j in joins] == ["1", "2"]
    synced = board.events("clock_synced")
    assert [s["reason"] for s in synced] == ["boot", "rejoin"]  # NTP again after the re-join
    assert board.events("retry_scheduled")[0]["reason"] == "network"
    assert not board.events("registered") and _registrations(emu) == 1
    assert _sequences(emu, "wifi-dev")[-6:] == [0, 1, 2, 3, 4, 5]
    assert WIFI["password"] not in board.output


def test_clock_unset_then_set_by_ntp(board_device):
    board = board_device("clockless", wifi=WIFI, telemetry_count=1)
    emu = board_device.state["emu"]
    board.control(clock_unset=True, ntp_up=False)
    with board:
        retries = board.wait_for("retry_scheduled", 2, where=lambda e: e["step"] == "clock")
        assert {r["reason"] for r in retries} == {"clock"}
        assert "at" not in retries[0]  # no wall-clock time to name while the clock is unset
        board.control(ntp_up=True)
        assert board.wait_done(timeout=90) == 0
    assert board.events("clock_synced")[0]["reason"] == "boot"
    assert not board.events("gateway_verified")[:0]
    assert not board.events("registered") and _registrations(emu) == 1
    assert _sequences(emu, "clockless")[-1:] == [0]


def test_watchdog_resets_a_hang_in_the_socket_layer(board_device):
    board = board_device("hung-dev", telemetry_count=2)
    emu = board_device.state["emu"]
    board.arm("standin_hang_socket")  # the next name lookup never returns, whatever the timeouts say
    started = time.monotonic()
    with board:
        assert board.wait_done(timeout=120) == 0
    assert board.resets == ["watchdog"]
    assert "STANDIN socket.getaddrinfo hangs" in board.output
    assert time.monotonic() - started >= 20  # the watchdog's timeout, not an I/O timeout, ended the hang
    assert [s["reset_cause"] for s in board.events("run_loop_started")] == ["power_on", "watchdog"]
    assert not board.events("registered") and _registrations(emu) == 1
    assert _sequences(emu, "hung-dev")[-2:] == [0, 1]


def test_clock_resynced_once_a_period(board_device):
    # Compressed time (the stand-in clock runs 40 times fast): a 120 s re-sync period passes every 3 s.
    board = board_device("resync-dev", wifi=WIFI, telemetry_count=7, telemetry_interval_s=1, ntp_resync_s=120)
    board.control(time_scale=40)
    with board:
        assert board.wait_done(timeout=90) == 0
    reasons = [s["reason"] for s in board.events("clock_synced")]
    assert reasons[0] == "boot" and "daily" in reasons[1:], reasons
    assert len(board.events("wifi_connected")) == 1 and not board.events("retry_scheduled")


def test_an_error_no_retry_can_fix_waits_at_the_cap(emulator, device):
    # A disabled enrollment needs a person: the device waits the cap (not a growing backoff) between attempts, and
    # registers once someone enables it.
    key = new_key()
    doc = enrollment_doc([individual("off-dev", key, disabled=True)])
    emu = emulator(doc, *FAST)
    dev = device(emu, "off-dev", key)
    dev.write_provisioning(**{**RUN_LOOP, "telemetry_count": 1, "retry_max_s": 3})
    install_standins(dev.root)
    with Board(dev.root) as board:
        retries = board.wait_for("retry_scheduled", 2)
        assert {(r["step"], r["reason"], r["in_s"]) for r in retries} == {("provision", "disabled", "3.0")}
        emu.update_enrollments(enrollment_doc([individual("off-dev", key)]))
        assert board.wait_done(timeout=60) == 0
    assert _registrations(emu) == 1 and _sequences(emu, "off-dev") == [0]


def test_a_board_given_no_telemetry_count_keeps_sending(board_device):
    # The field default: a board never stops on its own (a one-shot Unix run with the same file sends one message).
    board = board_device("no-count")
    emu = board_device.state["emu"]
    with board:
        board.wait_for("telemetry_acknowledged", 3, timeout=60)
        assert board.status is None  # still running after the third message
    assert _sequences(emu, "no-count")[:4] == [0, 0, 1, 2]  # the one-shot run's message, then the loop's
