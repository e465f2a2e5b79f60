# TLS and MQTT plumbing shared by the DPS and gateway legs.
#
# umqtt.simple exists in two shapes: 1.3.4 (the PyPI release) wraps its socket with `ussl.wrap_socket(sock,
# **ssl_params)`, 1.6 and later (frozen into ESP32 firmware) call `ssl.wrap_socket(sock, server_hostname=...)` on
# the object passed as `ssl`. We pass an object that serves both, so the same SSLContext (CERT_REQUIRED, host
# name checked) is used whichever is installed. Every read and write then goes through DeadlineSocket, because
# umqtt's wait_msg() switches the socket back to blocking mode, which would let a silent peer hang us forever.
import gc
import select
import socket
import ssl
import sys
import time

from micropython import const

from azprov import errors, watchdog
from azprov.errors import ProvisioningError
from azprov.pem import PemError, der_certificates

_POLL_SLICE_MS = const(50)
_FEED_SLICE_MS = const(1000)  # the longest poll between two watchdog feeds (its timeout is at least 20 s)
_COLLECT_BEFORE_BYTES = const(1024)
_IPPROTO_TCP = const(6)  # the same numbers on Linux and lwIP
_TCP_NODELAY = const(1)
# The largest packet a gateway connection admits, judged by its remaining length before anything of it is read:
# above IoT Hub's largest message to a device (a 128 KB method payload; C2D 64 KB, desired 32 KB) with its topic.
# Anything larger is not from IoT Hub; a message within its limits never ends the connection (the owner holds it or
# reads past it: PayloadStream).
DEFAULT_MAX_PACKET = const(196608)
# The reusable receive buffer: fixed headers, topics, and payloads read past in pieces.
_SCRATCH_BYTES = const(512)
# How a server that refuses the client certificate ends the handshake, as the client sees it: its fatal alert
# (MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE), the end of the stream (MBEDTLS_ERR_SSL_CONN_EOF), a reset (ECONNRESET) or a
# broken pipe while still writing (EPIPE); Linux and lwIP share these errno values.
_HANDSHAKE_ENDED = (-30592, -29312, 104, 32)
# Heap a received packet must leave free for what handles it, at most (a DPS answer: one certificate of its trust
# bundle at a time, its DER form and the TLS stack's check of it, plus the small parsed JSON). A small packet needs
# less: its parsed form and _HEADROOM_BASE; see headroom(). Measured on the 32-bit build: json.loads of an answer
# made of strings peaks at its own size again (2,558 B -> 2,592 B, 8,050 B -> 8,096 B); one of many small members
# at up to 3.2 times (2,705 B -> 9,568 B): a MemoryError while parsing is still classified (out_of_memory; a hub
# message is then handled as too large: azprov.hub.parse).
PACKET_HEADROOM = const(8192)
_HEADROOM_BASE = const(2048)


def headroom(n):
    """Heap an n-byte packet must leave free after it: its parsed JSON (measured on the 32-bit build at about its
    own size) plus a little, never more than PACKET_HEADROOM."""
    return min(PACKET_HEADROOM, n + _HEADROOM_BASE)


def packet_fits(n, need=None):
    """None when an n-byte packet can be read and handled in the free heap (`need`: the bytes it needs in all,
    default n + headroom(n)), else the OUT_OF_MEMORY error naming the size and the free heap (the limit for
    messages: derived from free heap, not fixed)."""
    if need is None:
        need = n + headroom(n)
    gc.collect()
    free = gc.mem_free()
    if need <= free:
        return None
    return too_large(n, free, need=need)


def too_large(n, free=None, streamed=False, need=None):
    """The OUT_OF_MEMORY error for an n-byte message, naming its size and the free heap."""
    if free is None:
        gc.collect()
        free = gc.mem_free()
    if streamed:
        return ProvisioningError(
            errors.OUT_OF_MEMORY, "a %d-byte message does not fit: %d bytes of heap free while it streamed" % (n, free)
        )
    return ProvisioningError(
        errors.OUT_OF_MEMORY,
        "a %d-byte message does not fit: %d bytes of heap free, %d needed in one block and after it"
        % (n, free, need if need is not None else n + headroom(n)),
    )


