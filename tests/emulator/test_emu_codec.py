"""The sans-IO MQTT 3.1.1 codec: byte vectors from the spec, round trips, incremental decoding, rejections."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from host_tools.emulator import mqtt_codec as mqtt


@pytest.mark.parametrize(
    "length, encoded",
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (2_097_151, b"\xff\xff\x7f"),
        (2_097_152, b"\x80\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_remaining_length_vectors(length, encoded):
    assert mqtt.encode_remaining_length(length) == encoded
    assert mqtt.decode_remaining_length(b"\x30" + encoded) == (length, len(encoded))


def test_remaining_length_limits():
    with pytest.raises(mqtt.MqttProtocolError):
        mqtt.encode_remaining_length(268_435_456)
    with pytest.raises(mqtt.MqttProtocolError, match="more than four bytes"):
        mqtt.decode_remaining_length(b"\x30\xff\xff\xff\xff\x01")
    assert mqtt.decode_remaining_length(b"\x30\x80") is None  # needs more bytes


def test_known_encodings():
    assert mqtt.encode(mqtt.PingReq()) == b"\xc0\x00"
    assert mqtt.encode(mqtt.PingResp()) == b"\xd0\x00"
    assert mqtt.encode(mqtt.Disconnect()) == b"\xe0\x00"
    assert mqtt.encode(mqtt.ConnAck(5)) == b"\x20\x02\x00\x05"
    assert mqtt.encode(mqtt.PubAck(0x1234)) == b"\x40\x02\x12\x34"
    assert mqtt.encode(mqtt.SubAck(1, [1, 0x80])) == b"\x90\x04\x00\x01\x01\x80"
    assert mqtt.encode(mqtt.Publish("a/b", b"hi", qos=1, packet_id=10)) == b"\x32\x09\x00\x03a/b\x00\x0ahi"
    assert mqtt.encode(mqtt.Subscribe(2, [("a/#", 1)])) == b"\x82\x08\x00\x02\x00\x03a/#\x01"
    connect = mqtt.encode(mqtt.Connect("c", username="u", password=b"p", keepalive=60))
    # "MQTT", level 4, flags: username + password + clean session, keep-alive 60, then the payload strings.
    assert connect == b"\x10\x13\x00\x04MQTT\x04\xc2\x00\x3c\x00\x01c\x00\x01u\x00\x01p"


ROUND_TRIP = [
    mqtt.Connect(
        "dev-1",
        username="scope/registrations/dev-1/api-version=2019-03-31",
        password=b"tok",
        keepalive=30,
        clean_session=False,
    ),
    mqtt.Connect("dev-2", will_topic="w", will_message=b"bye", will_qos=1, will_retain=True),
    mqtt.Connect("", username=None, password=None, keepalive=0),
    mqtt.ConnAck(0, session_present=True),
    mqtt.Publish("devices/d/messages/events/%24.ct=application%2Fjson", b'{"a":1}', qos=0),
    mqtt.Publish(
        "$dps/registrations/res/202/?$rid=1&retry-after=3", b"x" * 300, qos=1, packet_id=65535, retain=True, dup=True
    ),
    mqtt.Publish("q2", b"", qos=2, packet_id=7),
    mqtt.PubAck(1),
    mqtt.Subscribe(3, [("$dps/registrations/res/#", 1), ("x/+/y", 0)]),
    mqtt.SubAck(3, [1, 0x80]),
    mqtt.Unsubscribe(4, ["a", "b"]),
    mqtt.UnsubAck(4),
    mqtt.PingReq(),
    mqtt.PingResp(),
    mqtt.Disconnect(),
]


@pytest.mark.parametrize("packet", ROUND_TRIP, ids=lambda p: type(p).__name__)
def test_round_trip(packet):
    reader = mqtt.PacketReader()
    reader.feed(mqtt.encode(packet))
    assert reader.next_packet() == packet
    assert reader.next_packet() is None


def test_incremental_feeding_byte_by_byte():
    stream = b"".join(mqtt.encode(p) for p in ROUND_TRIP)
    reader = mqtt.PacketReader()
    decoded = []
    for i in range(len(stream)):
        reader.feed(stream[i : i + 1])
        decoded.extend(reader.packets())
    assert decoded == ROUND_TRIP
    assert reader.buffered == 0


@settings(max_examples=150, deadline=None)
@given(
    topic=st.text(
        alphabet=st.characters(blacklist_characters="#+\x00", blacklist_categories=("Cs",)), min_size=1, max_size=60
    ),
    payload=st.binary(max_size=400),
    qos=st.integers(0, 1),
    packet_id=st.integers(1, 65535),
)
def test_publish_round_trip_property(topic, payload, qos, packet_id):
    packet = mqtt.Publish(topic, payload, qos=qos, packet_id=packet_id if qos else None)
    reader = mqtt.PacketReader()
    reader.feed(mqtt.encode(packet))
    assert reader.next_packet() == packet


def test_connect_repr_hides_password():
    text = repr(mqtt.Connect("d", username="u", password=b"SharedAccessSignature sr=x&sig=SECRET&se=1"))
    assert "SECRET" not in text and "redacted" in text


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x36\x05\x00\x01a\x00\x01", "QoS 3"),
        (b"\x00\x00", "reserved packet type"),
        (b"\xf0\x00", "reserved packet type"),
        (b"\x80\x06\x00\x01\x00\x01a\x01", "flags"),  # SUBSCRIBE must have flags 0b0010
        (b"\x50\x02\x00\x01", "PUBREC is not supported"),
        (b"\x30\x03\x00\x05a", "runs past the end"),
        (b"\x30\x04\x00\x02\xff\xfe", "not valid UTF-8"),
        (b"\x30\x03\x00\x01#", "wildcard"),
        (b"\x32\x05\x00\x01a\x00\x00", "packet identifier 0"),
        (b"\x82\x02\x00\x01", "no topic filters"),
        (b"\x82\x06\x00\x01\x00\x01a\x03", "requested QoS"),
        (b"\x10\x0c\x00\x04MQTT\x04\x01\x00\x3c\x00\x00", "reserved flag"),
        (b"\x10\x0e\x00\x04MQTT\x04\x40\x00\x3c\x00\x00\x00\x00", "password flag set without user name"),
        (b"\xc0\x01\x00", "trailing"),
    ],
)
def test_malformed_packets_are_rejected_with_a_reason(data, message):
    reader = mqtt.PacketReader()
    reader.feed(data)
    with pytest.raises(mqtt.MqttProtocolError, match=message):
        reader.next_packet()


def test_packet_size_limit():
    reader = mqtt.PacketReader(max_packet=100)
    reader.feed(b"\x30" + mqtt.encode_remaining_length(101))
    with pytest.raises(mqtt.MqttProtocolError, match="exceeds"):
        reader.next_packet()


def test_encoder_rejects_bad_packet_ids():
    with pytest.raises(mqtt.MqttProtocolError):
        mqtt.encode(mqtt.Publish("t", b"", qos=1, packet_id=None))
    with pytest.raises(mqtt.MqttProtocolError):
        mqtt.encode(mqtt.PubAck(0))


@pytest.mark.parametrize(
    "topic_filter, topic, matches",
    [
        ("$dps/registrations/res/#", "$dps/registrations/res/202/?$rid=1&retry-after=3", True),
        ("$dps/registrations/res/#", "$dps/registrations/res", True),
        ("#", "$dps/registrations/res/200/?$rid=1", False),
        ("+/registrations/res/#", "$dps/registrations/res/200", False),
        ("a/+/c", "a/b/c", True),
        ("a/+/c", "a/b/d", False),
        ("a/+", "a/b/c", False),
        ("a/#", "a", True),
        ("devices/d/messages/devicebound/#", "devices/d/messages/devicebound/%24.to=x", True),
    ],
)
def test_topic_matching(topic_filter, topic, matches):
    assert mqtt.topic_matches(topic_filter, topic) is matches
