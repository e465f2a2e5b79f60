# The run loop of a field device: a board must recover from every transient fault by itself. It drives a flow's
# steps in order; after a classified error it waits (exponential backoff with jitter, capped) and starts again from
# the step the flow names (usually the one that failed). Errors no retry can fix wait at the cap instead of
# hammering the service; after `reset_after_failures` consecutive failures the board is reset; with
# `retry_deep_sleep` it deep-sleeps through the wait. Every wait is logged with its reason and when it ends.
#
# The flow is a small interface (azprov.steps.Flow is the device's): `steps` (step names in order), `run_step(name)`
# (True when the whole flow is complete), `recover(exc, name)` (closes what the failure left open and returns the
# step to start again from), `acknowledged` (a counter of useful work: a failure after progress starts a new count),
# and `config` (the provisioning file once loaded, else None).
import gc
import json

from micropython import const

from azprov import errors, log, watchdog
from azprov.errors import ProvisioningError

# Kinds that need a person (a fixed provisioning file, an enabled enrollment, a working allocation policy): waiting
# longer does not help, so these wait at the cap.
NEEDS_A_PERSON = (
    errors.CONFIGURATION,
    errors.DISABLED,
    errors.ASSIGNMENT_FAILED,
    errors.NOT_FOUND,
    errors.AUTHENTICATION,
    errors.BAD_REQUEST,
)
# Defaults while the provisioning file cannot be read (config.py has the same ones).
_DEFAULT_BASE_MS = const(1000)
_DEFAULT_MAX_S = const(300)
_RTC_MAGIC = "azprov1"
_RESET_CAUSES = (
    ("PWRON_RESET", "power_on"),
    ("HARD_RESET", "hard"),
    ("WDT_RESET", "watchdog"),
    ("DEEPSLEEP_RESET", "deep_sleep"),
    ("SOFT_RESET", "soft"),
)


def _random():
    import os

    return os.urandom(2)[0] / 256


def backoff_ms(failures, base_ms, max_s, random=_random):
    """The wait before attempt `failures + 1`: a window doubling from `base_ms` up to `max_s`, of which a random
    half is drawn ("equal jitter"), so a fleet that lost its service does not come back in one wave."""
    cap = max_s * 1000
    window = min(cap, base_ms << min(max(failures - 1, 0), 24))
    return window // 2 + int(window // 2 * random())


def _machine():
    try:
        import machine

        return machine
    except ImportError:
        return None


def reset_cause(machine):
    if machine is None or not hasattr(machine, "reset_cause"):
        return "unknown"
    cause = machine.reset_cause()
    for name, text in _RESET_CAUSES:
        if getattr(machine, name, None) == cause:
            return text
    return str(cause)


def _rtc_memory(machine, data=None):
    # RTC memory survives resets and deep sleep (not power cuts): the backoff carries on where it was.
    try:
        rtc = machine.RTC()
        if data is None:
            return rtc.memory()
        rtc.memory(data)
    except Exception:  # a port without RTC memory: the count starts again after a reset
        return None


