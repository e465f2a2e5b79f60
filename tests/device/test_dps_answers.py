# How the DPS core answers each response the reference (dps-mqtt-protocol.md) allows, and each it does not: the exact
# request that follows, the error kind, the status and the message a user reads in the log.
import json

from azprov import dps, errors
from azprov.errors import ProvisioningError

REGISTER = "$dps/registrations/PUT/iotdps-register/?$rid="
POLL = "$dps/registrations/GET/iotdps-get-operationstatus/?$rid="
ASSIGNING = b'{"operationId":"4.op","status":"assigning"}'
STATE = {"registrationId": "dev1", "assignedHub": "hub.example", "deviceId": "dev1", "status": "assigned"}


def _topic(status, rid, extra=""):
    return "$dps/registrations/res/%d/?$rid=%s%s" % (status, rid, extra)


def _error(fn, *args):
    try:
        fn(*args)
    except ProvisioningError as exc:
        return exc
    raise AssertionError("no error raised")


def _started(**options):
    reg = dps.Registration("dev1", **options)
    reg.start()
    return reg


def _answer(body, status=200, **options):
    return _error(_started(**options).on_message, _topic(status, "1"), body)


def test_username_is_exact_with_and_without_client_version():
    base = "0ne00000001/registrations/dev-1/api-version=2021-11-01-preview"
    assert dps.username("0ne00000001", "dev-1") == base
    assert dps.username("0ne00000001", "dev-1", "") == base
    assert (
        dps.username("0ne00000001", "dev-1", "azprov/1.0 (esp32)") == base + "&ClientVersion=azprov%2F1.0%20%28esp32%29"
    )


def test_topic_parsing_edges():
    # No $rid or no query at all still gives the status: the caller then ignores the answer as not its own.
    assert dps.parse_topic("$dps/registrations/res/200/") == (200, None, None)
    assert dps.parse_topic("$dps/registrations/res/204") == (204, None, None)
    assert dps.parse_topic("$dps/registrations/res/202/$rid=4&retry-after=0") == (202, "4", 0)
    assert dps.parse_topic(b"$dps/registrations/res/429/?$rid=12&RETRY-AFTER=9") == (429, "12", 9)
    assert dps.parse_topic("$dps/registrations/resx/200/?$rid=1") is None
    for topic, message in (
        ("$dps/registrations/res/2x0/?$rid=1", "response topic has no status code"),
        ("$dps/registrations/res/429/?$rid=1&retry-after=-1", "retry-after is negative"),
        ("$dps/registrations/res/429/?$rid=1&retry-after=1.5", "retry-after is not a whole number"),
        (b"$dps/registrations/res/200/?$rid=\xc0\xaf", "response topic is not UTF-8"),
    ):
        exc = _error(dps.parse_topic, topic)
        assert (exc.kind, exc.message) == (errors.MALFORMED_RESPONSE, message), (topic, exc.message)


def test_request_ids_count_up_and_each_request_is_exact():
    reg = dps.Registration("dev1", {"modelId": "dtmi:x;1"})
    assert (reg.done, reg.result, reg.streamed, reg.polls) == (False, None, [], 0)
    assert reg.start()[:2] == (0, REGISTER + "1")
    assert json.loads(reg.start()[2]) == {"registrationId": "dev1", "payload": {"modelId": "dtmi:x;1"}}
    assert reg.rid == "2"
    assert reg.on_message(_topic(202, "2", "&retry-after=1"), ASSIGNING) == (1, POLL + "3&operationId=4.op", b"")
    assert reg.polls == 1 and reg.operation_id == "4.op"
    assert reg.resume() == (0, POLL + "4&operationId=4.op", b"")
    # The answer to the abandoned poll 3 is ignored; the one to 4 counts.
    assert reg.on_message(_topic(200, "3"), json.dumps({"status": "assigned", "registrationState": STATE})) is None
    assert not reg.done
    assert reg.on_message(_topic(200, "4"), json.dumps({"status": "assigned", "registrationState": STATE})) is None
    assert reg.done and reg.result == STATE and reg.streamed == []
    # Once done, nothing more is sent, whatever arrives.
    assert reg.on_message(_topic(500, "4"), b"") is None and reg.result == STATE


