# The hardware watchdog (machine.WDT): once started it resets the board unless fed within its timeout, so a hang
# anywhere (a socket that never returns, a stuck driver) ends in a reset instead of a dead device. Every step of
# the flow and every long wait feeds it through feed() and sleep_ms(); both cost nothing when no watchdog runs
# (the Unix-port test runs, a port without machine.WDT).
import time

from micropython import const

from azprov import log

_SLICE_MS = const(1000)
_wdt = [None]


def start(timeout_s):
    """Starts the hardware watchdog (it cannot be stopped again). Returns True when one runs."""
    if not timeout_s or _wdt[0] is not None:
        return _wdt[0] is not None
    try:
        import machine

        _wdt[0] = machine.WDT(timeout=timeout_s * 1000)
    except (ImportError, AttributeError, ValueError, OSError) as exc:
        log.warning("watchdog_unavailable", ("error", type(exc).__name__))
        return False
    log.info("watchdog_started", ("timeout_s", timeout_s))
    return True


def running():
    return _wdt[0] is not None


def feed():
    wdt = _wdt[0]
    if wdt is not None:
        wdt.feed()


def sleep_ms(ms):
    """time.sleep_ms that keeps the watchdog fed however long it waits."""
    ms = int(ms)
    end = time.ticks_add(time.ticks_ms(), ms)
    while True:
        feed()
        remaining = time.ticks_diff(end, time.ticks_ms())
        if remaining <= 0:
            return
        time.sleep_ms(min(remaining, _SLICE_MS))
