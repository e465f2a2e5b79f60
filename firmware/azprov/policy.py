# The one retry policy: every wait the firmware makes after a failure, and every decision to register again or to
# reset the board, comes from decide(). It is pure, in the shape of the Azure Embedded C SDK's retry calculation:
# the caller passes the failure, the counts, the settings, a random number in [0, 1) and the time since the device
# last did useful work; nothing here reads a clock, sleeps or draws randomness.
from micropython import const

from azprov import errors

# Kinds that need a person (a fixed provisioning file, an enabled enrollment, a working allocation policy): a board
# waits at the cap for them instead of hammering the service.
NEEDS_A_PERSON = (
    errors.CONFIGURATION,
    errors.DISABLED,
    errors.ASSIGNMENT_FAILED,
    errors.NOT_FOUND,
    errors.AUTHENTICATION,
    errors.BAD_REQUEST,
)
# Gateway failures that registering again fixes when the assignment or trust bundle came from the cache.
STALE = (errors.AUTHENTICATION, errors.TLS_VERIFICATION, errors.STORAGE)
# Failures that send the device back to its link when the link is down.
_LINK = (errors.NETWORK, errors.TIMEOUT)
# A DPS operation still being assigned: not a failure, a wait the service asks for (the SDKs wait 1-3 s).
PENDING = "pending"
PENDING_WAIT_MS = const(2000)
# Throttling (429): the first window a throttled retry is spread over is this share of registration_timeout_s ...
THROTTLED_SHARE = const(2)
# ... and the spread never pushes an attempt later than this before the deadline: what one attempt needs (the least
# registration_timeout_s the configuration allows).
LAST_ATTEMPT_MS = const(5000)

# Actions.
RETRY = "retry"
REREGISTER = "reregister"
RESET = "reset"
DEEP_SLEEP = "deep_sleep"

_GATEWAY_STEPS = ("connect", "serve")


class Decision:
    """What to do after a failure: wait `wait_ms`, then start again at step `restart` with `action`. `final` is set
    when retrying cannot fix it by itself (a person must act): a one-shot run and an application stop there, a
    board waits and tries again. `over_budget` is set when the next attempt would start `registration_timeout_s` or more after the device
    last did useful work."""

    def __init__(self, wait_ms, restart, action, final, over_budget):
        self.wait_ms = wait_ms
        self.restart = restart
        self.action = action
        self.final = final
        self.over_budget = over_budget


def backoff_ms(failures, base_ms, max_s, random):
    """The wait before attempt `failures + 1`: a window doubling from `base_ms` up to `max_s`, of which a random
    half is drawn ("equal jitter"), so a fleet that lost its service does not come back in one wave."""
    window = min(max_s * 1000, base_ms << min(max(failures - 1, 0), 24))
    half = window // 2
    return half + int(half * random)


def throttled_ms(failures, retry_after_ms, settings, random, elapsed_ms):
    """The spread added to the service's retry-after when DPS answered 429 (the `failures`-th failure in a row).

    A 429 says that DPS admits fewer registrations than are arriving: a fleet that powered on together (after an
    outage, a firmware update, a factory batch) is being turned away, and every device of it hears the same
    retry-after. A device knows neither the fleet's size nor the service's rate; the one scale it knows is its own
    registration budget, so it spreads the retry over as much of that as it can afford:

    - full jitter: a random point of the whole window (not of its second half, as backoff_ms), so a throttled wave
      comes back evenly over the window;
    - the window is registration_timeout_s / THROTTLED_SHARE, whatever retry_base_ms says (that is the pace for one
      device's network trouble, not for a fleet), doubling with each failure in a row (throttled again: the fleet
      is larger than the window), capped at retry_max_s;
    - while the device is within its budget, the window is at most half of what is left of it after retry-after
      (a device throttled again still has as long again for its next spread), and ends LAST_ATTEMPT_MS before the
      budget does: a one-shot run keeps its attempts instead of being stopped by the spread. Past the budget (a
      board, which never stops) it is not cut.

    N devices throttled together come back at about N / window per second: 1,000 devices over the first 60 s (at
    the default 120 s) at 17/s, below a service admitting 20/s.
    """
    budget_ms = settings["registration_timeout_s"] * 1000
    window = min(settings["retry_max_s"] * 1000, (budget_ms // THROTTLED_SHARE) << min(max(failures - 1, 0), 24))
    left = budget_ms - elapsed_ms - retry_after_ms
    if left > 0:
        window = min(window, left // 2, max(0, left - LAST_ATTEMPT_MS))
    return int(window * random)


def decide(
    kind,
    failures,
    retry_after_s,
    settings,
    random,
    elapsed_ms,
    step="serve",
    gateway_failures=0,
    fresh=False,
    link_up=True,
    boot_failures=None,
):
    """The next action after a failure of `kind` at `step`: the `failures`-th in a row (1 for the first), the
    `gateway_failures`-th at the gateway, `retry_after_s` from the service (None without one), `fresh` when the
    gateway refused an assignment DPS has just given, `link_up` False when the Wi-Fi is down, `boot_failures` the
    failures since this boot (`failures` survives a reset, so the backoff goes on growing). `settings` is the
    provisioning file (or azprov.config.defaults()); `random` is in [0, 1)."""
    cap_ms = settings["retry_max_s"] * 1000
    if kind == PENDING:
        wait = PENDING_WAIT_MS if retry_after_s is None else retry_after_s * 1000
        return Decision(min(wait, cap_ms), step, RETRY, False, False)
    restart = step
    action = RETRY
    final = kind not in errors.TRANSIENT
    if step in _GATEWAY_STEPS:
        restart = "connect"
        limit = settings["max_gateway_failures"]
        if (kind in STALE and not fresh) or (limit and gateway_failures and not gateway_failures % limit):
            # The cached assignment or trust bundle may be out of date, or the gateway it names keeps failing:
            # DPS knows the current ones.
            restart = "provision"
            action = REREGISTER
            final = False
    if kind in _LINK and not link_up and step not in ("config", "link"):
        restart = "link"
    if kind in NEEDS_A_PERSON and action == RETRY:
        wait = cap_ms
    else:
        if kind == errors.THROTTLED:
            wait = throttled_ms(failures, (retry_after_s or 0) * 1000, settings, random, elapsed_ms)
        else:
            wait = backoff_ms(failures, settings["retry_base_ms"], settings["retry_max_s"], random)
        if retry_after_s:
            # The service's wait, plus the random share (the backoff's, or the throttled spread): a fleet told
            # "retry after 5 s" in one wave must not come back in one wave.
            wait += retry_after_s * 1000
        wait = min(wait, cap_ms)
    if action == REREGISTER and not final:
        wait = min(wait, backoff_ms(1, settings["retry_base_ms"], settings["retry_max_s"], random))
    limit = settings["reset_after_failures"]
    if limit and (failures if boot_failures is None else boot_failures) >= limit:
        action = RESET
    elif settings["retry_deep_sleep"] and action == RETRY:
        action = DEEP_SLEEP
    # Past the budget once the next attempt would start after it: the failure that asked for the wait is the answer.
    over_budget = elapsed_ms + wait >= settings["registration_timeout_s"] * 1000
    return Decision(wait, restart, action, final, over_budget)