class RunLoop:
    def __init__(self, flow, machine=None, random=_random):
        self.flow = flow
        self.machine = machine if machine is not None else _machine()
        self.random = random
        self.failures = 0  # consecutive failures since the last progress (resets the board at the limit)
        self.backoff_failures = 0  # the backoff's exponent; survives a reset through RTC memory
        self.waits = 0
        self._progress_mark = flow.acknowledged

    def _setting(self, name, default):
        cfg = self.flow.config
        return cfg[name] if cfg is not None else default

    def _boot_record(self):
        cause = reset_cause(self.machine)
        carried = 0
        raw = _rtc_memory(self.machine) if self.machine is not None else None
        if raw:
            try:
                record = json.loads(raw)
                if record.get("m") == _RTC_MAGIC:
                    carried = int(record.get("f", 0))
            except (ValueError, TypeError, AttributeError):
                carried = 0
        self.backoff_failures = carried
        log.info("run_loop_started", ("reset_cause", cause), ("carried_failures", carried))

    def _remember(self):
        if self.machine is not None:
            _rtc_memory(self.machine, json.dumps({"m": _RTC_MAGIC, "f": self.backoff_failures}).encode())

    def _forget(self):
        if self.backoff_failures and self.machine is not None:
            _rtc_memory(self.machine, b"")
        self.backoff_failures = 0

    def run(self):
        """Runs the flow until it completes (returns 0); on a board this normally never returns."""
        flow = self.flow
        self._boot_record()
        index = 0
        while True:
            name = flow.steps[index]
            if flow.config is not None and not watchdog.running():
                watchdog.start(flow.config["watchdog_timeout_s"])
            watchdog.feed()
            try:
                if flow.run_step(name):
                    self._forget()
                    return 0
                index += 1
                continue
            except ProvisioningError as exc:
                error = exc
            except MemoryError:
                gc.collect()
                error = ProvisioningError(
                    errors.OUT_OF_MEMORY, "%s: the heap is too small (%d bytes free)" % (name, gc.mem_free())
                )
            except Exception as exc:  # a bug must not end a field device's life either: report, wait, retry
                error = ProvisioningError(errors.INTERNAL, "%s: %s: %s" % (name, type(exc).__name__, exc))
            restart = flow.recover(error, name)
            index = flow.steps.index(restart)
            self._after_failure(error, name, restart)

    def _after_failure(self, exc, step, restart):
        if self.flow.acknowledged != self._progress_mark:
            self._progress_mark = self.flow.acknowledged
            self.failures = 0
            self._forget()
        self.failures += 1
        self.backoff_failures += 1
        max_s = self._setting("retry_max_s", _DEFAULT_MAX_S)
        if exc.kind in NEEDS_A_PERSON:
            delay = max_s * 1000
        else:
            delay = backoff_ms(
                self.backoff_failures, self._setting("retry_base_ms", _DEFAULT_BASE_MS), max_s, self.random
            )
            if exc.retry_after:
                delay = min(max_s * 1000, max(delay, exc.retry_after * 1000))
        limit = self._setting("reset_after_failures", 0)
        reset = bool(limit) and self.failures >= limit
        sleep = self._setting("retry_deep_sleep", False)
        action = "reset" if reset else ("deep_sleep" if sleep else "retry")
        pairs = [
            ("step", step),
            ("reason", exc.kind),
            ("in_s", "%d.%d" % (delay // 1000, delay % 1000 // 100)),
        ]
        at = _unix_time_if_set()
        if at:
            pairs.append(("at", at + (delay + 999) // 1000))
        pairs += [("failures", self.failures), ("restart", restart), ("action", action), ("message", exc.message)]
        log.warning("retry_scheduled", *pairs)
        self.waits += 1
        if reset or sleep:
            self._remember()
        if sleep and not reset and self.machine is not None and hasattr(self.machine, "deepsleep"):
            # On a board this does not return: the chip wakes through a reset and main.py starts again, with the
            # assignment cached in flash and the backoff carried in RTC memory.
            self.machine.deepsleep(delay)
        else:
            watchdog.sleep_ms(delay)
        if reset:
            log.error("board_reset", ("failures", self.failures), ("reason", exc.kind))
            if self.machine is not None and hasattr(self.machine, "reset"):
                self.machine.reset()
            self.failures = 0  # a port that cannot reset: carry on counting from zero


def _unix_time_if_set():
    from azprov.clock import RELEASED, unix_time

    now = unix_time()
    return now if now >= RELEASED else 0


def selected(config, platform):
    """Whether main.py runs the loop: `run_loop` from the provisioning file; by default on every port but Unix."""
    choice = config["run_loop"] if config is not None else None
    return (platform != "linux") if choice is None else choice


def main(path="provisioning.json"):
    """main.py's entry: the run loop when selected (returns only when the flow completes), else one pass of the
    flow that returns 0, or 1 after logging a classified error (the Unix-port test runs)."""
    import sys

    from azprov import config

    try:
        cfg = config.load(path)
    except ProvisioningError:
        cfg = None  # a board waits at the cap and reads it again; a one-shot run reports it
    config = None
    if not selected(cfg, sys.platform):
        from azprov.app import main as run_once

        return run_once(path)
    from azprov.steps import Flow

    return RunLoop(Flow(path, cfg)).run()
