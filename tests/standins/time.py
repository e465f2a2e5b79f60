# Stand-in for the `time` module (tests only): the port's own, except that time() reads like an ESP32's RTC after a
# reset (a few seconds after 2000-01-01) while standins.json says {"clock_unset": true}, until ntptime (the stand-in
# here) sets it; and with {"time_scale": N} the wall clock runs N times faster than the ticks (compressed time for the
# soak: token lifetimes pass N times faster while timeouts, keepalives and backoffs keep their real length).
import standin_control
import utime
from utime import *  # noqa: F403

_SECONDS_1970_TO_2000 = 946684800
_set = [False]
_boot_ms = utime.ticks_ms()


def set_by_ntp():
    _set[0] = True


_origin = []


def time():
    if not _set[0] and standin_control.get("clock_unset", False):
        return _SECONDS_1970_TO_2000 + utime.ticks_diff(utime.ticks_ms(), _boot_ms) // 1000
    scale = standin_control.get("time_scale", 1)
    if scale == 1:
        return utime.time()
    if not _origin:
        _origin.extend((utime.time(), utime.ticks_ms()))
    return _origin[0] + utime.ticks_diff(utime.ticks_ms(), _origin[1]) * scale // 1000