def test_unassigned_and_status_inside_the_state_keep_polling():
    reg = _started()
    nxt = reg.on_message(_topic(200, "1"), b'{"operationId":"4.u","status":"unassigned"}')
    assert nxt == (None, POLL + "2&operationId=4.u", b"")
    # The status may be given only inside registrationState.
    body = json.dumps({"operationId": "4.u", "registrationState": STATE})
    assert reg.on_message(_topic(200, "2"), body) is None and reg.done


def test_transient_statuses_are_raised_with_the_service_fields_for_the_policy():
    # 429 and every 5xx are transient (the retry policy waits, then the registration resumes); other 4xx are final.
    for status, kind in ((429, errors.THROTTLED), (500, errors.SERVICE_UNAVAILABLE), (503, errors.SERVICE_UNAVAILABLE)):
        reg = _started()
        exc = _error(reg.on_message, _topic(status, "1"), b"")
        assert (exc.kind, exc.status, exc.retry_after, exc.transient) == (kind, status, None, True)
        assert reg.resume() == (0, REGISTER + "2", dps.register_body("dev1")), status
        exc = _error(reg.on_message, _topic(status, "2", "&retry-after=5"), b"")
        assert (exc.kind, exc.status, exc.retry_after) == (kind, status, 5)
        assert exc.message == "DPS answered status %d" % status
    exc = _answer(b"", status=499)
    assert (exc.kind, exc.status, exc.message) == (errors.BAD_REQUEST, 499, "DPS answered status 499")
    exc = _error(_started().on_message, _topic(403, "1", "&retry-after=60"), b"")
    assert (exc.kind, exc.status, exc.retry_after, exc.transient) == (errors.BAD_REQUEST, 403, 60, False)
    exc = _error(
        _started().on_message, _topic(429, "1", "&retry-after=7"), b'{"errorCode":429001,"message":"slow down"}'
    )
    assert (exc.kind, exc.status, exc.retry_after, exc.error_code, exc.message) == (
        errors.THROTTLED,
        429,
        7,
        429001,
        "slow down",
    )


def test_service_error_fields_are_taken_only_when_well_typed():
    exc = dps.service_error(404, b'{"errorCode":"404001","trackingId":7,"message":""}', 3)
    assert (exc.kind, exc.error_code, exc.tracking_id, exc.retry_after) == (errors.NOT_FOUND, None, None, 3)
    assert exc.message == "DPS answered status 404"
    exc = dps.service_error(503, b"[1]")
    assert (exc.kind, exc.message, exc.retry_after) == (errors.SERVICE_UNAVAILABLE, "DPS answered status 503", None)
    exc = dps.service_error(401, '{"errorCode":401002,"trackingId":"t","message":"bad sig"}')
    assert (exc.kind, exc.error_code, exc.tracking_id, exc.message) == (errors.AUTHENTICATION, 401002, "t", "bad sig")


