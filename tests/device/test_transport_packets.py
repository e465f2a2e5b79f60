# transport.Connection.read_packet on scripted bytes: a PUBLISH is admitted by its remaining length before any of it
# is read, a payload from stream_over on is handed over still in the socket (and read past when its receiver leaves
# it), and a packet larger than any IoT Hub message ends the connection with a classified error.
from shell_fakes import set_free_heap, uninstall

from azprov import transport
from azprov.errors import ProvisioningError


def teardown_function(function=None):
    uninstall()


class _Socket:
    # DeadlineSocket's reading side over fixed bytes.
    def __init__(self, data):
        self.data = bytes(data)
        self.at = 0

    def read(self, n):
        out = self.data[self.at : self.at + n]
        self.at += len(out)
        return bytearray(out)

    def fill(self, view):
        n = len(view)
        assert self.at + n <= len(self.data), "read past the end of the script"
        view[:] = self.data[self.at : self.at + n]
        self.at += n

    def setblocking(self, flag):
        pass


class _Mqtt:
    def __init__(self, data):
        self.sock = _Socket(data)

    def set_callback(self, callback):
        pass


def _length(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def publish(topic, payload, pid=None):
    topic = topic.encode()
    head = bytes((len(topic) >> 8, len(topic) & 255)) + topic
    if pid is not None:
        head += bytes((pid >> 8, pid & 255))
    first = 0x32 if pid is not None else 0x30
    return bytes((first,)) + _length(len(head) + len(payload)) + head + payload


def _connection(data, on_message, max_packet=transport.DEFAULT_MAX_PACKET):
    connection = transport.Connection(_Mqtt(data), on_message, "gateway", max_packet)
    connection.stream_over = 1024
    return connection


def test_a_large_payload_is_handed_over_in_the_socket_and_the_next_packet_follows():
    big = bytes(range(256)) * 400  # 100 KB: a method payload near IoT Hub's limit
    data = publish("$iothub/methods/POST/echo/?$rid=1", big) + publish("devices/d/messages/devicebound/", b"hi", 7)
    got = []
    set_free_heap(1 << 20)

    def on_message(topic, body, pid):
        if isinstance(body, transport.PayloadStream):
            got.append((topic, body.size, bytes(body.read_all()), pid))
        else:
            got.append((topic, len(body), bytes(body), pid))

    connection = _connection(data, on_message)
    connection.read_packet()
    connection.read_packet()
    assert got == [
        (b"$iothub/methods/POST/echo/?$rid=1", len(big), big, None),
        (b"devices/d/messages/devicebound/", 2, b"hi", 7),
    ]


def test_a_payload_its_receiver_leaves_is_read_past():
    data = publish("devices/d/messages/devicebound/", b"x" * 60000, 3) + publish("$iothub/twin/res/200/?$rid=2", b"{}")
    got = []
    connection = _connection(data, lambda topic, body, pid: got.append((topic, pid)))
    connection.read_packet()
    connection.read_packet()
    assert got == [(b"devices/d/messages/devicebound/", 3), (b"$iothub/twin/res/200/?$rid=2", None)]


def test_a_payload_the_heap_cannot_take_is_read_past_by_take():
    data = publish("devices/d/messages/devicebound/", b"x" * 20000, 3) + publish("a/b", b"next")
    got = []
    set_free_heap(16 * 1024)

    def on_message(topic, body, pid):
        if isinstance(body, transport.PayloadStream):
            got.append(body.take(20000 + 20000))
        else:
            got.append(bytes(body))

    connection = _connection(data, on_message)
    connection.read_packet()
    connection.read_packet()
    assert got == [None, b"next"]


def test_a_packet_over_the_limit_is_refused_by_its_length_before_it_is_read():
    data = publish("devices/d/messages/devicebound/", b"x" * 5000)
    connection = _connection(data, lambda *args: None, max_packet=4096)
    try:
        connection.read_packet()
        raise AssertionError("a packet over the limit was read")
    except ProvisioningError as exc:
        assert exc.kind == "malformed_response" and "exceeds the 4096-byte limit" in exc.message, exc.message
    assert connection._sock.at == 3  # the fixed header only: the topic and payload were never read
    assert transport.DEFAULT_MAX_PACKET > 128 * 1024 + 1024  # IoT Hub's largest message to a device is admitted


def test_a_small_message_is_not_refused_while_the_heap_has_room_for_it():
    # A 2.7 KB DPS answer with 14 KB free: admitted (its parsed form and a little more), while a large message still
    # keeps the full PACKET_HEADROOM free after it.
    assert 2700 + transport.headroom(2700) <= 14 * 1024
    assert transport.headroom(2700) < transport.PACKET_HEADROOM
    assert transport.headroom(60000) == transport.PACKET_HEADROOM
    error = transport.too_large(20000, 16384, need=42000)
    assert error.kind == "out_of_memory" and "20000-byte" in error.message and "42000 needed" in error.message
