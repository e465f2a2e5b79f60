# azprov.transport without a network: what a socket failure is called (classify), and that every socket wait feeds
# the watchdog (a fake TLS stream that has nothing to read for a while, a fake poll, a stand-in machine.WDT).
import sys

from azprov import errors, transport, watchdog
from azprov.errors import ProvisioningError


class _CountingWdt:
    def __init__(self):
        self.feeds = 0

    def feed(self):
        self.feeds += 1


class _FakePoll:
    """select.poll() whose poll() returns at once: empty `idle` times, then ready. Records each timeout asked."""

    def __init__(self, owner):
        self._owner = owner

    def register(self, obj, events):
        pass

    def modify(self, obj, events):
        pass

    def unregister(self, obj):
        pass

    def poll(self, timeout_ms):
        self._owner.timeouts.append(timeout_ms)
        if self._owner.idle:
            self._owner.idle -= 1
            return []
        return [(None, 1)]


class _FakeSelect:
    POLLIN = 1
    POLLOUT = 4

    def __init__(self, idle=0):
        self.idle = idle
        self.timeouts = []

    def poll(self):
        return _FakePoll(self)


class _SlowTls:
    """A TLS stream whose reads and writes find nothing to do `idle` times (None, as a non-blocking socket says),
    then succeed."""

    def __init__(self, idle):
        self.idle = idle
        self.sent = bytearray()

    def setblocking(self, flag):
        pass

    def readinto(self, view):
        if self.idle:
            self.idle -= 1
            return None
        for i in range(len(view)):
            view[i] = 0x41
        return len(view)

    def write(self, data):
        if self.idle:
            self.idle -= 1
            return None
        self.sent.extend(data)
        return len(data)

    def close(self):
        pass


_saved = {}


def setup():
    _saved["select"] = transport.select
    _saved["wdt"] = watchdog._wdt[0]


def teardown():
    transport.select = _saved["select"]
    watchdog._wdt[0] = _saved["wdt"]


def _watched(idle_polls=0):
    wdt = _CountingWdt()
    watchdog._wdt[0] = wdt
    fake = _FakeSelect(idle_polls)
    transport.select = fake
    return wdt, fake


def _network_message(exc):
    error = transport.classify(exc, "DPS")
    assert error.kind == errors.NETWORK, (exc, error.kind)
    return error.message


def test_network_errors_are_named_with_their_code():
    # The Unix port's getaddrinfo says "[addrinfo error -2]"; CPython raises gaierror(-2, ...); an ESP32 -202.
    assert _network_message(OSError("[addrinfo error -2]")) == "DPS: host name not found (-2)"
    assert _network_message(OSError(-3, "Temporary failure in name resolution")) == "DPS: host name not found (-3)"
    assert _network_message(OSError(-202)) == "DPS: host name not found (-202)"
    assert _network_message(OSError(111)) == "DPS: connection refused (111)"
    assert _network_message(OSError(104)) == "DPS: connection reset (104)"
    assert _network_message(OSError(-1)) == "DPS: connection closed by the peer (-1)"
    # An mbedTLS code is no name lookup.
    assert _network_message(OSError(-29312)) == "DPS: connection failed (-29312)"
    if sys.platform == "esp32":  # newlib's errno numbers
        assert _network_message(OSError(118)) == "DPS: host unreachable (118)"
    else:
        assert _network_message(OSError(113)) == "DPS: host unreachable (113)"
    assert transport.classify(OSError(110), "DPS").kind == errors.TIMEOUT
    named = ProvisioningError(errors.NETWORK, "kept")
    assert transport.classify(named, "DPS") is named


def test_the_watchdog_is_fed_while_a_read_waits():
    wdt, _ = _watched()
    sock = transport.DeadlineSocket(_SlowTls(idle=7), 10000)
    assert bytes(sock.read(3)) == b"AAA"
    assert wdt.feeds >= 7, wdt.feeds  # one feed per slice the read waited
    # The same for a payload read in pieces (PayloadStream.fill) and for a write the socket cannot take yet.
    sock = transport.DeadlineSocket(_SlowTls(idle=5), 10000)
    wdt.feeds = 0
    sock.fill(memoryview(bytearray(4)))
    assert wdt.feeds >= 5, wdt.feeds
    tls = _SlowTls(idle=4)
    sock = transport.DeadlineSocket(tls, 10000)
    sock.write(b"\xc0\x00")
    wdt.feeds = 0
    sock.flush()
    assert bytes(tls.sent) == b"\xc0\x00" and wdt.feeds >= 4, wdt.feeds


def test_the_watchdog_is_fed_while_waiting_for_data():
    # Connection.receive waits through wait_readable for up to a second at a time (longer when a caller asks):
    # the wait is polled in slices of at most _FEED_SLICE_MS, each after a feed.
    wdt, fake = _watched(idle_polls=3)
    sock = transport.DeadlineSocket(_SlowTls(idle=0), 10000)
    assert sock.wait_readable(60000)
    assert wdt.feeds >= 4, wdt.feeds
    assert max(fake.timeouts) <= 1000, fake.timeouts  # transport._FEED_SLICE_MS (a const: not visible on MicroPython)
    wdt.feeds = 0
    fake.idle = 1
    assert not sock.wait_readable(0)
    assert wdt.feeds == 1


def test_the_watchdog_is_fed_on_both_sides_of_the_tls_handshake():
    wdt, _ = _watched()
    at_handshake = []

    class Context:
        def wrap_socket(self, sock, server_hostname=None):
            at_handshake.append((wdt.feeds, server_hostname))
            return _SlowTls(idle=0)

    class Tcp:
        def settimeout(self, seconds):
            self.timeout = seconds

    tcp = Tcp()
    wrapped = transport._TimedContext(Context(), 15000, None).wrap_socket(tcp, server_hostname="dps.example")
    assert isinstance(wrapped, transport.DeadlineSocket)
    assert tcp.timeout == 15  # the handshake is bounded by the socket timeout, below the watchdog's 20 s minimum
    assert at_handshake == [(1, "dps.example")]
    assert wdt.feeds == 2
