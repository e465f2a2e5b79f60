# The IoT Hub protocol core: telemetry topics, twin/method topics, and the parser for everything the hub sends.
import json

from fixtures import raises

from azprov import errors, hub


def test_telemetry_topic_encodes_system_and_application_properties():
    topic = hub.telemetry_topic(
        "dev-1",
        [("alert", "high temp"), ("k/x", "a&b=c")],
        content_type="application/json",
        content_encoding="utf-8",
        message_id="m:1",
        correlation_id="c 1",
    )
    assert topic == (
        "devices/dev-1/messages/events/$.mid=m%3A1&$.cid=c%201&$.ct=application%2Fjson&$.ce=utf-8"
        "&alert=high%20temp&k%2Fx=a%26b%3Dc"
    ), topic
    assert hub.telemetry_topic("dev-1") == "devices/dev-1/messages/events/"
    assert hub.telemetry_topic("d", {"n": 5, "flag": None}) in (
        "devices/d/messages/events/n=5&flag",
        "devices/d/messages/events/flag&n=5",
    )
    raises(errors.CONFIGURATION, lambda: hub.telemetry_topic("d", None, colour="red"))


def test_property_bag_round_trip():
    props = {"$.ct": "application/json", "name with space": "ü/&=%", "empty": "", "bare": None}
    assert hub.parse_property_bag(hub.property_bag(props)) == props


def test_parse_property_bag_as_iot_hub_sends_it():
    assert hub.parse_property_bag("prop1&prop2=&prop3=a%20string&%24.mid=m-1&plus=a+b") == {
        "prop1": None,
        "prop2": "",
        "prop3": "a string",
        "$.mid": "m-1",
        "plus": "a+b",
    }


def test_bad_percent_encoding_is_classified():
    raises(errors.MALFORMED_RESPONSE, hub.parse_property_bag, "a=%zz")
    raises(errors.MALFORMED_RESPONSE, hub.parse_property_bag, "a=%2")
    raises(errors.MALFORMED_RESPONSE, hub.parse_property_bag, "a=%ff")  # not UTF-8


def test_request_topics():
    assert hub.twin_get_topic("7") == "$iothub/twin/GET/?$rid=7"
    assert hub.reported_patch_topic("8") == "$iothub/twin/PATCH/properties/reported/?$rid=8"
    assert hub.method_response_topic(200, "3") == "$iothub/methods/res/200/?$rid=3"
    assert json.loads(hub.reported_body({"a": None})) == {"a": None}
    raises(errors.CONFIGURATION, hub.reported_body, [1])
    assert hub.method_response_body(None) == b""


def test_parse_twin_get_answer():
    body = b'{"desired": {"x": 1, "$version": 12}, "reported": {"$version": 3}}'
    message = hub.parse("dev", b"$iothub/twin/res/200/?$rid=5", body)
    assert message.kind == hub.TWIN_RESPONSE and message.status == 200 and message.rid == "5"
    twin = hub.twin_document(message)
    assert twin["desired"]["x"] == 1 and twin["desired"]["$version"] == 12


def test_parse_reported_answer_with_and_without_version():
    message = hub.parse("dev", b"$iothub/twin/res/204/?$rid=6&$version=9", b"")
    assert (message.status, message.rid, message.version, message.body) == (204, "6", 9, None)
    message = hub.parse("dev", b"$iothub/twin/res/204/?$rid=6", b"")  # edgeHub: no $version
    assert message.version is None and message.error is None


def test_twin_error_answers_are_classified():
    message = hub.parse("dev", b"$iothub/twin/res/429/?$rid=1", b"")
    raises(errors.THROTTLED, hub.twin_document, message)
    message = hub.parse("dev", b"$iothub/twin/res/503/?$rid=1", b"")
    raises(errors.SERVICE_UNAVAILABLE, hub.twin_document, message)
    message = hub.parse("dev", b"$iothub/twin/res/200/?$rid=1", b'{"desired": {}}')
    raises(errors.MALFORMED_RESPONSE, hub.twin_document, message)
    message = hub.parse("dev", b"$iothub/twin/res/200/?$rid=1", b"{not json")
    assert message.rid == "1" and message.error.kind == errors.MALFORMED_RESPONSE
    raises(errors.MALFORMED_RESPONSE, hub.parse, "dev", b"$iothub/twin/res/abc/?$rid=1", b"")
    raises(errors.MALFORMED_RESPONSE, hub.parse, "dev", b"$iothub/twin/res/200/", b"")


