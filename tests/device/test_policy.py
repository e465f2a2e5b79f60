# The one retry policy (azprov.policy.decide): every wait, restart step, re-registration and reset, from numbers alone.
from azprov import errors, policy

SETTINGS = {
    "retry_base_ms": 1000,
    "retry_max_s": 60,
    "reset_after_failures": 0,
    "retry_deep_sleep": False,
    "max_gateway_failures": 3,
    "registration_timeout_s": 120,
}


def _with(**changes):
    settings = dict(SETTINGS)
    settings.update(changes)
    return settings


def _decide(kind, failures=1, retry_after=None, settings=SETTINGS, random=0.5, elapsed=0, **extra):
    return policy.decide(kind, failures, retry_after, settings, random, elapsed, **extra)


def test_backoff_doubles_with_jitter_up_to_the_cap():
    waits = [_decide(errors.NETWORK, n, random=0.0).wait_ms for n in (1, 2, 3, 4)]
    assert waits == [500, 1000, 2000, 4000]
    assert [_decide(errors.NETWORK, n, random=0.999).wait_ms for n in (1, 2)] == [999, 1999]
    # The window stops at retry_max_s: never more than the cap, half of it at least.
    assert _decide(errors.NETWORK, 30, random=0.999).wait_ms == 59970
    assert _decide(errors.NETWORK, 30, random=0.0).wait_ms == 30000
    assert _decide(errors.NETWORK, 1000, random=0.999).wait_ms <= 60000


def test_jitter_spreads_the_same_failure_over_half_the_window():
    waits = [_decide(errors.SERVICE_UNAVAILABLE, 4, random=r / 10).wait_ms for r in range(10)]
    assert waits == sorted(waits) and waits[0] == 4000 and waits[-1] == 7600
    assert len(set(waits)) == 10


def test_errors_that_need_a_person_wait_at_the_cap_and_are_final():
    for kind in policy.NEEDS_A_PERSON:
        decision = _decide(kind, step="provision")
        assert (decision.wait_ms, decision.restart, decision.final) == (60000, "provision", True), kind


def test_transient_errors_are_not_final_and_restart_the_failed_step():
    for kind in errors.TRANSIENT:
        decision = _decide(kind, step="provision")
        assert not decision.final and decision.restart == "provision" and decision.action == policy.RETRY, kind


def test_retry_after_is_honoured_within_the_cap_with_the_backoff_on_top():
    # A 5xx: retry-after plus the backoff's random half.
    assert _decide(errors.SERVICE_UNAVAILABLE, 1, retry_after=20, random=0.0).wait_ms == 20500
    assert _decide(errors.SERVICE_UNAVAILABLE, 1, retry_after=20, random=0.999).wait_ms == 20999
    assert _decide(errors.SERVICE_UNAVAILABLE, 1, retry_after=600).wait_ms == 60000
    # A short retry-after does not shorten the backoff.
    assert _decide(errors.SERVICE_UNAVAILABLE, 4, retry_after=1, random=0.0).wait_ms == 5000
    # A 429: retry-after plus the throttled spread, never less than retry-after, never more than the cap.
    assert _decide(errors.THROTTLED, 1, retry_after=20, random=0.0).wait_ms == 20000
    assert _decide(errors.THROTTLED, 1, retry_after=20, random=0.5).wait_ms == 45000  # half of (120 - 20) / 2 s
    assert _decide(errors.THROTTLED, 1, retry_after=600, random=0.0).wait_ms == 60000


def test_throttled_answers_spread_over_a_window_for_a_fleet():
    # Full jitter on top of retry-after, over half of what is left of the 120 s budget: (120 - 1) / 2 = 59.5 s,
    # evenly from 0 (not from half the window, as the backoff).
    waits = [_decide(errors.THROTTLED, 1, retry_after=1, random=r / 10).wait_ms for r in range(10)]
    assert waits == [1000 + int(59500 * (r / 10)) for r in range(10)], waits
    assert waits[0] == 1000 and waits[-1] == 54550
    # However small retry_base_ms is: that is one device's pace, not a fleet's.
    assert _decide(errors.THROTTLED, 1, retry_after=1, settings=_with(retry_base_ms=100), random=0.5).wait_ms == 30750
    # Without a retry-after, the spread alone.
    assert _decide(errors.THROTTLED, 1, retry_after=None, random=0.5).wait_ms == 30000


def test_throttled_window_doubles_with_each_failure_in_a_row_up_to_the_cap():
    # registration_timeout_s / 2 = 50 s, then 100, 200, 400 s, half of each drawn; past the budget (a board) the
    # window is not cut, only capped.
    settings = _with(retry_max_s=3600, registration_timeout_s=100)
    waits = [
        _decide(errors.THROTTLED, n, retry_after=1, settings=settings, random=0.5, elapsed=10**6).wait_ms
        for n in (1, 2, 3, 4)
    ]
    assert waits == [26000, 51000, 101000, 201000], waits
    late = _decide(errors.THROTTLED, 40, retry_after=1, settings=settings, random=0.5, elapsed=10**6)
    assert late.wait_ms == 1000 + 1800000  # the window stops at retry_max_s (3,600 s)
    assert (
        _decide(errors.THROTTLED, 40, retry_after=1, random=0.999, elapsed=10**6).wait_ms == 60000
    )  # the whole wait too


