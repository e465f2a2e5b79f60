# The DPS protocol core: topics, bodies, response parsing and the registration state machine, with no I/O.
import json

from fixtures import raises

from azprov import dps, errors

ASSIGNED = {
    "operationId": "4.abc",
    "status": "assigned",
    "registrationState": {
        "registrationId": "dev1",
        "assignedHub": "hub.azure-devices.net",
        "deviceId": "dev1",
        "status": "assigned",
        "substatus": "initialAssignment",
        "payload": {"x": 1},
        "someFutureField": [1, 2],
    },
}


def test_username_uses_preview_api_without_question_mark():
    assert dps.username("0ne1", "dev1") == "0ne1/registrations/dev1/api-version=2021-11-01-preview"
    assert dps.username("0ne1", "dev1", "azprov/0.1").endswith("&ClientVersion=azprov%2F0.1")


def test_register_body():
    assert json.loads(dps.register_body("dev1", {"a": 1})) == {"registrationId": "dev1", "payload": {"a": 1}}
    assert json.loads(dps.register_body("dev1")) == {"registrationId": "dev1", "payload": None}


def test_parse_topic_any_parameter_order_and_case():
    assert dps.parse_topic("$dps/registrations/res/202/?$rid=7&retry-after=3") == (202, "7", 3)
    assert dps.parse_topic(b"$dps/registrations/res/429/?retry-after=120&$rid=1") == (429, "1", 120)
    assert dps.parse_topic("$dps/registrations/res/202/?$rid=2&Retry-After=5") == (202, "2", 5)
    assert dps.parse_topic("$dps/registrations/res/200/?$rid=9") == (200, "9", None)
    assert dps.parse_topic("devices/x/messages/devicebound/") is None


def test_parse_topic_malformed():
    raises(errors.MALFORMED_RESPONSE, dps.parse_topic, "$dps/registrations/res/abc/?$rid=1")
    raises(errors.MALFORMED_RESPONSE, dps.parse_topic, "$dps/registrations/res/202/?$rid=1&retry-after=soon")


def _topic(status, rid, extra=""):
    return "$dps/registrations/res/%d/?$rid=%s%s" % (status, rid, extra)


def test_register_poll_assigned():
    reg = dps.Registration("dev1", {"model": "m"})
    delay, topic, body = reg.start()
    assert delay == 0 and topic == "$dps/registrations/PUT/iotdps-register/?$rid=1"
    assert json.loads(body)["payload"] == {"model": "m"}
    nxt = reg.on_message(_topic(202, "1", "&retry-after=3"), b'{"operationId":"4.abc","status":"assigning"}')
    assert nxt == (3, "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId=4.abc", b"")
    nxt = reg.on_message(_topic(202, "2"), b'{"operationId":"4.abc","status":"assigning"}')
    assert nxt[0] is None and "operationId=4.abc" in nxt[1]  # None: the policy's default wait
    assert reg.on_message(_topic(200, "3"), json.dumps(ASSIGNED)) is None
    assert reg.done and reg.result["assignedHub"] == "hub.azure-devices.net"
    assert reg.result["payload"] == {"x": 1}


def test_stale_rid_and_foreign_topics_ignored():
    reg = dps.Registration("dev1")
    reg.start()
    assert reg.on_message(_topic(200, "99"), json.dumps(ASSIGNED)) is None
    assert reg.on_message("$iothub/twin/res/200/?$rid=1", b"{}") is None
    assert not reg.done


def test_200_with_assigning_status_keeps_polling():
    reg = dps.Registration("dev1")
    reg.start()
    nxt = reg.on_message(_topic(200, "1"), b'{"operationId":"4.x","status":"assigning"}')
    assert "operationId=4.x" in nxt[1]


def test_throttled_register_raises_with_retry_after_and_resumes_the_same_request():
    reg = dps.Registration("dev1")
    reg.start()
    body = b'{"errorCode":429001,"trackingId":"t-1","message":"Operations are being throttled"}'
    # The wait is the retry policy's (azprov.policy): the state machine reports the answer and its retry-after.
    exc = raises(errors.THROTTLED, reg.on_message, _topic(429, "1", "&retry-after=7"), body)
    assert exc.error_code == 429001 and exc.tracking_id == "t-1" and exc.status == 429 and exc.retry_after == 7
    delay, topic, _ = reg.resume()
    assert delay == 0 and topic == "$dps/registrations/PUT/iotdps-register/?$rid=2"
    exc = raises(errors.THROTTLED, reg.on_message, _topic(429, "2"), body)
    assert exc.retry_after is None


