# The supervisor (azprov.supervisor) with a fake clock, a fake machine and scripted steps: where it starts again after
# each failure, what it waits (time passes only in the fake clock: every test runs in milliseconds), when it registers
# again, resets or deep-sleeps, and the stop rule of each kind of run.
import json

from shell_fakes import FakeClock

from azprov import errors, supervisor, watchdog
from azprov.errors import ProvisioningError

CONFIG = {
    "retry_base_ms": 1000,
    "retry_max_s": 60,
    "reset_after_failures": 0,
    "retry_deep_sleep": False,
    "max_gateway_failures": 3,
    "registration_timeout_s": 120,
    "watchdog_timeout_s": 0,
    "telemetry_count": 2,
    "telemetry_interval_s": 0,
}


class Stop(Exception):
    pass


class FakeMachine:
    PWRON_RESET = 1
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


class FakeLink:
    def __init__(self):
        self.up = True

    def connected(self):
        return self.up

    def check(self):
        if not self.up:
            raise ProvisioningError(errors.NETWORK, "link lost")

    def clock_due(self):
        return False


class FakeGateway:
    def __init__(self):
        self.connected = False
        self.closed = False

    def drop(self):
        self.connected = False

    def close(self):
        self.connected = False
        self.closed = True


class HeldDps:
    """A Provisioner as the supervisor sees it between attempts: a DPS connection held after the service answered
    429/5xx, pinged every 30 s of quiet (half its keepalive), closed on request."""

    def __init__(self, clock):
        self.clock = clock
        self.connection = "held"
        self.quiet_since = clock.now
        self.pings = []
        self.closed = 0

    def ms_to_ping(self):
        return max(0, 30000 - (self.clock.now - self.quiet_since))

    def keep_alive(self):
        self.pings.append(self.clock.now)
        self.quiet_since = self.clock.now

    def close(self):
        if self.connection is not None:
            self.closed += 1
        self.connection = None


class Scripted(supervisor.Supervisor):
    """The supervisor with each step's outcomes scripted: `script[step]` is a list of None (success) or exceptions,
    taken in turn (success once the list is empty)."""

    gateway_class = FakeGateway

    def __init__(self, script, stop=supervisor.BOARD, config=None, machine=None, clock=None):
        self.script = script
        self.ran = []
        self.registrations = 0
        settings = dict(CONFIG)
        settings.update(config or {})
        self.settings = settings
        supervisor.Supervisor.__init__(self, "p.json", stop, clock or FakeClock(), machine or FakeMachine())

    def _outcome(self, name):
        self.ran.append(name)
        outcomes = self.script.get(name) or []
        if outcomes:
            outcome = outcomes.pop(0)
            if outcome is not None:
                raise outcome

    def _config(self):
        self._outcome("config")
        self.config = self.settings
        self.link = FakeLink()

    def _link(self):
        self._outcome("link")

    def _clock(self):
        self._outcome("clock")

    def _provision(self):
        if self.state is not None and not self.reregister:
            return
        if self.provisioner is None:
            self.provisioner = self.dps = HeldDps(self.clock)
        try:
            self._outcome("provision")
        except ProvisioningError as exc:
            if exc.status is None or not exc.transient:
                self.provisioner.connection = None  # as the real Provisioner: held only after DPS answered 429/5xx
            raise
        self.provisioner = None
        self.registrations += 1
        self.state = {"assignment": {}}
        self.fresh = self.registrations > 1 or self.script.get("cached") is None
        self.reregister = False
        self._close_gateway()

    def trust_gateway(self):
        if self.gateway is None:
            self.gateway = self.gateway_class()

    def _connect(self):
        if self.gateway is None:
            self.gateway = self.gateway_class()
        self._outcome("connect")
        self.gateway.connected = True


def _error(kind, **extra):
    return ProvisioningError(kind, kind, **extra)


def _network():
    return _error(errors.NETWORK)


def test_restarts_from_the_failed_step_after_a_backoff():
    sup = Scripted({"provision": [_network(), _network()]})
    assert sup.ready()
    assert sup.ran == ["config", "link", "clock", "provision", "provision", "provision", "connect"]
    assert sup.clock.sleeps == [750, 1500]


def test_retry_after_from_the_service_is_waited():
    # A 503's 20 s, plus the first backoff step's jittered share (0.75 s); a 429's 20 s, plus the throttled spread
    # (half of its window: half of the 79.25 s left of the budget after 20.75 s waited and 20 s asked for); 600 s is
    # cut to retry_max_s.
    sup = Scripted(
        {
            "provision": [
                _error(errors.SERVICE_UNAVAILABLE, retry_after=20),
                _error(errors.THROTTLED, retry_after=20),
                _error(errors.THROTTLED, retry_after=600),
            ]
        }
    )
    assert sup.ready()
    assert sup.clock.sleeps == [20750, 39812, 60000]


