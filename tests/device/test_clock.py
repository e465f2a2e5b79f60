# Time: Unix seconds on both epochs, and no signing with a clock that was never set.
import sys

from azprov import clock, errors
from azprov.errors import ProvisioningError


def test_epoch_offsets():
    assert clock.epoch_offset(1970) == 0
    assert clock.epoch_offset(2000) == 946684800


def test_unix_time_is_after_release_on_this_machine():
    assert clock.unix_time() > clock.RELEASED


def test_unset_clock_refused():
    saved = clock._EPOCH_OFFSET
    # An ESP32 after reset without NTP: its clock reads a few seconds after 2000-01-01.
    clock._EPOCH_OFFSET = 946684800 + 5 - clock.unix_time() + saved
    try:
        clock.require_set_clock()
    except ProvisioningError as exc:
        assert exc.kind == errors.CLOCK and "not set" in exc.message
    else:
        raise AssertionError("signed with an unset clock")
    finally:
        clock._EPOCH_OFFSET = saved


class _DeviceClock:
    # Stands in for the `time` module of a port whose clock reads `seconds` since its own epoch.
    def __init__(self, seconds):
        self.seconds = seconds

    def time(self):
        return self.seconds


def test_unix_time_on_both_epochs():
    unix_now = 1800000000
    saved_time, saved_offset = clock.time, clock._EPOCH_OFFSET
    try:
        for year in (1970, 2000):
            clock.time = _DeviceClock(unix_now - clock.epoch_offset(year))
            clock._EPOCH_OFFSET = clock.epoch_offset(year)
            assert clock.unix_time() == unix_now
            assert clock.require_set_clock() == unix_now
    finally:
        clock.time, clock._EPOCH_OFFSET = saved_time, saved_offset


class _PortTime:
    # A `time` module of a port whose epoch starts in `year`, its clock reading Unix time `unix_now` there.
    def __init__(self, year, unix_now):
        self._year = year
        self._seconds = unix_now - (946684800 if year == 2000 else 0)

    def gmtime(self, seconds=0):
        assert seconds == 0
        return (self._year, 1, 1, 0, 0, 0, 5, 1)

    def time(self):
        return self._seconds


def test_epoch_detected_from_gmtime_zero():
    # The module asks the port where its epoch starts (time.gmtime(0)) when it is imported: load it afresh on a
    # 1970 port and on a 2000 port (ESP32) and read the same Unix time on both.
    import azprov

    real_time = sys.modules.get("time")
    try:
        for year in (1970, 2000):
            sys.modules["time"] = _PortTime(year, 1800000000)
            sys.modules.pop("azprov.clock", None)
            fresh = __import__("azprov.clock", None, None, ["unix_time"])
            assert fresh.unix_time() == 1800000000, year
            assert fresh.require_set_clock() == 1800000000
    finally:
        if real_time is None:
            sys.modules.pop("time", None)
        else:
            sys.modules["time"] = real_time
        sys.modules["azprov.clock"] = clock
        azprov.clock = clock