def test_server_error_during_poll_resumes_the_poll():
    reg = dps.Registration("dev1")
    reg.start()
    reg.on_message(_topic(202, "1", "&retry-after=1"), b'{"operationId":"4.abc","status":"assigning"}')
    exc = raises(
        errors.SERVICE_UNAVAILABLE,
        reg.on_message,
        _topic(503, "2", "&retry-after=2"),
        b'{"errorCode":503000,"message":"busy"}',
    )
    assert exc.error_code == 503000 and exc.retry_after == 2
    delay, topic, _ = reg.resume()
    assert delay == 0 and "operationId=4.abc" in topic


def test_final_errors_carry_service_fields():
    for status, kind in (
        (401, errors.AUTHENTICATION),
        (404, errors.NOT_FOUND),
        (400, errors.BAD_REQUEST),
        (412, errors.BAD_REQUEST),
    ):
        reg = dps.Registration("dev1")
        reg.start()
        body = json.dumps(
            {
                "errorCode": status * 1000 + 2,
                "trackingId": "tr",
                "message": "nope",
                "timestampUtc": "2026-01-01T00:00:00Z",
                "info": {},
            }
        )
        exc = raises(kind, reg.on_message, _topic(status, "1"), body)
        assert exc.error_code == status * 1000 + 2 and exc.tracking_id == "tr" and exc.message == "nope"


def test_error_with_unparseable_body_is_still_classified():
    reg = dps.Registration("dev1")
    reg.start()
    exc = raises(errors.AUTHENTICATION, reg.on_message, _topic(401, "1"), b"<html>")
    assert exc.error_code is None and "401" in exc.message


def test_failed_and_disabled():
    reg = dps.Registration("dev1")
    reg.start()
    failed = {
        "operationId": "4.a",
        "status": "failed",
        "registrationState": {
            "registrationId": "dev1",
            "status": "failed",
            "errorCode": 400207,
            "errorMessage": "Custom allocation failed with status code: 400",
        },
    }
    exc = raises(errors.ASSIGNMENT_FAILED, reg.on_message, _topic(200, "1"), json.dumps(failed))
    assert exc.error_code == 400207 and "Custom allocation" in exc.message
    reg = dps.Registration("dev1")
    reg.start()
    raises(
        errors.DISABLED,
        reg.on_message,
        _topic(200, "1"),
        b'{"operationId":"","status":"disabled","registrationState":{"status":"disabled"}}',
    )


def test_malformed_bodies():
    cases = [
        b"{not json",
        b"[1,2]",
        b"",
        b'{"status":"assigned"}',
        b'{"status":"assigned","registrationState":{"deviceId":"d"}}',
        b'{"status":"assigned","registrationState":{"assignedHub":5,"deviceId":"d"}}',
        b'{"status":"assigned","registrationState":"x"}',
        b'{"status":7}',
        b'{"status":"assigning"}',
        b'{"status":"weird","operationId":"1"}',
    ]
    for body in cases:
        reg = dps.Registration("dev1")
        reg.start()
        raises(errors.MALFORMED_RESPONSE, reg.on_message, _topic(200, "1"), body)


def test_too_many_polls_is_a_timeout():
    reg = dps.Registration("dev1", max_polls=2)
    reg.start()
    body = b'{"operationId":"4.a","status":"assigning"}'
    reg.on_message(_topic(202, "1", "&retry-after=0"), body)
    reg.on_message(_topic(202, "2", "&retry-after=0"), body)
    raises(errors.TIMEOUT, reg.on_message, _topic(202, "3", "&retry-after=0"), body)


def test_resume_polls_known_operation_else_registers():
    reg = dps.Registration("dev1")
    reg.start()
    assert "iotdps-register" in reg.resume()[1]
    reg.on_message(_topic(202, "2", "&retry-after=0"), b'{"operationId":"4.z","status":"assigning"}')
    assert "operationId=4.z" in reg.resume()[1]
