"""A small sans-IO MQTT 3.1.1 codec: bytes in, packet objects out, and back.

Only the packets DPS and IoT Hub/edgeHub use are modelled (CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE,
SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT). The codec is symmetric: the emulator decodes
what clients send and the test client decodes what the emulator sends, with the same code paths.

It does no I/O and keeps no session state, so it can be tested byte for byte and used from asyncio or from a
blocking socket alike. Everything malformed raises `MqttProtocolError` naming what is wrong; policy decisions
(for example "IoT Hub drops a QoS 2 publish") belong to the endpoints, not here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

# Control packet types (first nibble of the fixed header).
CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
PUBREC = 5
PUBREL = 6
PUBCOMP = 7
SUBSCRIBE = 8
SUBACK = 9
UNSUBSCRIBE = 10
UNSUBACK = 11
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14

PACKET_NAMES = {
    CONNECT: "CONNECT",
    CONNACK: "CONNACK",
    PUBLISH: "PUBLISH",
    PUBACK: "PUBACK",
    PUBREC: "PUBREC",
    PUBREL: "PUBREL",
    PUBCOMP: "PUBCOMP",
    SUBSCRIBE: "SUBSCRIBE",
    SUBACK: "SUBACK",
    UNSUBSCRIBE: "UNSUBSCRIBE",
    UNSUBACK: "UNSUBACK",
    PINGREQ: "PINGREQ",
    PINGRESP: "PINGRESP",
    DISCONNECT: "DISCONNECT",
}

# CONNACK return codes (MQTT 3.1.1 section 3.2.2.3).
CONNACK_ACCEPTED = 0
CONNACK_UNACCEPTABLE_PROTOCOL = 1
CONNACK_IDENTIFIER_REJECTED = 2
CONNACK_SERVER_UNAVAILABLE = 3
CONNACK_BAD_USERNAME_OR_PASSWORD = 4
CONNACK_NOT_AUTHORIZED = 5

SUBACK_FAILURE = 0x80

# The largest remaining length MQTT can express (four varint bytes).
MAX_REMAINING_LENGTH = 268_435_455
# Default cap on one packet: IoT Hub messages are at most 256 KiB; leave room for topic and headers.
DEFAULT_MAX_PACKET = 512 * 1024


class MqttProtocolError(ValueError):
    """The bytes are not a valid MQTT 3.1.1 packet (or exceed a configured limit)."""


# --------------------------------------------------------------------------------------------- packets


@dataclass
class Connect:
    client_id: str
    username: str | None = None
    password: bytes | None = None
    keepalive: int = 60
    clean_session: bool = True
    protocol_name: str = "MQTT"
    protocol_level: int = 4
    will_topic: str | None = None
    will_message: bytes | None = None
    will_qos: int = 0
    will_retain: bool = False

    def __repr__(self):  # never show the password (a SAS token) in logs or assertion messages
        return (
            f"Connect(client_id={self.client_id!r}, username={self.username!r}, "
            f"password={'<redacted>' if self.password is not None else None}, keepalive={self.keepalive}, "
            f"clean_session={self.clean_session}, protocol={self.protocol_name!r}/{self.protocol_level})"
        )


@dataclass
class ConnAck:
    return_code: int = CONNACK_ACCEPTED
    session_present: bool = False


@dataclass
class Publish:
    topic: str
    payload: bytes = b""
    qos: int = 0
    packet_id: int | None = None
    retain: bool = False
    dup: bool = False


@dataclass
class PubAck:
    packet_id: int


@dataclass
class Subscribe:
    packet_id: int
    topics: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class SubAck:
    packet_id: int
    return_codes: list[int] = field(default_factory=list)


@dataclass
class Unsubscribe:
    packet_id: int
    topics: list[str] = field(default_factory=list)


@dataclass
class UnsubAck:
    packet_id: int


@dataclass
class PingReq:
    pass


@dataclass
class PingResp:
    pass


@dataclass
class Disconnect:
    pass


Packet = (
    Connect | ConnAck | Publish | PubAck | Subscribe | SubAck | Unsubscribe | UnsubAck | PingReq | PingResp | Disconnect
)


# --------------------------------------------------------------------------------------------- primitives


def encode_remaining_length(length: int) -> bytes:
    if not 0 <= length <= MAX_REMAINING_LENGTH:
        raise MqttProtocolError(f"remaining length {length} out of range")
    out = bytearray()
    while True:
        byte, length = length % 128, length // 128
        if length:
            byte |= 0x80
        out.append(byte)
        if not length:
            return bytes(out)


def decode_remaining_length(data: bytes | bytearray, offset: int = 1) -> tuple[int, int] | None:
    """Decode the varint at `offset`. Returns (length, bytes used) or None when more bytes are needed."""
    multiplier, value = 1, 0
    for used in range(1, 5):
        if offset + used - 1 >= len(data):
            return None
        byte = data[offset + used - 1]
        value += (byte & 0x7F) * multiplier
        if not byte & 0x80:
            return value, used
        multiplier *= 128
    raise MqttProtocolError("remaining length uses more than four bytes")


def _encode_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return _encode_bytes(raw)


def _encode_bytes(raw: bytes) -> bytes:
    if len(raw) > 0xFFFF:
        raise MqttProtocolError("string longer than 65535 bytes")
    return struct.pack("!H", len(raw)) + raw


class _Cursor:
    """Reads MQTT fields from one packet body, raising MqttProtocolError on truncation."""

    def __init__(self, body: bytes, what: str):
        self.body, self.pos, self.what = body, 0, what

    def remaining(self) -> int:
        return len(self.body) - self.pos

    def u8(self) -> int:
        if self.remaining() < 1:
            raise MqttProtocolError(f"{self.what}: truncated")
        self.pos += 1
        return self.body[self.pos - 1]

    def u16(self) -> int:
        if self.remaining() < 2:
            raise MqttProtocolError(f"{self.what}: truncated")
        self.pos += 2
        return struct.unpack_from("!H", self.body, self.pos - 2)[0]

    def raw(self, field_name: str) -> bytes:
        length = self.u16()
        if self.remaining() < length:
            raise MqttProtocolError(f"{self.what}: {field_name} runs past the end of the packet")
        self.pos += length
        return self.body[self.pos - length : self.pos]

    def text(self, field_name: str) -> str:
        raw = self.raw(field_name)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MqttProtocolError(f"{self.what}: {field_name} is not valid UTF-8") from exc
        if "\x00" in text:
            raise MqttProtocolError(f"{self.what}: {field_name} contains U+0000")
        return text

    def rest(self) -> bytes:
        data = self.body[self.pos :]
        self.pos = len(self.body)
        return data

    def done(self):
        if self.remaining():
            raise MqttProtocolError(f"{self.what}: {self.remaining()} unexpected trailing bytes")


# --------------------------------------------------------------------------------------------- encoding


def _frame(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + encode_remaining_length(len(body)) + body


def _check_packet_id(packet_id: int | None, what: str) -> int:
    if packet_id is None or not 1 <= packet_id <= 0xFFFF:
        raise MqttProtocolError(f"{what}: packet identifier must be 1..65535, got {packet_id!r}")
    return packet_id


def encode(packet: Packet) -> bytes:
    """Serialize one packet to its wire bytes."""
    if isinstance(packet, Connect):
        flags = 0
        payload = _encode_string(packet.client_id)
        if packet.clean_session:
            flags |= 0x02
        if packet.will_topic is not None:
            flags |= 0x04 | (packet.will_qos << 3) | (0x20 if packet.will_retain else 0)
            payload += _encode_string(packet.will_topic) + _encode_bytes(packet.will_message or b"")
        if packet.username is not None:
            flags |= 0x80
            payload += _encode_string(packet.username)
        if packet.password is not None:
            flags |= 0x40
            payload += _encode_bytes(packet.password)
        header = _encode_string(packet.protocol_name) + bytes([packet.protocol_level, flags])
        header += struct.pack("!H", packet.keepalive)
        return _frame(CONNECT << 4, header + payload)
    if isinstance(packet, ConnAck):
        return _frame(CONNACK << 4, bytes([1 if packet.session_present else 0, packet.return_code]))
    if isinstance(packet, Publish):
        if packet.qos not in (0, 1, 2):
            raise MqttProtocolError(f"PUBLISH: invalid QoS {packet.qos}")
        first = (PUBLISH << 4) | (packet.qos << 1) | (0x08 if packet.dup else 0) | (0x01 if packet.retain else 0)
        body = _encode_string(packet.topic)
        if packet.qos:
            body += struct.pack("!H", _check_packet_id(packet.packet_id, "PUBLISH"))
        return _frame(first, body + bytes(packet.payload))
    if isinstance(packet, PubAck):
        return _frame(PUBACK << 4, struct.pack("!H", _check_packet_id(packet.packet_id, "PUBACK")))
    if isinstance(packet, Subscribe):
        if not packet.topics:
            raise MqttProtocolError("SUBSCRIBE: no topic filters")
        body = struct.pack("!H", _check_packet_id(packet.packet_id, "SUBSCRIBE"))
        for topic, qos in packet.topics:
            body += _encode_string(topic) + bytes([qos])
        return _frame((SUBSCRIBE << 4) | 0x02, body)
    if isinstance(packet, SubAck):
        body = struct.pack("!H", _check_packet_id(packet.packet_id, "SUBACK")) + bytes(packet.return_codes)
        return _frame(SUBACK << 4, body)
    if isinstance(packet, Unsubscribe):
        if not packet.topics:
            raise MqttProtocolError("UNSUBSCRIBE: no topic filters")
        body = struct.pack("!H", _check_packet_id(packet.packet_id, "UNSUBSCRIBE"))
        body += b"".join(_encode_string(topic) for topic in packet.topics)
        return _frame((UNSUBSCRIBE << 4) | 0x02, body)
    if isinstance(packet, UnsubAck):
        return _frame(UNSUBACK << 4, struct.pack("!H", _check_packet_id(packet.packet_id, "UNSUBACK")))
    if isinstance(packet, PingReq):
        return bytes([PINGREQ << 4, 0])
    if isinstance(packet, PingResp):
        return bytes([PINGRESP << 4, 0])
    if isinstance(packet, Disconnect):
        return bytes([DISCONNECT << 4, 0])
    raise TypeError(f"cannot encode {type(packet).__name__}")


# --------------------------------------------------------------------------------------------- decoding

# Fixed-header flag nibbles the spec mandates for each type (PUBLISH carries its own flags).
_REQUIRED_FLAGS = {
    CONNECT: 0,
    CONNACK: 0,
    PUBACK: 0,
    SUBSCRIBE: 2,
    SUBACK: 0,
    UNSUBSCRIBE: 2,
    UNSUBACK: 0,
    PINGREQ: 0,
    PINGRESP: 0,
    DISCONNECT: 0,
}


def decode_packet(first_byte: int, body: bytes) -> Packet:
    """Decode one packet from its first header byte and its body (the bytes after the remaining length)."""
    packet_type, flags = first_byte >> 4, first_byte & 0x0F
    name = PACKET_NAMES.get(packet_type)
    if name is None:
        raise MqttProtocolError(f"reserved packet type {packet_type}")
    if packet_type in (PUBREC, PUBREL, PUBCOMP):
        raise MqttProtocolError(f"{name} is not supported (QoS 2 is not used by Azure IoT)")
    if packet_type != PUBLISH and flags != _REQUIRED_FLAGS[packet_type]:
        raise MqttProtocolError(f"{name}: invalid fixed-header flags {flags:#x}")
    cur = _Cursor(body, name)

    if packet_type == CONNECT:
        protocol_name = cur.text("protocol name")
        protocol_level = cur.u8()
        connect_flags = cur.u8()
        if connect_flags & 0x01:
            raise MqttProtocolError("CONNECT: reserved flag bit 0 is set")
        keepalive = cur.u16()
        client_id = cur.text("client id")
        will_topic = will_message = None
        will_qos = (connect_flags >> 3) & 0x03
        if connect_flags & 0x04:
            if will_qos == 3:
                raise MqttProtocolError("CONNECT: will QoS 3")
            will_topic = cur.text("will topic")
            will_message = cur.raw("will message")
        elif will_qos or connect_flags & 0x20:
            raise MqttProtocolError("CONNECT: will QoS/retain set without a will")
        username = cur.text("user name") if connect_flags & 0x80 else None
        if connect_flags & 0x40 and not connect_flags & 0x80:
            raise MqttProtocolError("CONNECT: password flag set without user name flag")
        password = cur.raw("password") if connect_flags & 0x40 else None
        cur.done()
        return Connect(
            client_id=client_id,
            username=username,
            password=password,
            keepalive=keepalive,
            clean_session=bool(connect_flags & 0x02),
            protocol_name=protocol_name,
            protocol_level=protocol_level,
            will_topic=will_topic,
            will_message=will_message,
            will_qos=will_qos,
            will_retain=bool(connect_flags & 0x20),
        )
    if packet_type == CONNACK:
        ack_flags = cur.u8()
        if ack_flags & 0xFE:
            raise MqttProtocolError("CONNACK: reserved acknowledge flags set")
        return_code = cur.u8()
        cur.done()
        return ConnAck(return_code=return_code, session_present=bool(ack_flags & 0x01))
    if packet_type == PUBLISH:
        qos = (flags >> 1) & 0x03
        if qos == 3:
            raise MqttProtocolError("PUBLISH: QoS 3 is invalid")
        topic = cur.text("topic name")
        if not topic:
            raise MqttProtocolError("PUBLISH: empty topic name")
        if "+" in topic or "#" in topic:
            raise MqttProtocolError("PUBLISH: wildcard in topic name")
        packet_id = cur.u16() if qos else None
        if qos and packet_id == 0:
            raise MqttProtocolError("PUBLISH: packet identifier 0")
        return Publish(
            topic=topic,
            payload=cur.rest(),
            qos=qos,
            packet_id=packet_id,
            retain=bool(flags & 0x01),
            dup=bool(flags & 0x08),
        )
    if packet_type in (PUBACK, UNSUBACK):
        packet_id = cur.u16()
        cur.done()
        return PubAck(packet_id) if packet_type == PUBACK else UnsubAck(packet_id)
    if packet_type == SUBSCRIBE:
        packet_id = cur.u16()
        topics = []
        while cur.remaining():
            topic = cur.text("topic filter")
            requested = cur.u8()
            if requested & 0xFC or requested == 3:
                raise MqttProtocolError(f"SUBSCRIBE: invalid requested QoS byte {requested:#x}")
            topics.append((topic, requested))
        if not topics:
            raise MqttProtocolError("SUBSCRIBE: no topic filters")
        return Subscribe(packet_id, topics)
    if packet_type == SUBACK:
        packet_id = cur.u16()
        return SubAck(packet_id, list(cur.rest()))
    if packet_type == UNSUBSCRIBE:
        packet_id = cur.u16()
        topics = []
        while cur.remaining():
            topics.append(cur.text("topic filter"))
        if not topics:
            raise MqttProtocolError("UNSUBSCRIBE: no topic filters")
        return Unsubscribe(packet_id, topics)
    cur.done()
    return {PINGREQ: PingReq, PINGRESP: PingResp, DISCONNECT: Disconnect}[packet_type]()


class PacketReader:
    """Incremental decoder: feed it bytes as they arrive, take whole packets out."""

    def __init__(self, max_packet: int = DEFAULT_MAX_PACKET):
        self._buffer = bytearray()
        self.max_packet = max_packet

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def peek(self) -> int | None:
        """The first buffered byte (the next packet's type and flags), or None."""
        return self._buffer[0] if self._buffer else None

    def next_packet(self) -> Packet | None:
        """The next complete packet, or None when more bytes are needed."""
        if not self._buffer:
            return None
        header = decode_remaining_length(self._buffer, 1)
        if header is None:
            return None
        length, used = header
        if length > self.max_packet:
            raise MqttProtocolError(f"packet of {length} bytes exceeds the {self.max_packet}-byte limit")
        end = 1 + used + length
        if len(self._buffer) < end:
            return None
        first_byte = self._buffer[0]
        body = bytes(self._buffer[1 + used : end])
        del self._buffer[:end]
        return decode_packet(first_byte, body)

    def packets(self):
        """Every complete packet currently buffered."""
        while (packet := self.next_packet()) is not None:
            yield packet


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic filter matching (`+` one level, `#` the rest); `$` topics only match explicit filters."""
    filter_levels, topic_levels = topic_filter.split("/"), topic.split("/")
    if topic.startswith("$") and filter_levels[0] in ("+", "#"):
        return False
    for index, level in enumerate(filter_levels):
        if level == "#":
            return index == len(filter_levels) - 1
        if index >= len(topic_levels):
            return False
        if level != "+" and level != topic_levels[index]:
            return False
    return len(filter_levels) == len(topic_levels)