def test_each_malformed_answer_has_its_message_and_status():
    cases = [
        (200, b"{not json", "response body is not valid JSON"),
        (200, b'"text"', "response body is not a JSON object"),
        (200, b"\xff{}", "response body is not valid JSON"),
        (200, b"", "response body is empty"),
        (202, b"", "response body is empty"),
        (200, b'{"status":"assigned","registrationState":[1]}', "registrationState is not an object"),
        (200, b'{"operationId":"4.a"}', "response has no status"),
        (200, b'{"status":"assigning","operationId":5}', "operationId is not a string"),
        (202, b'{"status":"assigning","operationId":""}', "202 without operationId"),
        (
            202,
            b'{"status":"assigned","registrationState":{"assignedHub":"h","deviceId":"d"}}',
            "202 without operationId",
        ),
        (
            200,
            b'{"status":"assigned","registrationState":{"deviceId":"d"}}',
            "registrationState.assignedHub is missing or not a string",
        ),
        (
            200,
            b'{"status":"assigned","registrationState":{"assignedHub":"h","deviceId":""}}',
            "registrationState.deviceId is missing or not a string",
        ),
        (
            200,
            b'{"status":"assigned","registrationState":{"assignedHub":"h","deviceId":"d","substatus":1}}',
            "registrationState.substatus is missing or not a string",
        ),
        (200, b'{"status":"assigned"}', "registrationState.assignedHub is missing or not a string"),
        (200, b'{"status":"gone"}', "unknown registration status"),
        (201, b'{"status":"assigned"}', "unexpected status 201"),
        (304, b"", "unexpected status 304"),
    ]
    for status, body, message in cases:
        exc = _answer(body, status)
        # Refusals of the body's JSON and of registrationState's fields carry no status; the others carry it.
        expected_status = None if "JSON" in message or "not a string" in message and "." in message else status
        assert (exc.kind, exc.status, exc.message) == (errors.MALFORMED_RESPONSE, expected_status, message), (body, exc)


def test_assigned_without_substatus_is_complete():
    reg = _started()
    state = {"assignedHub": "hub.example", "deviceId": "dev1"}
    assert reg.on_message(_topic(200, "1"), json.dumps({"status": "assigned", "registrationState": state})) is None
    assert reg.done and reg.result == state


def test_failed_and_disabled_outcomes_in_full():
    exc = _answer(b'{"status":"failed","trackingId":"tr-9","registrationState":{"errorCode":"x","errorMessage":""}}')
    assert (exc.kind, exc.status, exc.message) == (errors.ASSIGNMENT_FAILED, 200, "assignment failed")
    assert (exc.error_code, exc.tracking_id) == (None, "tr-9")
    exc = _answer(
        b'{"status":"failed","trackingId":3,"registrationState":{"errorCode":400209,"errorMessage":"no hub"}}'
    )
    assert (exc.error_code, exc.tracking_id, exc.message) == (400209, None, "no hub")
    exc = _answer(b'{"status":"failed"}')
    assert (exc.kind, exc.error_code, exc.message) == (errors.ASSIGNMENT_FAILED, None, "assignment failed")
    exc = _answer(b'{"status":"disabled"}')
    assert (exc.kind, exc.status, exc.message) == (errors.DISABLED, 200, "enrollment is disabled")


def test_poll_limit_message_names_the_limit():
    reg = _started(max_polls=1)
    reg.on_message(_topic(202, "1"), ASSIGNING)
    exc = _error(reg.on_message, _topic(202, "2"), ASSIGNING)
    assert (exc.kind, exc.message) == (errors.TIMEOUT, "still assigning after 1 polls")


def test_trust_bundle_certificates_go_to_the_sink_before_parsing():
    from fixtures import CERT_A, CERT_A_SHA256, PemSink

    state = dict(STATE, trustBundle={"id": "TB", "etag": "e", "certificates": [{"certificate": CERT_A}]})
    body = json.dumps({"status": "assigned", "registrationState": state}).encode()
    sink = PemSink()
    reg = _started(bundle_sink=sink)
    # A 202 carries no bundle: nothing goes to the sink.
    reg.on_message(_topic(202, "1"), ASSIGNING)
    assert sink.started == 0
    assert reg.on_message(_topic(200, "2"), bytearray(body)) is None
    assert sink.started == 1 and sink.pem == CERT_A.encode() and reg.streamed == [CERT_A_SHA256]
    assert reg.result["trustBundle"]["certificates"] == [{"certificate": 0}]
    # When the shell already streamed the certificates out, the body is the rest and its list is taken as given.
    sink = PemSink()
    reg = _started(bundle_sink=sink)
    rest = json.dumps({"status": "assigned", "registrationState": dict(STATE, trustBundle=None)})
    assert reg.on_message(_topic(200, "1"), rest, ["AB" * 32]) is None
    assert sink.started == 0 and reg.streamed == ["AB" * 32] and reg.done
