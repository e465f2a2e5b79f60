"""Every DPS fault, observed from a raw MQTT client; counted faults let a retrying client get through."""

import json
import time

import pytest

from host_tools.emulator import write_enrollments
from host_tools.emulator.faults import FaultError, parse_fault_option, validate_faults
from host_tools.emulator.rawclient import (
    ConnectionClosed,
    RawMqttClient,
    dps_username,
    poll_topic,
    register_topic,
    response_status,
)
from host_tools.emulator.testing import connect_dps as dps_client
from host_tools.emulator.testing import dps_token, individual_key

pytestmark = pytest.mark.timeout(30)


def connect(emu, key, registration_id="dev-1"):
    return dps_client(emu, registration_id, key)


def test_throttle_register_then_success(emu, key):
    emu.set_faults(throttle_register={"count": 2, "retry_after": 7})
    with connect(emu, key) as client:
        for attempt in range(2):
            status, params, body = client.dps_request(register_topic(str(attempt)), b"")
            assert status == 429 and params["retry-after"] == "7" and body["errorCode"] == 429001
        status, params, _ = client.dps_request(register_topic("3"), b"")
        assert status == 202
    assert [r["http_status"] for r in emu.registrations()] == [429, 429]
    assert emu.registrations()[-1]["attempts"] == 2


def test_counts_are_per_registration_id(emu, enrollment_doc, key):
    emu.set_faults(throttle_register=1)
    with connect(emu, key) as client:
        assert client.dps_request(register_topic("1"), b"")[0] == 429
    with connect(emu, individual_key(enrollment_doc, "dev-2"), "dev-2") as client:
        assert client.dps_request(register_topic("1"), b"")[0] == 429  # dev-2 gets its own count
    with connect(emu, key) as client:
        assert client.dps_request(register_topic("1"), b"")[0] == 202


def test_count_always(emu, key):
    emu.set_faults(throttle_register={"count": "always", "retry_after": 1})
    with connect(emu, key) as client:
        assert [client.dps_request(register_topic(str(i)), b"")[0] for i in range(4)] == [429] * 4


def test_throttle_poll_and_assigning_polls(emu, key):
    emu.set_faults(throttle_poll={"count": 1, "retry_after": 2}, assigning_polls=2, retry_after=3)
    with connect(emu, key) as client:
        status, params, first = client.dps_request(register_topic("r"), b"")
        assert (status, params["retry-after"]) == (202, "3")
        answers = [client.dps_request(poll_topic(str(i), first["operationId"])) for i in range(4)]
    assert [a[0] for a in answers] == [429, 202, 202, 200]
    assert answers[0][1]["retry-after"] == "2"
    assert answers[1][2]["status"] == "assigning" and answers[1][2]["registrationState"]["status"] == "assigning"
    assert answers[3][2]["status"] == "assigned"
    assert emu.registrations()[-1]["polls"] == 3


@pytest.mark.parametrize(
    "fault, on_register",
    [({"status": 503, "count": 1}, True), (500, True), ({"status": 502, "on": "poll", "retry_after": 4}, False)],
)
def test_server_error(emu, key, fault, on_register):
    emu.set_faults(server_error=fault)
    with connect(emu, key) as client:
        status, params, body = client.dps_request(register_topic("1"), b"")
        if on_register:
            expected = fault["status"] if isinstance(fault, dict) else fault
            assert status == expected and body["errorCode"] == expected * 1000 + 1 and "retry-after" not in params
            status, params, body = client.dps_request(register_topic("2"), b"")
        assert status == 202
        status, params, result = client.dps_request(poll_topic("3", body["operationId"]))
        if not on_register:
            assert status == 502 and params["retry-after"] == "4"
            status, params, result = client.dps_request(poll_topic("4", body["operationId"]))
        assert status == 200


def test_delay_keeps_pings_working(emu, key):
    emu.set_faults(delay_ms=600)
    with connect(emu, key) as client:
        started = time.monotonic()
        client.publish(register_topic("1"), b"", qos=1)
        client.ping()  # answered while the register answer is still pending
        assert time.monotonic() - started < 0.5
        response = client.wait_publish(timeout=3)
        assert response_status(response.topic) == 202 and time.monotonic() - started >= 0.6


@pytest.mark.parametrize("point", ["connack", "suback", "register", "202"])
def test_drop_after(emu, key, point):
    emu.set_faults(drop_after=point)
    with RawMqttClient("127.0.0.1", emu.dps_port, ca_file=emu.pki.dps_root) as client:
        assert client.connect("dev-1", dps_username(emu.id_scope, "dev-1"), dps_token(emu, "dev-1", key)) == 0
        if point != "connack":
            assert client.subscribe() == [1]
        if point in ("register", "202"):
            client.publish(register_topic("1"), b"", qos=1)
        if point == "202":
            assert response_status(client.wait_publish().topic) == 202
        assert client.wait_closed(3)
    with connect(emu, key) as client:  # count 1: the retry gets through
        assert client.dps_request(register_topic("2"), b"")[0] == 202