def test_a_dps_connection_held_across_a_long_wait_is_kept_alive():
    # 50 s asked for by a 503: the held connection is pinged once its 30 s of quiet are up, and the wait goes on.
    sup = Scripted({"provision": [_error(errors.SERVICE_UNAVAILABLE, status=503, retry_after=50)]})
    assert sup.ready()
    assert sup.clock.sleeps == [30000, 20750] and sup.dps.pings == [30000] and not sup.dps.closed
    # Once the server has let it go (keep_alive dropped it), the rest of the wait is one sleep.
    sup = Scripted({"provision": [_error(errors.SERVICE_UNAVAILABLE, status=503, retry_after=50)]})
    sup.ready(0)
    sup.dps.connection = None
    assert sup.ready() and sup.clock.sleeps == [50750]


def test_the_held_dps_connection_is_closed_when_the_device_leaves_the_step_or_stops():
    def provisioned(**options):
        sup = Scripted({}, **options)
        sup.ready()
        sup.provisioner = held = HeldDps(sup.clock)
        return sup, held

    # Another 503 on the same registration keeps it for the next attempt.
    sup, held = provisioned()
    sup.failed(_error(errors.SERVICE_UNAVAILABLE, status=503), "provision")
    assert not held.closed and sup.index == supervisor.STEPS.index("provision")
    # The Wi-Fi is down: the device goes back to the link.
    sup, held = provisioned()
    sup.link.up = False
    sup.failed(_network(), "provision")
    assert sup.index == supervisor.STEPS.index("link") and held.closed == 1
    # A board about to reset.
    sup, held = provisioned(config={"reset_after_failures": 1})
    sup.failed(_error(errors.SERVICE_UNAVAILABLE, status=503), "provision")
    assert held.closed == 1
    # A one-shot run past its budget hands the error over with the connection closed.
    sup, held = provisioned(stop=supervisor.ONE_SHOT)
    sup.clock.now = 200000
    try:
        sup.failed(_error(errors.THROTTLED, status=429, retry_after=1), "provision")
    except ProvisioningError:
        pass
    else:
        raise AssertionError("a one-shot run went on past its budget")
    assert held.closed == 1
    # The end of a run.
    sup, held = provisioned()
    sup.close()
    assert held.closed == 1


def test_errors_that_need_a_person_wait_at_the_cap_on_a_board():
    sup = Scripted({"provision": [_error(errors.DISABLED), _error(errors.NOT_FOUND)]})
    assert sup.ready()
    assert sup.clock.sleeps == [60000, 60000]


def test_one_shot_stops_at_the_first_failure_that_needs_a_person():
    sup = Scripted({"provision": [_network(), _error(errors.AUTHENTICATION, status=401)]}, stop=supervisor.ONE_SHOT)
    try:
        sup.ready()
    except ProvisioningError as exc:
        assert exc.kind == errors.AUTHENTICATION and exc.status == 401
    else:
        raise AssertionError("a one-shot run went on after an authentication failure")
    assert sup.clock.sleeps == [750]


def test_one_shot_stops_once_failures_outlast_the_registration_timeout():
    sup = Scripted({"provision": [_network()] * 50}, stop=supervisor.ONE_SHOT, config={"registration_timeout_s": 10})
    try:
        sup.ready()
    except ProvisioningError as exc:
        assert exc.kind == errors.NETWORK
    else:
        raise AssertionError("no stop")
    # Waits of 0.75, 1.5 and 3 s; the next (6 s) would start past the 10 s budget: the run stops at 5.25 s.
    assert sup.clock.now == 5250, sup.clock.now
    # The application's rule has no budget: transient failures are retried for as long as they last.
    sup = Scripted({"provision": [_network()] * 12}, stop=supervisor.APPLICATION, config={"registration_timeout_s": 10})
    assert sup.ready() and sup.clock.now > 10000


def test_an_operation_is_retried_until_it_succeeds():
    sup = Scripted({})
    results = [_network(), _error(errors.TIMEOUT), "sent"]

    def op():
        outcome = results.pop(0)
        if isinstance(outcome, Exception):
            sup.gateway.connected = False
            raise outcome
        return outcome

    assert sup.attempt(op) == "sent"
    assert sup.ran.count("connect") == 3 and sup.clock.sleeps == [750, 1500]


