# Stand-ins for the I/O shells' surroundings (azprov.provision, azprov.gateway, azprov.client): a clock whose time passes
# only when someone sleeps or waits for data, and a Connection with transport.Connection's methods that answers what
# the shells publish from a script, installed in place of transport.connect (and transport.tls_context) for one test.
import json
import ssl

from azprov import config, log, transport
from azprov.store import Store

KEY = "NMgJDvdKTxjLi+xBxxkDDEwDJxEvOE5u8BiT0mVgPeg="
STORAGE = "shell_test_state"
PROVISIONING = {
    "dps_host": "global.azure-devices-provisioning.net",
    "id_scope": "0ne00000001",
    "registration_id": "sensor-001",
    "symmetric_key": KEY,
    "dps_ca_file": "certs/dps-root.pem",
    "storage_dir": STORAGE,
}


def provisioning(**changes):
    """A provisioning file as azprov.config.parse reads it: every field present, defaults filled in."""
    doc = dict(PROVISIONING)
    doc.update(changes)
    return config.parse(json.dumps(doc))


def fresh_store():
    store = Store(STORAGE)
    store.clear()  # on a board or the Unix port the folder outlives a test
    return store


class FakeClock:
    """Milliseconds that pass only when a shell sleeps (recorded in `sleeps`) or a connection waits for data
    (`waited`); Unix time follows them; the random number is fixed."""

    def __init__(self, fraction=0.5):
        self.now = 0
        self.fraction = fraction
        self.sleeps = []
        self.waited = 0

    def ticks_ms(self):
        return self.now

    def ticks_add(self, ticks, delta):
        return ticks + delta

    def ticks_diff(self, end, start):
        return end - start

    def sleep_ms(self, ms):
        self.sleeps.append(ms)
        self.now += ms

    def wait_ms(self, ms):
        self.waited += ms
        self.now += ms

    def unix_time(self):
        return 1800000000 + self.now // 1000

    def require_set(self):
        return self.unix_time()

    def random(self):
        return self.fraction


def query(topic):
    """The query parameters of a topic ("...?$rid=3&operationId=x") as a dict."""
    out = {}
    for part in topic.partition("?")[2].split("&"):
        name, _, value = part.partition("=")
        out[name] = value
    return out


class _Bytes:
    # The socket side of a transport.PayloadStream: fill() hands out the payload's bytes in order.
    def __init__(self, data):
        self.data = data
        self.at = 0

    def fill(self, view):
        n = len(view)
        view[:] = self.data[self.at : self.at + n]
        self.at += n


class Network:
    """The far side of every connection one test opens: `answer(topic, body)` (the service) returns the messages a
    publish brings, as (topic, body, pid) tuples, or a ProvisioningError that drops the connection; `fail` maps an
    operation name ("publish", "subscribe", "ping", "receive", "ack") to the error its next call raises; `events`
    records what happened, in order, across all connections."""

    def __init__(self, clock, answer=None):
        self.clock = clock
        self.answer = answer
        self.fail = {}
        self.events = []
        self.connections = []
        self.opened = []  # the arguments of each transport.connect call

    def connect(
        self,
        client_id,
        host,
        port,
        user,
        password,
        ctx,
        timeout_ms,
        keepalive=0,
        on_message=None,
        max_packet=transport.DEFAULT_MAX_PACKET,
        context="connect",
    ):
        self.opened.append(
            {
                "client_id": client_id,
                "host": host,
                "port": port,
                "user": user,
                "password": password,
                "ctx": ctx,
                "timeout_ms": timeout_ms,
            }
        )
        error = self.fail.pop("connect", None)
        if error is not None:
            raise error
        connection = FakeConnection(self, on_message, context)
        self.connections.append(connection)
        self.events.append(("connect", len(self.connections)))
        return connection

    @property
    def connection(self):
        return self.connections[-1]

    def published(self, index=None):
        """The topics published (on connection `index`, 1 for the first; all connections when None)."""
        return [e[1] for e in self.events if e[0] == "publish" and (index is None or e[2] == index)]


