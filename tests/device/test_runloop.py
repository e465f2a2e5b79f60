# The run loop's decisions with a scripted flow and a stand-in machine: backoff, waits at the cap, where it starts
# again, board resets, deep sleep and the backoff carried through RTC memory; the watchdog feeds.
import sys

from azprov import errors, runloop, watchdog
from azprov.errors import ProvisioningError

CONFIG = {
    "retry_base_ms": 1000,
    "retry_max_s": 60,
    "reset_after_failures": 0,
    "retry_deep_sleep": False,
    "watchdog_timeout_s": 0,
}


class Stop(Exception):
    pass


class ScriptedFlow:
    """Steps a, b, c; `script` maps a step to the outcomes of its successive runs (None: success, an exception: raised,
    "progress": success that counts as useful work). The flow is complete when c has run through its script."""

    steps = ("a", "b", "c")

    def __init__(self, script, config=None, restart=None):
        self.script = script
        self.config = dict(CONFIG, **(config or {}))
        self.restart = restart or {}
        self.acknowledged = 0
        self.ran = []

    def run_step(self, name):
        # Step c plays the telemetry step: it goes on until its script runs out (complete) or an outcome fails.
        self.ran.append(name)
        outcomes = self.script.get(name) or []
        while True:
            outcome = outcomes.pop(0) if outcomes else None
            if outcome == "progress":
                self.acknowledged += 1
                outcome = None
            if outcome is not None:
                raise outcome
            if name != "c" or not outcomes:
                return name == "c"

    def recover(self, exc, name):
        return self.restart.get(name, name)


class Machine:
    SOFT_RESET = 5
    DEEPSLEEP_RESET = 4

    def __init__(self, cause=1, memory=b""):
        self.cause = cause
        self.rtc = memory
        self.calls = []

    def reset_cause(self):
        return self.cause

    def reset(self):
        self.calls.append("reset")
        raise Stop()

    def deepsleep(self, ms):
        self.calls.append(("deepsleep", ms))
        raise Stop()

    def RTC(self):
        machine = self

        class _Rtc:
            def memory(self, data=None):
                if data is None:
                    return machine.rtc
                machine.rtc = data

        return _Rtc()


_waits = []
_saved = {}


def setup(function=None):
    del _waits[:]
    _saved["sleep_ms"] = watchdog.sleep_ms
    watchdog.sleep_ms = _waits.append


def teardown(function=None):
    watchdog.sleep_ms = _saved["sleep_ms"]


# The device runner calls setup()/teardown(); pytest (CPython) calls these names.
setup_function = setup
teardown_function = teardown


def _half():
    return 0.5


def _network(message="down"):
    return ProvisioningError(errors.NETWORK, message)


def test_backoff_doubles_with_jitter_up_to_the_cap():
    assert [runloop.backoff_ms(n, 1000, 60, lambda: 0.0) for n in (1, 2, 3, 4)] == [500, 1000, 2000, 4000]
    assert [runloop.backoff_ms(n, 1000, 60, lambda: 0.999) for n in (1, 2)] == [999, 1999]
    assert runloop.backoff_ms(30, 1000, 60, lambda: 0.999) <= 60000
    assert runloop.backoff_ms(30, 1000, 60, lambda: 0.0) == 30000


def test_restarts_from_the_failed_step_after_a_backoff():
    flow = ScriptedFlow({"b": [_network(), _network(), None], "c": [None]})
    assert runloop.RunLoop(flow, machine=Machine(), random=_half).run() == 0
    assert flow.ran == ["a", "b", "b", "b", "c"]
    assert _waits == [750, 1500]


def test_recover_names_the_step_to_start_again_from():
    flow = ScriptedFlow({"c": [_network(), None]}, restart={"c": "a"})
    runloop.RunLoop(flow, machine=Machine(), random=_half).run()
    assert flow.ran == ["a", "b", "c", "a", "b", "c"]


def test_errors_no_retry_can_fix_wait_at_the_cap():
    for kind in (errors.CONFIGURATION, errors.DISABLED, errors.ASSIGNMENT_FAILED):
        del _waits[:]
        flow = ScriptedFlow({"a": [ProvisioningError(kind, "x"), None], "c": [None]})
        runloop.RunLoop(flow, machine=Machine(), random=_half).run()
        assert _waits == [60000], kind