def test_parse_desired_patch():
    message = hub.parse("dev", b"$iothub/twin/PATCH/properties/desired/?$version=4", b'{"fw": "1.1", "$version": 4}')
    assert message.kind == hub.DESIRED and message.version == 4 and message.body == {"fw": "1.1"}
    message = hub.parse("dev", "$iothub/twin/PATCH/properties/desired/?$version=5", b'{"fw": null}')
    assert message.version == 5 and message.body == {"fw": None}
    for body in (b"[1]", b"{", b"", b'{"fw": 1, "$version": "x"}'):
        message = hub.parse("dev", b"$iothub/twin/PATCH/properties/desired/", body)
        assert message.error.kind == errors.MALFORMED_RESPONSE, body


def test_parse_method_request():
    message = hub.parse("dev", b"$iothub/methods/POST/reboot/?$rid=1", b'{"delay": 5}')
    assert (message.kind, message.name, message.rid, message.body) == (hub.METHOD, "reboot", "1", {"delay": 5})
    message = hub.parse("dev", b"$iothub/methods/POST/ping/?$rid=2", b"")
    assert message.body is None and message.error is None
    message = hub.parse("dev", b"$iothub/methods/POST/ping/?$rid=3", b'"text"')
    assert message.body == "text"
    message = hub.parse("dev", b"$iothub/methods/POST/ping/?$rid=4", b"{bad")
    assert message.rid == "4" and message.error.kind == errors.MALFORMED_RESPONSE
    raises(errors.MALFORMED_RESPONSE, hub.parse, "dev", b"$iothub/methods/POST/ping/", b"")


def test_parse_c2d_message():
    topic = (
        b"devices/dev-ec/messages/devicebound/%24.mid=mid-1&%24.to=%2Fdevices%2Fdev-ec%2Fmessages%2FdeviceBound"
        b"&%24.ct=application%2Fjson&%24.ce=utf-8&color=red&flag"
    )
    message = hub.parse("dev-ec", topic, b'{"c2d": true}')
    assert message.kind == hub.C2D and message.body == b'{"c2d": true}'
    assert message.properties == {
        "$.mid": "mid-1",
        "$.ct": "application/json",
        "$.ce": "utf-8",
        "color": "red",
        "flag": None,
    }
    # edgeHub: no trailing slash without properties; IoT Hub: a trailing slash
    assert hub.parse("d", b"devices/d/messages/devicebound", b"x").properties == {}
    assert hub.parse("d", b"devices/d/messages/devicebound/", b"").properties == {}
    message = hub.parse("d", b"devices/d/messages/devicebound/a=%g1", b"x")
    assert message.kind == hub.C2D and message.error.kind == errors.MALFORMED_RESPONSE


def test_unexpected_topics_are_classified():
    raises(errors.MALFORMED_RESPONSE, hub.parse, "d", b"devices/other/messages/devicebound/", b"")
    raises(errors.MALFORMED_RESPONSE, hub.parse, "d", b"$iothub/unknown", b"")
    raises(errors.MALFORMED_RESPONSE, hub.parse, "d", b"\xff\xfe", b"")


def test_desired_sync_drops_patches_not_newer_than_the_twin():
    sync = hub.DesiredSync()
    assert sync.on_twin({"a": 1, "$version": 3}) == ({"a": 1}, 3)
    assert not sync.on_patch(3)
    assert not sync.on_patch(2)
    assert sync.on_patch(4)
    # reconnect: the GET shows version 4 again -> nothing new; then version 6 -> everything handed over
    assert sync.on_twin({"a": 2, "$version": 4}) is None
    assert sync.on_twin({"a": 3, "$version": 6}) == ({"a": 3}, 6)
    assert not sync.on_patch(5)