class FakeConnection:
    """transport.Connection as the shells see it: publish() and subscribe() return once acknowledged, receive()
    delivers what has arrived to on_message(topic bytes, body bytearray, pid) (a payload of stream_over bytes or
    more as a transport.PayloadStream) or lets the clock pass for the wait, and a failure closes the connection
    and raises a classified error."""

    def __init__(self, network, on_message, context):
        self.network = network
        self.on_message = on_message
        self.context = context
        self.number = len(network.connections) + 1
        self.stream_over = None
        self.open = True
        self.pending = []
        self.subscribed = []
        self.acks = []
        self.pings = 0
        self.idle = 0  # empty reads in a row
        self.disconnected = False

    def _check(self, what):
        error = self.network.fail.pop(what, None)
        if error is not None:
            self.close()
            raise error
        assert self.open, "%s on a closed connection" % what

    def deliver(self, topic, body, pid=None):
        """A message the service sends: read at the next receive()."""
        self.pending.append((topic, body, pid))

    def publish(self, topic, body, what=None):
        self._check("publish")
        self.network.events.append(("publish", topic, self.number, body))
        answer = self.network.answer
        if answer is None:
            return
        messages = answer(topic, body)
        if isinstance(messages, Exception):
            self.close()
            raise messages
        for message in messages or ():
            self.deliver(*message)

    def subscribe(self, topic_filter):
        self._check("subscribe")
        self.subscribed.append(topic_filter)
        self.network.events.append(("subscribe", topic_filter, self.number))

    def ping(self):
        self._check("ping")
        self.pings += 1

    def ack(self, pid):
        self._check("ack")
        self.acks.append(pid)
        self.network.events.append(("ack", pid, self.number))

    def receive(self, wait_ms):
        self._check("receive")
        if not self.pending:
            self.idle += 1
            assert self.idle < 10000, "still waiting for data after 10000 empty reads (a shell that never gives up?)"
            self.network.clock.wait_ms(wait_ms)
            return False
        self.idle = 0
        while self.pending and self.open:
            topic, body, pid = self.pending.pop(0)
            topic = topic.encode() if isinstance(topic, str) else topic
            body = bytearray(body.encode() if isinstance(body, str) else body)
            if self.stream_over is not None and len(body) >= self.stream_over:
                stream = transport.PayloadStream(_Bytes(body), len(body), memoryview(bytearray(512)))
                self.on_message(topic, stream, pid)
                assert not stream.remaining, "the receiver left part of a streamed payload in the socket"
            else:
                self.on_message(topic, body, pid)
        return True

    def close(self):
        self.open = False

    def disconnect(self):
        if self.open:
            self.disconnected = True
            self.network.events.append(("disconnect", self.number))
        self.close()


_saved = {}


def install(network):
    """Puts `network` in place of transport.connect and a stub in place of transport.tls_context (the CA file is
    never read: the context trusts nothing, and the bundle's TLS check loads into it once DPS has answered);
    uninstall() puts them back."""
    if "connect" not in _saved:
        _saved["connect"] = transport.connect
        _saved["tls_context"] = transport.tls_context
    transport.connect = network.connect
    transport.tls_context = lambda *args: (ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), 1)
    return network


def uninstall():
    if "connect" in _saved:
        transport.connect = _saved.pop("connect")
        transport.tls_context = _saved.pop("tls_context")
    if "packet_fits" in _saved:
        transport.packet_fits = _saved.pop("packet_fits")
    if "log" in _saved:
        log.log = _saved.pop("log")


def set_free_heap(free):
    """Makes transport.packet_fits judge against `free` bytes of heap (the same rule, a fixed figure: CPython has no
    gc.mem_free, and a test must not depend on the runtime's heap); uninstall() puts it back."""
    if "packet_fits" not in _saved:
        _saved["packet_fits"] = transport.packet_fits

    def packet_fits(n, need=None):
        if need is None:
            need = n + transport.headroom(n)
        return None if need <= free else transport.too_large(n, free, need=need)

    transport.packet_fits = packet_fits


def record_log():
    """The events logged from now on, as (event, {name: value}) in a list; uninstall() stops recording."""
    events = []
    if "log" not in _saved:
        _saved["log"] = log.log
    saved = _saved["log"]

    def recorder(severity, event, pairs=()):
        events.append((event, dict(pairs)))
        saved(severity, event, pairs)

    log.log = recorder
    return events