def test_retry_after_is_honoured_within_the_cap():
    throttled = ProvisioningError(errors.THROTTLED, "429", retry_after=20)
    flow = ScriptedFlow({"a": [throttled, ProvisioningError(errors.THROTTLED, "429", retry_after=600)], "c": [None]})
    runloop.RunLoop(flow, machine=Machine(), random=_half).run()
    assert _waits == [20000, 60000]


def test_unexpected_exceptions_and_memory_errors_are_retried():
    import gc

    failures = [TypeError("bug")] + ([MemoryError()] if hasattr(gc, "mem_free") else [])  # MicroPython's gc
    flow = ScriptedFlow({"a": list(failures), "c": [None]})
    assert runloop.RunLoop(flow, machine=Machine(), random=_half).run() == 0
    assert flow.ran[: len(failures) + 1] == ["a"] * (len(failures) + 1) and len(_waits) == len(failures)


def test_board_reset_after_consecutive_failures_unless_progress_was_made():
    machine = Machine()
    # Progress (an acknowledged message) in between starts a new count: 2 + 2 failures do not reach 3.
    flow = ScriptedFlow(
        {"c": [_network(), _network(), "progress", _network(), _network(), _network()]},
        config={"reset_after_failures": 3},
    )
    try:
        runloop.RunLoop(flow, machine=machine, random=_half).run()
    except Stop:
        pass
    else:
        raise AssertionError("the board was not reset")
    assert machine.calls == ["reset"]
    assert len(_waits) == 5  # the last wait is still waited before the reset
    # The backoff (3 failures since the progress) carries on after the reset.
    assert machine.rtc.replace(b" ", b"") == b'{"m":"azprov1","f":3}'


def test_deep_sleep_instead_of_waiting_and_backoff_carried_over():
    machine = Machine()
    flow = ScriptedFlow({"a": [_network()]}, config={"retry_deep_sleep": True})
    try:
        runloop.RunLoop(flow, machine=machine, random=_half).run()
    except Stop:
        pass
    assert machine.calls == [("deepsleep", 750)] and not _waits
    # The chip wakes through a reset: the next boot's first wait is the second step of the backoff.
    woken = Machine(cause=Machine.DEEPSLEEP_RESET, memory=machine.rtc)
    flow = ScriptedFlow({"a": [_network()]}, config={"retry_deep_sleep": True})
    loop = runloop.RunLoop(flow, machine=woken, random=_half)
    try:
        loop.run()
    except Stop:
        pass
    assert woken.calls == [("deepsleep", 1500)]
    assert runloop.reset_cause(woken) == "deep_sleep"


def test_selected_by_default_on_boards_only():
    assert runloop.selected({"run_loop": None}, "esp32") and not runloop.selected({"run_loop": None}, "linux")
    assert runloop.selected({"run_loop": True}, "linux") and not runloop.selected({"run_loop": False}, "esp32")
    assert runloop.selected(None, "esp32") and not runloop.selected(None, "linux")


class _Wdt:
    feeds = 0

    def __init__(self, id=0, timeout=0):
        _Wdt.timeout = timeout

    def feed(self):
        _Wdt.feeds += 1


class _WdtMachine:
    WDT = _Wdt


def test_watchdog_started_with_the_configured_timeout_and_fed_through_waits():
    import time

    if watchdog.running():
        raise AssertionError("a real watchdog runs in this process")
    saved = sys.modules.get("machine")
    sys.modules["machine"] = _WdtMachine  # never the board's own: a started hardware watchdog cannot be stopped
    try:
        assert watchdog.start(25)
        assert _Wdt.timeout == 25000
        if hasattr(time, "ticks_add"):  # MicroPython
            _saved["sleep_ms"](2500)  # the real sleep_ms: fed at least once a second
            assert _Wdt.feeds >= 3
        else:
            watchdog.feed()
            assert _Wdt.feeds == 1
    finally:
        watchdog._wdt[0] = None
        if saved is None:
            del sys.modules["machine"]
        else:
            sys.modules["machine"] = saved