def test_throttled_spread_leaves_a_one_shot_run_its_last_attempt():
    # 100 s into a 120 s budget, retry-after 1 s: at most half of the 19 s left, 9.5 s.
    assert _decide(errors.THROTTLED, 1, retry_after=1, random=0.999, elapsed=100000).wait_ms == 1000 + 9490
    # Less than LAST_ATTEMPT_MS left after retry-after: retry-after alone.
    assert _decide(errors.THROTTLED, 3, retry_after=1, random=0.999, elapsed=114000).wait_ms == 1000
    # Whatever the draw, a retry-after that fits the budget never puts the next attempt past it, and the spread never
    # takes more than half of what is left: throttled again, the device still has as long again.
    for elapsed in range(0, 115000, 2500):
        for failures in (1, 2, 3, 5):
            for r in (0.0, 0.3, 0.999):
                decision = _decide(errors.THROTTLED, failures, retry_after=1, random=r, elapsed=elapsed)
                assert not decision.over_budget, (elapsed, failures, r, decision.wait_ms)
                assert decision.wait_ms - 1000 <= (120000 - elapsed - 1000) // 2, (elapsed, failures, r)
    # Past the budget (a board never stops) the window is not cut: 60 s (retry_max_s), half of it drawn.
    assert _decide(errors.THROTTLED, 1, retry_after=1, random=0.5, elapsed=500000).wait_ms == 31000


def test_gateway_failures_restart_at_connect():
    assert _decide(errors.NETWORK, step="serve", gateway_failures=1).restart == "connect"
    assert _decide(errors.TIMEOUT, step="connect", gateway_failures=1).restart == "connect"


def test_refused_cached_credentials_register_again_at_once():
    for kind in policy.STALE:
        decision = _decide(kind, step="connect", gateway_failures=1)
        assert decision.action == policy.REREGISTER and decision.restart == "provision" and not decision.final
        assert decision.wait_ms <= 1000, kind  # the first backoff step, not the cap


def test_a_fresh_assignment_refused_is_tried_again_not_registered_again():
    decision = _decide(errors.TLS_VERIFICATION, step="connect", gateway_failures=1, fresh=True)
    assert decision.action == policy.RETRY and decision.restart == "connect" and decision.final


def test_max_gateway_failures_registers_again():
    actions = [_decide(errors.NETWORK, n, step="serve", gateway_failures=n).action for n in (1, 2, 3, 4, 5, 6)]
    assert actions == ["retry", "retry", "reregister", "retry", "retry", "reregister"]
    # Not for DPS failures, whatever their count.
    assert _decide(errors.NETWORK, 3, step="provision", gateway_failures=0).action == policy.RETRY


def test_a_network_failure_with_the_link_down_goes_back_to_the_link():
    assert _decide(errors.NETWORK, step="provision", link_up=False).restart == "link"
    assert _decide(errors.TIMEOUT, step="serve", gateway_failures=1, link_up=False).restart == "link"
    assert _decide(errors.NETWORK, step="link", link_up=False).restart == "link"
    assert _decide(errors.NETWORK, step="provision", link_up=True).restart == "provision"


def test_reset_after_failures_since_this_boot():
    settings = _with(reset_after_failures=3)
    assert _decide(errors.NETWORK, 2, settings=settings).action == policy.RETRY
    assert _decide(errors.NETWORK, 3, settings=settings).action == policy.RESET
    # The backoff carried over a reset does not reset the board again at once.
    assert _decide(errors.NETWORK, 7, settings=settings, boot_failures=1).action == policy.RETRY


def test_deep_sleep_instead_of_waiting():
    decision = _decide(errors.NETWORK, 2, settings=_with(retry_deep_sleep=True), random=0.0)
    assert decision.action == policy.DEEP_SLEEP and decision.wait_ms == 1000


def test_budget_is_the_registration_timeout_counting_the_wait():
    assert not _decide(errors.NETWORK, elapsed=119249, random=0.5).over_budget  # waits 750 ms: starts at 119,999
    assert _decide(errors.NETWORK, elapsed=119250, random=0.5).over_budget
    assert _decide(errors.THROTTLED, elapsed=100000, retry_after=30).over_budget


def test_pending_operation_waits_what_the_service_asks():
    assert _decide(policy.PENDING, 0, retry_after=None).wait_ms == policy.PENDING_WAIT_MS
    assert _decide(policy.PENDING, 0, retry_after=0).wait_ms == 0
    assert _decide(policy.PENDING, 0, retry_after=7).wait_ms == 7000
    assert _decide(policy.PENDING, 0, retry_after=900).wait_ms == 60000
    assert not _decide(policy.PENDING, 0).final


def test_the_configuration_defaults_hold_every_setting_the_policy_reads():
    from azprov import config

    defaults = config.defaults()
    for name in SETTINGS:
        assert isinstance(defaults[name], (int, bool)), name
    decision = policy.decide(errors.NETWORK, 1, None, defaults, 0.0, 0)
    assert decision.wait_ms == defaults["retry_base_ms"] // 2
