# What the hub core makes of each message x509-and-hub-mqtt.md describes, at its edges: the exact Message fields, the
# error kind and message a user reads when the hub sends something unusable, and the $version rule for desired state.
from azprov import errors, hub
from azprov.errors import ProvisioningError

DEV = "dev-1"


def _error(fn, *args):
    try:
        fn(*args)
    except ProvisioningError as exc:
        return exc
    raise AssertionError("no error raised")


def _twin(status, query, body=b""):
    return hub.parse(DEV, "$iothub/twin/res/%s/%s" % (status, query), body)


def test_property_bags_and_system_properties_are_exact():
    assert hub.property_bag(None) == "" and hub.property_bag({}) == ""
    assert hub.property_bag([("$.ct", "text/plain"), ("$x", 1), ("flag", None), ("n", 2.5)]) == (
        "$.ct=text%2Fplain&%24x=1&flag&n=2.5"
    )
    for bad in ([("", "v")], [(5, "v")]):
        exc = _error(hub.property_bag, bad)
        assert (exc.kind, exc.message) == (errors.CONFIGURATION, "property names must be non-empty strings")
    exc = _error(lambda: hub.telemetry_topic(DEV, None, message_id="1", colour="red"))
    assert (exc.kind, exc.message) == (errors.CONFIGURATION, "unknown system property colour")
    assert hub.telemetry_topic(DEV, None, content_encoding="utf-8", message_id="7") == (
        "devices/dev-1/messages/events/$.mid=7&$.ce=utf-8"
    )
    assert hub.c2d_filter(DEV) == "devices/dev-1/messages/devicebound/#"
    assert hub.method_response_topic(200, "x1") == "$iothub/methods/res/200/?$rid=x1"
    assert hub.reported_patch_topic("9") == "$iothub/twin/PATCH/properties/reported/?$rid=9"
    assert hub.method_response_body(None) == b"" and hub.method_response_body({"a": [1]}) == '{"a": [1]}'
    assert hub.reported_body({"fw": "1.0"}) == '{"fw": "1.0"}'
    exc = _error(hub.reported_body, [1])
    assert (exc.kind, exc.message) == (errors.CONFIGURATION, "a reported patch must be a JSON object")


def test_percent_decoding_edges():
    assert hub.url_decode("plain+text") == "plain+text"
    assert hub.url_decode("a%41") == "aA" and hub.url_decode("%2f%2F") == "//"
    assert hub.url_decode("%0A%00%09") == "\n\x00\t"
    assert hub.url_decode("%C3%A9t%C3%A9") == "\u00e9t\u00e9"
    for text in ("%4", "a%", "%G1", "%1G"):
        exc = _error(hub.url_decode, text)
        assert (exc.kind, exc.message) == (errors.MALFORMED_RESPONSE, "bad percent-encoding in %r" % text), text
    # The message quotes at most the first 40 characters of what was received.
    exc = _error(hub.url_decode, "p" * 50 + "%zz")
    assert exc.message == "bad percent-encoding in %r" % ("p" * 40)
    exc = _error(hub.url_decode, "%C0%AF")
    assert (exc.kind, exc.message) == (errors.MALFORMED_RESPONSE, "percent-encoded text is not UTF-8")
    assert hub.parse_property_bag("a=b=c&&x=") == {"a": "b=c", "x": ""}
    exc = _error(hub.parse_property_bag, "=v")
    assert (exc.kind, exc.message) == (errors.MALFORMED_RESPONSE, "property without a name")


def test_twin_responses_at_their_edges():
    m = _twin(204, "?$RID=r1&$Version=12")
    assert (m.kind, m.status, m.rid, m.version, m.body, m.error) == (hub.TWIN_RESPONSE, 204, "r1", 12, None, None)
    m = _twin(200, "$rid=" + "r" * 64, b" ")
    assert (m.rid, m.version, m.body, m.error) == ("r" * 64, None, None, None)
    m = _twin(200, "?$rid=2", b'{"desired": {"$version": 1}}')
    assert m.body == {"desired": {"$version": 1}}
    for query, message in (
        ("?$rid=" + "r" * 65, "twin response has no usable $rid"),
        ("?$rid=", "twin response has no usable $rid"),
        ("?$rid=1&$version=v2", "twin response $version is not a whole number"),
    ):
        exc = _error(_twin, 200, query)
        assert (exc.kind, exc.message) == (errors.MALFORMED_RESPONSE, message), query
    exc = _error(_twin, "ok", "?$rid=1")
    assert exc.message == "twin response status is not a whole number"
    for body, message in (
        (b"{x", "twin response body is not valid JSON"),
        (b"[1]", "twin response body is not a JSON object"),
        (b"\xff", "twin response body is not valid JSON"),
    ):
        m = _twin(200, "?$rid=3", body)
        assert m.body is None and (m.error.kind, m.error.message) == (errors.MALFORMED_RESPONSE, message), body


def test_desired_patches_and_their_version():
    topic = "$iothub/twin/PATCH/properties/desired/"
    m = hub.parse(DEV, topic + "?$version=9", b'{"rate": 5, "$version": 8}')
    assert (m.kind, m.version, m.body, m.error) == (hub.DESIRED, 8, {"rate": 5}, None)
    m = hub.parse(DEV, topic + "?$Version=9", b'{"rate": 5}')
    assert (m.version, m.body) == (9, {"rate": 5})
    for query, body, message in (
        ("", b'{"rate": 5}', "desired patch has no whole-number $version"),
        ("", b'{"rate": 5, "$version": true}', "desired patch has no whole-number $version"),
        ("", b'{"rate": 5, "$version": "3"}', "desired patch has no whole-number $version"),
        ("?$version=x", b'{"rate": 5}', "desired $version is not a whole number"),
        ("?$version=3", b"", "desired patch is empty"),
        ("?$version=3", b"[1]", "desired patch is not a JSON object"),
    ):
        m = hub.parse(DEV, topic + query, body)
        assert m.kind == hub.DESIRED and m.body is None and m.version is None, body
        assert (m.error.kind, m.error.message) == (errors.MALFORMED_RESPONSE, message), (body, m.error.message)


