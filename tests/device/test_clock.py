# Time: Unix seconds on both epochs, and no signing with a clock that was never set.
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
