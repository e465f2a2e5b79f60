# Stand-in for the `time` module (tests only): the port's own, except that time() reads like an ESP32's RTC after a
# reset (a few seconds after 2000-01-01) while standins.json says {"clock_unset": true}, until ntptime (the stand-in
# here) sets it.
import standin_control
import utime
from utime import *  # noqa: F403

_SECONDS_1970_TO_2000 = 946684800
_set = [False]
_boot_ms = utime.ticks_ms()


def set_by_ntp():
    _set[0] = True


def time():
    if _set[0] or not standin_control.get("clock_unset", False):
        return utime.time()
    return _SECONDS_1970_TO_2000 + utime.ticks_diff(utime.ticks_ms(), _boot_ms) // 1000
