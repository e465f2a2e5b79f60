# Unix time whatever the port's epoch, and a guard against signing with a clock that was never set.
import time

from micropython import const

# ESP32 and most bare-metal ports count from 2000-01-01; the Unix port from 1970-01-01.
_SECONDS_1970_TO_2000 = const(946684800)


def epoch_offset(epoch_year):
    """Seconds to add to a port's time.time() to get Unix time, for a port whose epoch starts in `epoch_year`."""
    return _SECONDS_1970_TO_2000 if epoch_year == 2000 else 0


_EPOCH_OFFSET = epoch_offset(time.gmtime(0)[0])

# The firmware cannot have been built before this moment (2026-11-01T00:00:00Z): a clock earlier than this was
# never set (an ESP32 wakes near 2000-01-01 until NTP runs), and tokens or certificate checks would be wrong.
RELEASED = const(1793491200)


def unix_time():
    return int(time.time()) + _EPOCH_OFFSET


def require_set_clock():
    now = unix_time()
    if now < RELEASED:
        from azprov.errors import CLOCK, ProvisioningError

        raise ProvisioningError(
            CLOCK,
            "device clock is not set (unix time %d is before the firmware release); "
            "sync it (ntptime) before signing or verifying certificates" % now,
        )
    return now


def iso_utc(unix):
    """Unix seconds as ISO 8601 UTC ("2026-12-02T05:37:00Z"), on either epoch."""
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % tuple(time.gmtime(unix - _EPOCH_OFFSET)[:6])


def _urandom_fraction():
    import os

    return (os.urandom(1)[0] << 8 | os.urandom(1)[0]) / 65536


class Clock:
    """The device's time and randomness, in one object the shells are given: millisecond ticks, a sleep that keeps the
    watchdog fed however long it waits, Unix time, and the jitter source. Tests pass a fake with the same methods."""

    def ticks_ms(self):
        return time.ticks_ms()

    def ticks_add(self, ticks, delta):
        return time.ticks_add(ticks, delta)

    def ticks_diff(self, end, start):
        return time.ticks_diff(end, start)

    def sleep_ms(self, ms):
        from azprov import watchdog

        watchdog.sleep_ms(ms)

    def unix_time(self):
        return unix_time()

    def require_set(self):
        return require_set_clock()

    def random(self):
        """A number in [0, 1): the only jitter source."""
        return _urandom_fraction()
