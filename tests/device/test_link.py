# The Wi-Fi and NTP link (azprov/link.py) with stand-in `network` and `ntptime` modules that fail on command.
import sys

from azprov import clock, errors
from azprov.errors import ProvisioningError
from azprov.link import Link


class FakeNetwork:
    STA_IF = 0
    STAT_NO_AP_FOUND = 201
    STAT_GOT_IP = 1010
    ap_up = True
    joined = False
    connects = []

    class WLAN:
        def __init__(self, interface):
            pass

        def active(self, on=None):
            return True

        def connect(self, ssid, password):
            FakeNetwork.connects.append((ssid, len(password)))
            FakeNetwork.joined = FakeNetwork.ap_up

        def isconnected(self):
            return FakeNetwork.joined

        def disconnect(self):
            FakeNetwork.joined = False

        def status(self):
            return FakeNetwork.STAT_GOT_IP if FakeNetwork.joined else FakeNetwork.STAT_NO_AP_FOUND

        def ifconfig(self):
            return ("10.0.0.7", "255.255.255.0", "10.0.0.1", "10.0.0.1")


class FakeNtp:
    host = "pool.ntp.org"
    up = True
    calls = 0

    @staticmethod
    def settime():
        FakeNtp.calls += 1
        if not FakeNtp.up:
            raise OSError(110)


_saved = {}
CONFIG = {"wifi": {"ssid": "lab-net", "password": "pw-123"}, "ntp_host": None, "ntp_resync_s": 86400}


def setup(function=None):
    for name, fake in (("network", FakeNetwork), ("ntptime", FakeNtp)):
        _saved[name] = sys.modules.get(name)
        sys.modules[name] = fake
    FakeNetwork.ap_up, FakeNetwork.joined, FakeNetwork.connects = True, False, []
    FakeNtp.up, FakeNtp.calls, FakeNtp.host = True, 0, "pool.ntp.org"
    _saved["offset"] = clock._EPOCH_OFFSET


def teardown(function=None):
    for name in ("network", "ntptime"):
        if _saved[name] is None:
            del sys.modules[name]
        else:
            sys.modules[name] = _saved[name]
    clock._EPOCH_OFFSET = _saved["offset"]


setup_function = setup
teardown_function = teardown


def _unset_clock():
    # An ESP32 after reset: a few seconds after 2000-01-01.
    clock._EPOCH_OFFSET = 946684800 + 5 - clock.unix_time() + clock._EPOCH_OFFSET


def test_without_wifi_settings_the_link_is_the_ports_own():
    link = Link(dict(CONFIG, wifi=None))
    link.up()
    link.check()
    assert link.connected() and not FakeNetwork.connects


def test_join_then_drop_then_rejoin():
    link = Link(CONFIG)
    link.up()
    assert link.joins == 1 and FakeNetwork.connects == [("lab-net", 6)]
    link.check()
    FakeNetwork.joined = False  # the access point went away
    try:
        link.check()
    except ProvisioningError as exc:
        assert exc.kind == errors.NETWORK and "lost" in exc.message
    else:
        raise AssertionError("a dropped link went unnoticed")
    FakeNetwork.ap_up = False
    try:
        link.up()
    except ProvisioningError as exc:
        assert exc.kind == errors.NETWORK and "no_ap_found" in exc.message and "pw-123" not in exc.message
    else:
        raise AssertionError("joined a missing access point")
    FakeNetwork.ap_up = True
    link.up()
    assert link.joins == 2


def test_clock_synced_after_every_join_and_once_a_period():
    link = Link(dict(CONFIG, ntp_host="ntp.lab"))
    link.up()
    assert link.sync_clock() and FakeNtp.calls == 1 and FakeNtp.host == "ntp.lab"
    assert not link.clock_due() and not link.sync_clock()
    FakeNetwork.joined = False
    link.up()  # a re-join: the clock is synced again
    assert link.clock_due() and link.sync_clock() and FakeNtp.calls == 2
    link._synced_at -= 86400  # a day later
    assert link.clock_due() and link.sync_clock() and FakeNtp.calls == 3


def test_failed_ntp_is_an_error_only_while_the_clock_is_unset():
    link = Link(CONFIG)
    FakeNtp.up = False
    assert not link.sync_clock()  # the clock is set: carry on, try again next period
    assert not link.clock_due()
    _unset_clock()
    try:
        link.sync_clock()
    except ProvisioningError as exc:
        assert exc.kind == errors.CLOCK
    else:
        raise AssertionError("an unset clock was accepted")