def test_useful_work_starts_the_failure_count_again():
    # No max_gateway_failures: a re-registration would cut the wait to the first step whatever the count.
    sup = Scripted({}, config={"max_gateway_failures": 0})
    outcomes = [_network(), _network(), _network(), None, _network(), None]

    def op():
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome

    sup.attempt(op)  # three failures, then success
    sup.attempt(op)  # one failure after the success: the first step of the backoff again
    assert sup.clock.sleeps == [750, 1500, 3000, 750]
    assert sup.failures == sup.boot_failures == sup.gateway_failures == 0


def test_a_refused_cached_assignment_registers_again():
    sup = Scripted({"cached": True, "connect": [_error(errors.AUTHENTICATION)]})
    sup.fresh = False
    assert sup.ready()
    assert sup.registrations == 2 and sup.ran.count("connect") == 2


def test_a_fresh_assignment_refused_is_tried_once_more_then_registered_again():
    refusal = _error(errors.TLS_VERIFICATION)
    sup = Scripted({"connect": [refusal, _error(errors.TLS_VERIFICATION)]})
    assert sup.ready()
    assert sup.registrations == 2 and sup.ran.count("connect") == 3


def test_max_gateway_failures_registers_again():
    sup = Scripted({})
    failures = [_network()] * 3

    def op():
        if failures:
            sup.gateway.connected = False
            raise failures.pop(0)

    sup.attempt(op)
    assert sup.registrations == 2


def test_board_reset_after_consecutive_failures_with_the_backoff_carried_over():
    machine = FakeMachine()
    sup = Scripted({"provision": [_network()] * 5}, config={"reset_after_failures": 3}, machine=machine)
    try:
        sup.ready()
    except Stop:
        pass
    else:
        raise AssertionError("the board was not reset")
    assert machine.calls == ["reset"]
    assert len(sup.clock.sleeps) == 3  # the last wait is still waited before the reset
    assert json.loads(machine.rtc) == {"m": "azprov1", "f": 3}
    # After the reset the backoff goes on from the fourth step, and the board does not reset again at once.
    woken = Scripted({"provision": [_network()]}, config={"reset_after_failures": 3}, machine=machine)
    assert woken.ready()
    assert woken.clock.sleeps == [6000]


def test_deep_sleep_instead_of_waiting():
    machine = FakeMachine()
    sup = Scripted({"link": [_network()]}, config={"retry_deep_sleep": True}, machine=machine)
    try:
        sup.ready()
    except Stop:
        pass
    assert machine.calls == [("deepsleep", 750)] and not sup.clock.sleeps
    assert supervisor.reset_cause(FakeMachine(cause=FakeMachine.DEEPSLEEP_RESET)) == "deep_sleep"


def test_a_dropped_link_sends_the_device_back_to_it():
    sup = Scripted({})
    sup.ready()
    del sup.ran[:]
    sup.link.up = False
    sup.failed(_network(), "serve")
    sup.link.up = True
    assert sup.ready()
    assert sup.ran == ["link", "clock", "connect"]


def test_a_bug_or_a_full_heap_is_retried_like_any_failure():
    import gc

    failures = [TypeError("bug")] + ([MemoryError()] if hasattr(gc, "mem_free") else [])  # MicroPython's gc
    sup = Scripted({"clock": list(failures)})
    assert sup.ready() and sup.ran.count("clock") == len(failures) + 1


class _HubCode:
    """Stands in for azprov.client and azprov.default_app in sys.modules: the first `failures` imports of Client find
    a heap too small for it (MemoryError), the next ones get a class that only records what it was made with."""

    def __init__(self, failures):
        self.failures = failures

    def __getattr__(self, name):
        if self.failures:
            self.failures -= 1
            raise MemoryError()
        return lambda arg: (name, arg)


def _default_app_with(sup, client, default_app):
    """supervisor.default_app(sup) with `client` and `default_app` standing in for the hub code's modules."""
    import sys

    names = ("azprov.client", "azprov.default_app")
    saved = {name: sys.modules.get(name) for name in names}
    sys.modules["azprov.client"] = client
    sys.modules["azprov.default_app"] = default_app
    try:
        return supervisor.default_app(sup)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def test_a_heap_too_small_for_the_hub_code_is_a_fault_of_the_connect_step():
    import gc

    if not hasattr(gc, "mem_free"):
        return  # MicroPython's (the classified error names the free heap): runs in tests/test_device_suite.py

    sup = Scripted({})
    started = sup.clock.now
    app = _default_app_with(sup, _HubCode(2), _HubCode(0))
    assert app == ("DefaultApp", ("Client", sup))
    # Judged by the policy as failures of the connect step, each waited out (a backoff), without registering again.
    assert sup.failures == 2 and sup.index == supervisor.STEPS.index("connect"), (sup.failures, sup.index)
    assert sup.clock.now - started >= CONFIG["retry_base_ms"] and sup.registrations == 1, (sup.clock.sleeps, sup.ran)