def test_drop_mid_payload(emu, key):
    emu.set_faults(drop_after={"at": "mid_payload", "count": 1})
    with connect(emu, key) as client:
        _, _, first = client.dps_request(register_topic("1"), b"")
        client.publish(poll_topic("2", first["operationId"]), b"", qos=1)
        with pytest.raises(ConnectionClosed) as info:
            client.wait_publish()
        assert info.value.partial > 0  # part of the PUBLISH arrived, then the connection closed
    assert emu.registrations()[-1]["status"] == "assigned"  # DPS assigned; the device just did not hear it
    with connect(emu, key) as client:
        status, _, again = client.dps_request(poll_topic("3", first["operationId"]))
        assert status == 200 and again["status"] == "assigned"


@pytest.mark.parametrize("at", ["200", "202"])
def test_malformed_json(emu, key, at):
    emu.set_faults(malformed_json={"at": at} if at == "202" else True)
    with connect(emu, key) as client:
        status, _, body = client.dps_request(register_topic("1"), b"")
        if at == "202":
            assert status == 202 and "_raw" in body
            status, _, body = client.dps_request(register_topic("2"), b"")
        operation_id = body["operationId"]
        status, _, body = client.dps_request(poll_topic("3", operation_id))
        if at == "200":
            assert status == 200 and "_raw" in body
            with pytest.raises(ValueError):
                json.loads(body["_raw"])
            status, _, body = client.dps_request(poll_topic("4", operation_id))  # count 1: the retry parses
        assert status == 200 and body["status"] == "assigned"


def test_omit_fields_and_trust_bundle_null(emu, key):
    emu.set_faults(omit_fields=["trustBundle.etag", "payload", "substatus"])
    with connect(emu, key) as client:
        _, _, first = client.dps_request(register_topic("1"), b"")
        state = client.dps_request(poll_topic("2", first["operationId"]))[2]["registrationState"]
    assert "payload" not in state and "substatus" not in state
    assert "etag" not in state["trustBundle"] and "etag" in state and state["trustBundle"]["certificates"]
    emu.set_faults(trust_bundle_null=True)
    with connect(emu, key) as client:
        _, _, first = client.dps_request(register_topic("1"), b"")
        state = client.dps_request(poll_topic("2", first["operationId"]))[2]["registrationState"]
    assert state["trustBundle"] is None


@pytest.mark.parametrize(
    "faults, expected_query",
    [
        ({"retry_after_case": "upper"}, "?$rid=7&RETRY-AFTER=1"),
        ({"retry_after_case": "title"}, "?$rid=7&Retry-After=1"),
        ({"topic_param_order": "retry_first"}, "?retry-after=1&$rid=7"),
        ({"no_retry_after": True}, "?$rid=7"),
    ],
)
def test_topic_forms(emu, key, faults, expected_query):
    emu.set_faults(faults)
    with connect(emu, key) as client:
        client.publish(register_topic("7"), b"", qos=0)
        assert client.wait_publish().topic == "$dps/registrations/res/202/" + expected_query


def test_no_retry_after_on_429(emu, key):
    emu.set_faults(no_retry_after=True, throttle_register=1)
    with connect(emu, key) as client:
        client.publish(register_topic("1"), b"")
        assert client.wait_publish().topic == "$dps/registrations/res/429/?$rid=1"


def test_connack_refuse_then_accept(emu, key):
    emu.set_faults(connack_refuse={"code": 3, "count": 2})
    codes = []
    for _ in range(3):
        with RawMqttClient("127.0.0.1", emu.dps_port, ca_file=emu.pki.dps_root) as client:
            codes.append(client.connect("dev-1", dps_username(emu.id_scope, "dev-1"), dps_token(emu, "dev-1", key)))
    assert codes == [3, 3, 0]
    assert emu.stats["dps"]["refused"] == 2


def test_per_enrollment_faults_from_the_file(make_emulator, enrollment_doc, key):
    enrollment_doc["individual"][0]["faults"] = {"throttle_register": {"count": 1, "retry_after": 9}}
    emu = make_emulator(enrollment_doc)
    with connect(emu, key) as client:
        assert client.dps_request(register_topic("1"), b"")[1]["retry-after"] == "9"
    with connect(emu, individual_key(enrollment_doc, "dev-2"), "dev-2") as client:
        assert client.dps_request(register_topic("1"), b"")[0] == 202  # only dev-1 is throttled
    # The enrollment's value wins over a global one for its device.
    emu.set_faults(throttle_register={"count": 5, "retry_after": 2})
    with connect(emu, key) as client:
        assert client.dps_request(register_topic("1"), b"")[0] == 202  # dev-1's own count (1) is used up


def test_top_level_faults_in_file_and_reload(make_emulator, enrollment_doc, key):
    enrollment_doc["faults"] = {"assigning_polls": 1}
    emu = make_emulator(enrollment_doc)
    with connect(emu, key) as client:
        _, _, first = client.dps_request(register_topic("1"), b"")
        assert client.dps_request(poll_topic("2", first["operationId"]))[0] == 202
    enrollment_doc["faults"] = {}
    write_enrollments(emu.enrollments_path, enrollment_doc)
    with connect(emu, key) as client:
        _, _, first = client.dps_request(register_topic("1"), b"")
        assert client.dps_request(poll_topic("2", first["operationId"]))[0] == 200