def test_method_requests_at_their_edges():
    m = hub.parse(DEV, "$iothub/methods/POST/set%20rate/?$rid=5", b"[1, 2]")
    assert (m.kind, m.name, m.rid, m.body, m.error) == (hub.METHOD, "set rate", "5", [1, 2], None)
    assert (m.status, m.version, m.properties) == (None, None, None)
    m = hub.parse(DEV, "$iothub/methods/POST/reboot/?$rid=6", b"")
    assert (m.name, m.body, m.error) == ("reboot", None, None)
    m = hub.parse(DEV, "$iothub/methods/POST/reboot/?$rid=7", b"{bad")
    assert m.body is None and m.error.message == "method request body is not valid JSON"
    exc = _error(hub.parse, DEV, "$iothub/methods/POST//?$rid=8", b"")
    assert (exc.kind, exc.message) == (errors.MALFORMED_RESPONSE, "method request has no method name")
    exc = _error(hub.parse, DEV, "$iothub/methods/POST/reboot/", b"")
    assert (exc.kind, exc.message) == (errors.MALFORMED_RESPONSE, "method request has no usable $rid")


def test_cloud_to_device_messages_at_their_edges():
    m = hub.parse(DEV, "devices/dev-1/messages/devicebound", b"hi")
    assert (m.kind, m.properties, m.body, m.error) == (hub.C2D, {}, b"hi", None)
    # Fields of the other kinds stay None.
    assert (m.status, m.rid, m.version, m.name) == (None, None, None, None)
    m = hub.parse(DEV, b"devices/dev-1/messages/devicebound/%24.to=%2Fdevices%2Fdev-1&%24.mid=9&k=v", bytearray(b"x"))
    assert (m.properties, m.body) == ({"$.mid": "9", "k": "v"}, b"x") and isinstance(m.body, bytes)
    m = hub.parse(DEV, "devices/dev-1/messages/devicebound/k=%zz", b"x")
    assert m.body is None and m.error.message == "bad percent-encoding in '%zz'"
    for topic in ("devices/dev-10/messages/devicebound/", "devices/dev-1/messages/deviceboundx", "$iothub/twin/res"):
        exc = _error(hub.parse, DEV, topic, b"")
        assert (exc.kind, exc.message) == (errors.MALFORMED_RESPONSE, "unexpected topic %r" % topic), topic
    long_topic = "x" * 100
    assert _error(hub.parse, DEV, long_topic, b"").message == "unexpected topic %r" % ("x" * 60)
    exc = _error(hub.parse, DEV, b"$iothub/\xc0\xaf", b"")
    assert (exc.kind, exc.message) == (errors.MALFORMED_RESPONSE, "topic is not UTF-8")


def test_twin_error_kinds_by_status():
    for status, kind in (
        (429, errors.THROTTLED),
        (500, errors.SERVICE_UNAVAILABLE),
        (504, errors.SERVICE_UNAVAILABLE),
        (401, errors.AUTHENTICATION),
        (403, errors.AUTHENTICATION),
        (404, errors.NOT_FOUND),
        (400, errors.BAD_REQUEST),
        (499, errors.BAD_REQUEST),
    ):
        exc = hub.twin_response_error(_twin(status, "?$rid=1"), "reported patch")
        assert (exc.kind, exc.status, exc.message) == (kind, status, "reported patch answered status %d" % status)


def test_twin_document_checks_both_sections():
    good = b'{"desired": {"$version": 3, "rate": 1}, "reported": {"$version": 1}}'
    assert hub.twin_document(_twin(200, "?$rid=1", good))["desired"] == {"$version": 3, "rate": 1}
    exc = _error(hub.twin_document, _twin(503, "?$rid=1", good))
    assert (exc.kind, exc.message) == (errors.SERVICE_UNAVAILABLE, "twin GET answered status 503")
    exc = _error(hub.twin_document, _twin(200, "?$rid=1", b"{x"))
    assert exc.message == "twin response body is not valid JSON"
    for body, message in (
        (b"", "twin GET answer is empty"),
        (b'{"desired": {"$version": 3}}', "twin GET answer has no reported object"),
        (b'{"desired": [], "reported": {"$version": 1}}', "twin GET answer has no desired object"),
        (
            b'{"desired": {"$version": 3}, "reported": {"$version": false}}',
            "twin GET answer's reported has no whole-number $version",
        ),
        (
            b'{"desired": {"$version": "3"}, "reported": {"$version": 1}}',
            "twin GET answer's desired has no whole-number $version",
        ),
    ):
        exc = _error(hub.twin_document, _twin(200, "?$rid=1", body))
        assert (exc.kind, exc.message) == (errors.MALFORMED_RESPONSE, message), body


def test_desired_sync_hands_over_only_newer_versions():
    sync = hub.DesiredSync()
    assert sync.on_patch(0) is True and sync.version == 0
    assert sync.on_patch(0) is False and sync.on_patch(-1) is False
    assert sync.on_twin({"$version": 0, "a": 1}) is None
    assert sync.on_twin({"$version": 2, "a": 1, "b": None}) == ({"a": 1, "b": None}, 2)
    assert sync.on_patch(2) is False and sync.on_patch(3) is True and sync.version == 3
    fresh = hub.DesiredSync()
    assert fresh.on_twin({"$version": 1}) == ({}, 1) and fresh.version == 1