class _Recorded(_HubCode):
    """Hub code that notes in `order` when it is loaded."""

    def __init__(self, order):
        _HubCode.__init__(self, 0)
        self.order = order

    def __getattr__(self, name):
        self.order.append(name)
        return _HubCode.__getattr__(self, name)


class _TrustRefusedOnce(Scripted):
    """The gateway's trust is loaded into its TLS context ahead of the connect step; the first time the TLS stack
    refuses the stored bundle."""

    def __init__(self, order):
        self.order = order
        self.refusals = 1
        Scripted.__init__(self, {})

    def trust_gateway(self):
        self.order.append("trust")
        if self.refusals:
            self.refusals -= 1
            raise ProvisioningError(errors.STORAGE, "trust_bundle.pem: certificate 1 cannot be loaded: invalid cert")
        Scripted.trust_gateway(self)


def test_the_gateway_trust_is_loaded_before_the_hub_code_and_a_refusal_is_a_fault_of_the_connect_step():
    # Its roots are the largest blocks the device makes: loaded while the heap the DPS leg left still has holes that
    # size, before the hub code's objects take them. A bundle the TLS stack refuses there is judged as the connect
    # step's fault would be (by the policy, with its backoff), not a traceback that ends main.py.
    order = []
    sup = _TrustRefusedOnce(order)
    app = _default_app_with(sup, _Recorded(order), _Recorded(order))
    assert app == ("DefaultApp", ("Client", sup))
    loaded = [name for name in order if name in ("trust", "Client", "DefaultApp")]  # CPython's import asks for more
    assert loaded[:2] == ["trust", "trust"] and set(loaded[2:]) == {"Client", "DefaultApp"}, order
    assert sup.failures == 1 and sup.clock.sleeps, (sup.failures, sup.clock.sleeps)


def test_poll_budget_does_not_wait_past_it():
    sup = Scripted({"connect": [_network()]})
    assert not sup.ready(100)  # the retry is due in 750 ms
    assert sup.clock.now == 100
    assert sup.ready()


def test_the_watchdog_is_started_once():
    calls = []
    saved = watchdog.start
    watchdog.start = calls.append
    try:
        sup = Scripted({"provision": [_network(), _network()]}, config={"watchdog_timeout_s": 30})
        sup.ready()
    finally:
        watchdog.start = saved
    assert calls == [30]


class _Enough(BaseException):
    # Not an Exception: the supervisor retries those.
    pass


class _App:
    """The application run() drives: records each message's sequence; `stop_after` messages end the test."""

    interval_s = 0

    def __init__(self, stop_after=None):
        self.sent = []
        self.waits = []
        self.stop_after = stop_after

    def before_send(self):
        pass

    def send(self, payload):
        self.sent.append(json.loads(payload)["sequence"])
        if self.stop_after is not None and len(self.sent) >= self.stop_after:
            raise _Enough()

    def wait(self, ms):
        self.waits.append(ms)


class _RunGateway(FakeGateway):
    device_id = "d"
    connections = 1
    renewals = 0

    def renew_if_due(self):
        return False


class _Store:
    writes = 0


def _run(sup, app):
    sup.gateway_class = _RunGateway
    sup.store = _Store()
    saved = supervisor.telemetry_payload
    # CPython has no gc.mem_free
    supervisor.telemetry_payload = lambda cfg, sequence: json.dumps({"sequence": sequence})
    try:
        return sup.run(app)
    finally:
        supervisor.telemetry_payload = saved


def test_run_sends_the_count_and_counts_the_sequence():
    app = _App()
    assert _run(Scripted({}), app) == 0
    assert app.sent == [0, 1]
    # A zero interval still serves the handlers once between messages.
    assert app.waits == [0]


def test_a_board_given_no_telemetry_count_keeps_sending():
    app = _App(stop_after=5)
    try:
        _run(Scripted({}, config={"telemetry_count": None}), app)
    except _Enough:
        pass
    else:
        raise AssertionError("a board without telemetry_count stopped after %d messages" % len(app.sent))
    assert app.sent == [0, 1, 2, 3, 4]
    # A one-shot run given the same file sends one message.
    app = _App()
    assert _run(Scripted({}, stop=supervisor.ONE_SHOT, config={"telemetry_count": None}), app) == 0
    assert app.sent == [0]


def test_selected_by_default_on_boards_only():
    assert supervisor.selected({"run_loop": None}, "esp32") and not supervisor.selected({"run_loop": None}, "linux")
    assert supervisor.selected({"run_loop": True}, "linux") and not supervisor.selected({"run_loop": False}, "esp32")
    assert supervisor.selected(None, "esp32") and not supervisor.selected(None, "linux")