def test_rate_limit(make_emulator, enrollment_doc):
    emu = make_emulator(rate_limit=2)
    group_key = enrollment_doc["groups"][0]["group_key"]
    from host_tools.emulator import derive_device_key

    statuses = []
    for i in range(4):
        with dps_client(emu, f"bench-{i}", derive_device_key(group_key, f"bench-{i}")) as client:
            status, params, _ = client.dps_request(register_topic("1"), b"")
            statuses.append((status, params.get("retry-after")))
    assert statuses[:2] == [(202, "1"), (202, "1")]
    assert (429, "1") in statuses[2:]


def test_set_faults_resets_and_clears(emu, key):
    emu.set_faults(throttle_register=1)
    with connect(emu, key) as client:
        assert client.dps_request(register_topic("1"), b"")[0] == 429
        emu.set_faults(throttle_register=1)  # a new set: counters start again
        assert client.dps_request(register_topic("2"), b"")[0] == 429
        emu.set_faults()  # cleared
        assert client.dps_request(register_topic("3"), b"")[0] == 202
        emu.update_faults(throttle_register=1)
        emu.reset_fault_counters()
        assert client.dps_request(register_topic("4"), b"")[0] == 429


def test_fault_validation_names_the_fault():
    assert parse_fault_option("drop_after=connack") == ("drop_after", "connack")
    assert parse_fault_option('throttle_register={"count": 2}') == ("throttle_register", {"count": 2})
    assert parse_fault_option("trust_bundle_null") == ("trust_bundle_null", True)
    assert validate_faults({"throttle_register": 2})["throttle_register"] == {"count": 2, "retry_after": 1}
    with pytest.raises(FaultError, match="faults.bogus: unknown fault"):
        validate_faults({"bogus": 1})
    with pytest.raises(FaultError, match="faults.server_error: invalid value 404"):
        validate_faults({"server_error": 404})
    with pytest.raises(FaultError, match="connack_refuse"):
        validate_faults({"connack_refuse": {"count": 1}})


def final_state(emu, key, registration_id="dev-1"):
    with connect(emu, key, registration_id) as client:
        _, _, first = client.dps_request(register_topic("1"), b"")
        status, _, final = client.dps_request(poll_topic("2", first["operationId"]))
    assert status == 200
    return final["registrationState"]


@pytest.mark.parametrize(
    "pem_format, line, newline", [({}, 64, "\r\n"), ({"line_length": 76}, 76, "\r\n"), ({"newline": "lf"}, 64, "\n")]
)
def test_pem_format(emu, key, pem_format, line, newline):
    emu.set_faults(pem_format=pem_format)
    pem = final_state(emu, key)["trustBundle"]["certificates"][0]["certificate"]
    lines = pem.split(newline)
    assert lines[0] == "-----BEGIN CERTIFICATE-----" and lines[-1] == "" and pem.endswith(newline)
    assert len(lines[1]) == line and all(len(x) <= line for x in lines[1:-2])
    if newline == "\n":
        assert "\r" not in pem


def test_extra_fields_and_absent_trust_bundle(emu, key):
    emu.set_faults(extra_fields={"issuedClientCertificate": None, "futureField": {"a": 1}}, omit_fields=["trustBundle"])
    state = final_state(emu, key)
    assert state["futureField"] == {"a": 1} and state["issuedClientCertificate"] is None
    assert "trustBundle" not in state


@pytest.mark.parametrize(
    "interim, expected", [({"status": "unassigned"}, (202, "unassigned")), ({"http_status": 200}, (200, "assigning"))]
)
def test_interim_answer_forms(emu, key, interim, expected):
    emu.set_faults(assigning_polls=1, interim_answer=interim)
    with connect(emu, key) as client:
        _, _, first = client.dps_request(register_topic("1"), b"")
        status, _, answer = client.dps_request(poll_topic("2", first["operationId"]))
        assert (status, answer["status"]) == expected
        assert client.dps_request(poll_topic("3", first["operationId"]))[2]["status"] == "assigned"


@pytest.mark.parametrize("mode, code", [("connack", 5), ("connack_4", 4)])
def test_auth_failure_connack_codes(emu, enrollment_doc, mode, code):
    emu.set_faults(auth_failure=mode)
    with RawMqttClient("127.0.0.1", emu.dps_port, ca_file=emu.pki.dps_root) as client:
        wrong = dps_token(emu, "dev-1", individual_key(enrollment_doc, "dev-2"))
        assert client.connect("dev-1", dps_username(emu.id_scope, "dev-1"), wrong) == code


def test_clock_skew_knob(emu, key):
    emu.set_faults(sas_clock_skew_s=60)
    with dps_client(emu, "dev-1", key, token=dps_token(emu, "dev-1", key, ttl=-30)) as client:  # expired 30 s ago
        assert client.dps_request(register_topic("1"), b"")[0] == 202