def tls_context(pem_texts, source="dps_ca_file", kind=errors.CONFIGURATION):
    """A client context that trusts exactly the certificates in `pem_texts` (PEM text or lines, or a DER
    certificate's bytes: see azprov.pem.der_certificates; each certificate loaded as DER, one by one) and
    requires a valid chain and a matching host name. Returns (context, number_of_certificates). Certificates
    that cannot be loaded give a `kind` error naming `source` (the file they came from)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    count = 0
    try:
        for text in pem_texts:
            for der in der_certificates(text):
                ctx.load_verify_locations(cadata=der)
                count += 1
    except (PemError, UnicodeError) as exc:  # not PEM text, or a certificate in it is broken
        raise ProvisioningError(
            kind, "%s: %s (a PEM file of certificates, or one DER certificate, is expected)" % (source, exc)
        )
    except (ValueError, OSError) as exc:  # mbedTLS raises ValueError("invalid cert")
        raise ProvisioningError(kind, "%s: certificate %d cannot be loaded: %s" % (source, count + 1, exc))
    if not count:
        raise ProvisioningError(kind, "%s: no CA certificate to verify the server with" % source)
    return ctx, count


def use_client_certificate(ctx, certificates, key):
    """Makes `ctx` present the device certificate and its intermediates (DER, device certificate first) with `key`.
    One load_cert_chain() call per certificate: mbedTLS appends each to the chain it sends, while a concatenation
    would silently load only the first."""
    try:
        for der in certificates:
            ctx.load_cert_chain(der, key)
    except (ValueError, OSError) as exc:
        # mbedTLS says "invalid key" or "invalid cert"; neither text holds key material.
        raise ProvisioningError(
            errors.CONFIGURATION, "certificate_file/private_key_file: the TLS stack cannot load them (%s)" % exc
        )


def drop_empty_password(packet):
    """A CONNECT packet as umqtt.simple writes it with a user name and an empty password, rewritten without the
    password: an X.509 client sends none at all (edgeHub takes any password field, even an empty one, as SAS).
    Anything else is returned unchanged."""
    if not packet or packet[0] != 0x10:
        return packet
    pos = 1
    length = 0
    shift = 0
    while True:
        byte = packet[pos]
        length |= (byte & 0x7F) << shift
        pos += 1
        shift += 7
        if not byte & 0x80:
            break
    body = bytearray(packet[pos : pos + length])
    # body: protocol name (00 04 "MQTT"), level, flags at offset 7, keepalive, then the payload; the password is
    # the last field of the payload.
    if len(body) < 12 or not body[7] & 0x40 or body[-2:] != b"\0\0":
        return packet
    body = body[:-2]
    body[7] &= 0xBF
    out = bytearray((0x10,))
    size = len(body)
    while True:
        byte = size & 0x7F
        size >>= 7
        out.append(byte | 0x80 if size else byte)
        if not size:
            break
    return out + body + packet[pos + length :]


class DeadlineSocket:
    """A TLS stream where every blocking read or write gives up after `timeout_ms` with OSError(ETIMEDOUT), and a
    read larger than the free heap can take is refused before memory is spent on it (packet sizes are judged by
    Connection, from the remaining length)."""

    def __init__(self, tls, timeout_ms):
        self._tls = tls
        self._timeout_ms = timeout_ms
        self._blocking = True
        self._pending = bytearray()
        self.no_password = False  # set for X.509: the first packet (CONNECT) goes out without a password field
        tls.setblocking(False)
        self._poll = select.poll()
        self._poll.register(tls, select.POLLIN)

    def setblocking(self, flag):
        self._blocking = flag

    def wait_readable(self, timeout_ms):
        """True when data arrived within `timeout_ms`; the watchdog is fed before each slice of the wait."""
        self.flush()
        self._poll.modify(self._tls, select.POLLIN)
        end = time.ticks_add(time.ticks_ms(), timeout_ms)
        while True:
            watchdog.feed()
            remaining = max(0, time.ticks_diff(end, time.ticks_ms()))
            if self._poll.poll(min(remaining, _FEED_SLICE_MS)):
                return True
            if not remaining:
                return False

    def _wait(self, deadline, events):
        remaining = time.ticks_diff(deadline, time.ticks_ms())
        if remaining <= 0:
            raise OSError(110)  # ETIMEDOUT
        watchdog.feed()
        self._poll.modify(self._tls, events)
        self._poll.poll(min(remaining, _POLL_SLICE_MS))

    def read(self, n):
        self.flush()
        if n >= _COLLECT_BEFORE_BYTES:
            # A DPS result with a trust bundle needs one contiguous block: make room first, and refuse what cannot
            # fit with a classified error rather than a MemoryError half-way.
            error = packet_fits(n)
            if error is not None:
                raise error
        try:
            buf = bytearray(n)
        except MemoryError:  # enough heap in total, but not in one block
            raise too_large(n)
        view = memoryview(buf)
        got = 0
        deadline = time.ticks_add(time.ticks_ms(), self._timeout_ms)
        while got < n:
            count = self._tls.readinto(view[got:])
            if count is None:
                if not self._blocking and not got:
                    return None
                self._wait(deadline, select.POLLIN)
            elif count == 0:
                if got:
                    raise OSError(104)  # ECONNRESET: the peer closed in the middle of a packet
                return b""
            else:
                got += count
        return buf

    def fill(self, view):
        """Reads exactly len(view) bytes into `view` (blocking, within the deadline)."""
        got = 0
        n = len(view)
        deadline = time.ticks_add(time.ticks_ms(), self._timeout_ms)
        while got < n:
            count = self._tls.readinto(view[got:])
            if count is None:
                self._wait(deadline, select.POLLIN)
            elif count == 0:
                raise OSError(104)  # ECONNRESET: the peer closed in the middle of a packet
            else:
                got += count

    def write(self, data, length=None):
        # umqtt writes each packet in several small pieces. Sent one by one, they would each become a TLS record
        # and meet Nagle's algorithm and delayed ACKs (about 200 ms per exchange); they are collected here and
        # sent together when the caller next waits for an answer.
        if isinstance(data, str):
            data = data.encode()
        view = memoryview(data)
        if length is not None:
            view = view[:length]
        if len(view) >= _COLLECT_BEFORE_BYTES and not self.no_password:
            # A large payload (a method answer) goes out from where it is, not copied into the pending bytes.
            self.flush()
            self._send(view)
        else:
            self._pending.extend(view)
        return len(view)

    def flush(self):
        if not self._pending:
            return
        if self.no_password:
            self.no_password = False
            self._pending = drop_empty_password(self._pending)
        self._send(memoryview(self._pending))
        self._pending = bytearray()

    def _send(self, view):
        sent = 0
        deadline = time.ticks_add(time.ticks_ms(), self._timeout_ms)
        while sent < len(view):
            count = self._tls.write(view[sent:])
            if count is None:
                self._wait(deadline, select.POLLOUT)
            else:
                sent += count

    def close(self):
        try:
            self.flush()
        except Exception:
            pass  # closing anyway: a DISCONNECT that cannot be sent changes nothing
        try:
            self._poll.unregister(self._tls)
        except (OSError, ValueError):
            pass
        self._tls.close()


class PayloadStream:
    """An MQTT payload still in the socket (Connection.stream_over): whoever receives it must consume all
    `size` bytes before returning (readinto() pieces, read_all(), take(), or skip()), since the next packet follows
    it. `scratch` is the connection's reusable receive buffer (a memoryview), free while the payload streams: used
    to read past it, and by a receiver that reads it in pieces."""

    def __init__(self, sock, size, scratch=None):
        self._sock = sock
        self.size = size
        self.remaining = size
        self.scratch = scratch

    def readinto(self, view):
        n = min(len(view), self.remaining)
        self._sock.fill(view[:n])
        self.remaining -= n
        return n

    def skip(self):
        """Reads past what is left, a piece at a time, without holding it."""
        view = self.scratch
        if view is None:
            view = memoryview(bytearray(min(self.remaining, 256)))
        while self.remaining:
            self.readinto(view)

    def read_all(self, need=None):
        """The rest of the payload as one bytearray (refused, naming the size, when the free heap cannot take it
        with `need` bytes in all: see packet_fits)."""
        error = packet_fits(self.remaining, need)
        if error is not None:
            raise error
        try:
            buf = bytearray(self.remaining)
        except MemoryError:
            raise too_large(self.size)
        self._sock.fill(memoryview(buf))
        self.remaining = 0
        return buf

    def take(self, need=None):
        """The payload as one bytearray when the free heap can hold and handle it (`need` bytes in all), else
        None after reading past it: a message too large for the device never ends the connection."""
        try:
            return self.read_all(need)
        except ProvisioningError as exc:
            if exc.kind != errors.OUT_OF_MEMORY or self.remaining != self.size:
                raise  # a socket failure half-way: the connection is gone
        self.skip()
        return None


class _TimedContext:
    # What umqtt.simple >= 1.6 receives as `ssl`: bounds the handshake and hands back a DeadlineSocket.
    def __init__(self, ctx, timeout_ms, client_certificate=False):
        self._ctx = ctx
        self._timeout_ms = timeout_ms
        self._client_certificate = client_certificate

    def wrap_socket(self, sock, server_hostname=None, **_ignored):
        sock.settimeout(self._timeout_ms / 1000)
        # The handshake blocks (bounded by the socket timeout, below the watchdog's): feed on both sides of it.
        watchdog.feed()
        try:
            tls = self._ctx.wrap_socket(sock, server_hostname=server_hostname)
        except OSError as exc:
            if self._client_certificate and exc.args and exc.args[0] in _HANDSHAKE_ENDED:
                # The server ended the handshake after our certificate went out: it does not accept it (unknown CA,
                # missing intermediate, or a key that does not match the certificate). Whether that shows as its
                # alert, an end of stream, a reset or a broken pipe depends on timing.
                raise ProvisioningError(
                    errors.AUTHENTICATION,
                    "the server ended the TLS handshake after the device certificate (refused it: code %s)"
                    % exc.args[0],
                )
            raise
        watchdog.feed()
        wrapped = DeadlineSocket(tls, self._timeout_ms)
        wrapped.no_password = self._client_certificate
        return wrapped


class _BoundedSockets:
    # Stands in for the `socket` module inside umqtt.simple while it connects, so that the TCP connect itself is
    # bounded too (1.3.4 sets no timeout before connecting).
    def __init__(self, timeout_ms):
        self._timeout_s = timeout_ms / 1000

    def socket(self, *args):
        sock = socket.socket(*args)
        sock.settimeout(self._timeout_s)
        try:
            # Each exchange is one small request then a wait: Nagle's algorithm would only delay it.
            sock.setsockopt(_IPPROTO_TCP, _TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass  # a port without the option: slower exchanges, same result
        return sock

    def getaddrinfo(self, *args):
        return socket.getaddrinfo(*args)


class _LegacySsl:
    # What umqtt.simple 1.3.4 finds as `ussl` while it connects.
    @staticmethod
    def wrap_socket(sock, context=None, server_hostname=None, **_ignored):
        return context.wrap_socket(sock, server_hostname=server_hostname)


# errno values as the ports raise them: Linux (the Unix port) and newlib (ESP-IDF, where lwIP's errors land).
_LINUX_ERRNO = {
    101: "network unreachable",
    103: "connection aborted",
    104: "connection reset",
    111: "connection refused",
    113: "host unreachable",
}
_NEWLIB_ERRNO = {
    104: "connection reset",
    111: "connection refused",
    113: "connection aborted",
    114: "network unreachable",
    118: "host unreachable",
}


def _network_words(code):
    """(what a user reads, the code) for an OSError's first argument. A failed name lookup is a negative code
    (CPython's gaierror -2/-3, an ESP32's -202) or, on the Unix port, the text "[addrinfo error -2]"."""
    if isinstance(code, str):
        if "addrinfo" not in code:
            return "connection failed", code
        code = code.strip("[]").split()[-1]
        return "host name not found", code
    if code == -1:
        return "connection closed by the peer", code
    if isinstance(code, int) and (-11 <= code <= -2 or -210 <= code <= -200):  # getaddrinfo's EAI_* (glibc, lwIP)
        return "host name not found", code
    table = _NEWLIB_ERRNO if sys.platform == "esp32" else _LINUX_ERRNO
    return table.get(code, "connection failed"), code


def classify(exc, context):
    """The ProvisioningError for an exception raised by socket, TLS or umqtt code while doing `context`."""
    if isinstance(exc, ProvisioningError):
        return exc
    if isinstance(exc, OSError):
        code = exc.args[0] if exc.args else None
        if code == 110 or code == 116:  # ETIMEDOUT (Linux errno / lwIP errno)
            return ProvisioningError(errors.TIMEOUT, "%s: no answer in time" % context)
        words, code = _network_words(code)
        return ProvisioningError(errors.NETWORK, "%s: %s (%s)" % (context, words, code))
    if isinstance(exc, ValueError):
        # mbedTLS reports verification failures as ValueError with its own text (wrong CA, host name mismatch).
        return ProvisioningError(errors.TLS_VERIFICATION, "%s: server certificate rejected: %s" % (context, exc))
    if isinstance(exc, MemoryError):
        gc.collect()
        return ProvisioningError(
            errors.OUT_OF_MEMORY,
            "%s: message too large for free memory (%d bytes of heap free)" % (context, gc.mem_free()),
        )
    return ProvisioningError(
        errors.MALFORMED_RESPONSE, "%s: malformed MQTT packet (%s)" % (context, type(exc).__name__)
    )


def _connack_error(code, context):
    # MQTT 3.1.1 CONNACK: 4 bad user name or password, 5 not authorized; 1-3 are protocol/server problems.
    if code in (4, 5):
        return ProvisioningError(
            errors.AUTHENTICATION, "%s: refused at CONNACK (code %d)" % (context, code), status=code
        )
    if code == 3:
        return ProvisioningError(
            errors.SERVICE_UNAVAILABLE, "%s: server unavailable (CONNACK 3)" % context, status=code
        )
    return ProvisioningError(errors.BAD_REQUEST, "%s: refused at CONNACK (code %s)" % (context, code), status=code)


def connect(
    client_id,
    host,
    port,
    user,
    password,
    ctx,
    timeout_ms,
    keepalive=0,
    on_message=None,
    max_packet=DEFAULT_MAX_PACKET,
    context="connect",
):
    """A Connection over verified TLS, or a classified ProvisioningError. A `password` of None means X.509: `ctx`
    holds the client certificate and the CONNECT carries no password field. `on_message(topic, body, pid)` gets
    every PUBLISH (see Connection)."""
    import umqtt.simple as umqtt
    from umqtt.simple import MQTTClient, MQTTException

    x509 = password is None
    timed = _TimedContext(ctx, timeout_ms, client_certificate=x509)
    client = MQTTClient(
        client_id, host, port=port, user=user, password="" if x509 else password, keepalive=keepalive, ssl=timed
    )
    client.ssl_params = {"context": timed, "server_hostname": host}
    previous = sys.modules.get("ussl")
    sys.modules["ussl"] = _LegacySsl
    umqtt.socket = _BoundedSockets(timeout_ms)
    try:
        client.connect()
    except MQTTException as exc:
        _close_socket(client)
        raise _connack_error(exc.args[0] if exc.args else None, context)
    except Exception as exc:
        _close_socket(client)
        raise classify(exc, context)
    finally:
        umqtt.socket = socket
        if previous is None:
            del sys.modules["ussl"]
        else:
            sys.modules["ussl"] = previous
    return Connection(client, on_message, context, max_packet)


def _close_socket(client):
    sock = getattr(client, "sock", None)
    if sock is not None:
        try:
            sock.close()
        except Exception:
            pass
    client.sock = None


class Connection:
    """One MQTT connection, and the only code that knows umqtt.simple's internals. umqtt writes CONNECT, PUBLISH,
    SUBSCRIBE and PINGREQ and waits for their acknowledgements; every packet it reads comes through read_packet()
    here, which hands each PUBLISH to `on_message(topic, body, pid)` with its packet id instead of acknowledging it
    at once: the owner acknowledges with ack(pid) once the message was handled (a C2D message only after its
    handler returned). A payload of at least `stream_over` bytes is handed over as a PayloadStream still in the
    socket, which the callback must consume before it returns. Every failure is a classified ProvisioningError,
    after which the connection is closed."""

    def __init__(self, mqtt, on_message, context, max_packet=DEFAULT_MAX_PACKET):
        self._mqtt = mqtt
        self._sock = mqtt.sock
        self.on_message = on_message
        self.context = context
        self.max_packet = max_packet
        self.stream_over = None
        # One receive buffer for the connection's life: fixed headers, topics and skipped payloads are read into it
        # instead of a new bytearray per packet.
        self._scratch = memoryview(bytearray(_SCRATCH_BYTES))
        self.open = True
        mqtt.wait_msg = self.read_packet  # umqtt's publish/subscribe loops call it while they wait
        mqtt.set_callback(on_message)  # never called (read_packet delivers), but subscribe() asserts that one is set

    def _failed(self, exc, what):
        self.close()
        return classify(exc, what or self.context)

    def publish(self, topic, body, what=None):
        """Publishes at QoS 1 and returns when it was acknowledged."""
        try:
            self._mqtt.publish(topic.encode() if isinstance(topic, str) else topic, body, qos=1)
        except Exception as exc:
            raise self._failed(exc, what)

    def subscribe(self, topic_filter):
        try:
            self._mqtt.subscribe(topic_filter.encode(), 1)
        except Exception as exc:
            raise self._failed(exc, "%s subscribe" % self.context)

    def ping(self):
        try:
            self._mqtt.ping()
        except Exception as exc:
            raise self._failed(exc, None)

    def ack(self, pid):
        try:
            self._sock.write(bytes((0x40, 2, pid >> 8, pid & 255)))
            self._sock.flush()
        except Exception as exc:
            raise self._failed(exc, "%s acknowledge" % self.context)

    def receive(self, wait_ms):
        """Waits up to `wait_ms` for data, then reads every packet that arrived. True when something was read."""
        try:
            if not self._sock.wait_readable(wait_ms):
                return False
            self._mqtt.check_msg()
            while self.open and self._sock.wait_readable(0):
                self._mqtt.check_msg()
            return True
        except Exception as exc:
            raise self._failed(exc, None)

    def _length(self):
        # MQTT's variable-length integer (the packet's remaining length).
        one = self._scratch[:1]
        n = 0
        shift = 0
        while True:
            self._sock.fill(one)
            byte = one[0]
            n |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return n
            shift += 7
            if shift > 21:
                raise ProvisioningError(errors.MALFORMED_RESPONSE, "%s: bad MQTT length" % self.context)

    def _short(self):
        # A two-byte big-endian number (topic length, packet id).
        two = self._scratch[:2]
        self._sock.fill(two)
        return two[0] << 8 | two[1]

    def read_packet(self):
        # umqtt.simple's wait_msg, except that a PUBLISH goes to on_message with its packet id, unacknowledged, and
        # is admitted by its remaining length before any of it is read.
        sock = self._sock
        first = sock.read(1)
        sock.setblocking(True)
        if first is None:
            return None
        if first == b"":
            raise OSError(-1)
        if first == b"\xd0":  # PINGRESP
            sock.read(1)
            return None
        op = first[0]
        if op & 0xF0 != 0x30:
            return op  # an acknowledgement umqtt is waiting for: it reads the rest
        size = self._length()
        if self.max_packet is not None and size > self.max_packet:
            raise ProvisioningError(
                errors.MALFORMED_RESPONSE,
                "%s: a %d-byte packet exceeds the %d-byte limit" % (self.context, size, self.max_packet),
            )
        topic_length = self._short()
        scratch = self._scratch
        if topic_length <= len(scratch):
            sock.fill(scratch[:topic_length])
            topic = bytes(scratch[:topic_length])
        else:
            topic = bytes(sock.read(topic_length))
        size -= topic_length + 2
        pid = None
        if op & 6:
            if op & 6 != 2:
                raise ProvisioningError(errors.MALFORMED_RESPONSE, "%s: a QoS 2 message" % self.context)
            pid = self._short()
            size -= 2
        if size < 0:
            raise ProvisioningError(errors.MALFORMED_RESPONSE, "%s: a PUBLISH shorter than its topic" % self.context)
        if self.stream_over is not None and size >= self.stream_over:
            stream = PayloadStream(sock, size, scratch)
            self.on_message(topic, stream, pid)
            if stream.remaining:
                stream.skip()
            return None
        body = sock.read(size) if size > 0 else b""
        self.on_message(topic, body, pid)
        return None

    def close(self):
        """Drops the connection without a word (after a failure)."""
        self.open = False
        _close_socket(self._mqtt)

    def disconnect(self):
        """Says goodbye (DISCONNECT), then closes."""
        if self.open:
            try:
                self._mqtt.disconnect()
            except Exception:
                pass
        self.close()
