"""The DPS endpoint seen from a raw MQTT client: the normal flow, every accepted client form, and refusals."""

import json
import re
import ssl
import threading

import pytest

from host_tools.emulator import derive_device_key, write_enrollments
from host_tools.emulator import mqtt_codec as mqtt
from host_tools.emulator.rawclient import (
    GENERAL_API,
    PREVIEW_API,
    RawMqttClient,
    dps_username,
    poll_topic,
    register_topic,
)
from host_tools.emulator.testing import TEST_HUB as HUB
from host_tools.emulator.testing import connect_dps as dps_client
from host_tools.emulator.testing import dps_token, individual_key, wait_until
from host_tools.emulator.testing import register_raw as register
from host_tools.provisioning.pki import load_certificates, make_root, write_bundle

pytestmark = pytest.mark.timeout(30)


def load_certificates_from_text(pem):
    from cryptography import x509

    return x509.load_pem_x509_certificates(pem.encode())


def test_register_individual_preview_with_trust_bundle(emu, enrollment_doc):
    key = individual_key(enrollment_doc, "dev-1")
    with dps_client(emu, "dev-1", key) as client:
        status, params, answer = client.dps_request(
            register_topic("42"), {"registrationId": "dev-1", "payload": {"fw": "1.0"}}
        )
        assert status == 202 and params == {"$rid": "42", "retry-after": "1"}
        assert answer["status"] == "assigning"
        assert re.fullmatch(r"4\.[0-9a-f]{16}\.[0-9a-f-]{36}", answer["operationId"])
        status, params, final = client.dps_request(poll_topic("43", answer["operationId"]))
    assert status == 200 and params == {"$rid": "43"}
    assert final["operationId"] == answer["operationId"] and final["status"] == "assigned"
    state = final["registrationState"]
    for field in (
        "registrationId",
        "createdDateTimeUtc",
        "assignedHub",
        "deviceId",
        "status",
        "substatus",
        "generationId",
        "lastUpdatedDateTimeUtc",
        "etag",
        "payload",
        "trustBundle",
    ):
        assert field in state, field
    assert (state["registrationId"], state["deviceId"], state["assignedHub"]) == ("dev-1", "dev-1", HUB)
    assert state["substatus"] == "initialAssignment" and state["payload"] == {"role": "sensor"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z", state["createdDateTimeUtc"])
    bundle = state["trustBundle"]
    assert bundle["id"] == "edge" and bundle["etag"].startswith('"') and bundle["etag"].endswith('"')
    certs = [cert for entry in bundle["certificates"] for cert in load_certificates_from_text(entry["certificate"])]
    assert certs == load_certificates(emu.pki.trust_root)
    records = emu.registrations("dev-1")
    assert records[-1]["status"] == "assigned" and records[-1]["request_payload"] == {"fw": "1.0"}
    assert records[-1]["trust_bundle"]["etag"] == bundle["etag"] and records[-1]["api_version"] == PREVIEW_API


def test_general_api_version_gets_no_trust_bundle(emu, enrollment_doc):
    with dps_client(emu, "dev-1", individual_key(enrollment_doc, "dev-1"), api_version=GENERAL_API) as client:
        status, final = register(client, "dev-1")
    assert status == 200 and "trustBundle" not in final["registrationState"]


def test_group_enrollment_with_derived_key(emu, enrollment_doc):
    device_key = derive_device_key(enrollment_doc["groups"][0]["group_key"], "fleet-device-7")
    with dps_client(emu, "fleet-device-7", device_key) as client:
        status, final = register(client, "fleet-device-7")
    state = final["registrationState"]
    assert status == 200 and state["deviceId"] == "fleet-device-7" and state["assignedHub"] == HUB
    assert emu.registrations("fleet-device-7")[-1]["enrollment"] == "group:fleet"


@pytest.mark.parametrize("body", [{"payload": {"x": 1}}, b"", {"registrationId": "dev-1"}])
@pytest.mark.parametrize("qos", [0, 1])
def test_register_body_forms_and_qos(emu, enrollment_doc, body, qos):
    with dps_client(emu, "dev-1", individual_key(enrollment_doc, "dev-1")) as client:
        status, final = register(client, "dev-1", body=body, qos=qos)
    assert status == 200 and final["status"] == "assigned"


@pytest.mark.parametrize("token_options", [{"skn": None}, {"lower_hex": True}])
def test_token_forms_accepted(emu, enrollment_doc, token_options):
    key = individual_key(enrollment_doc, "dev-1")
    token = dps_token(emu, "dev-1", key, **token_options)
    with dps_client(emu, "dev-1", key, token=token) as client:
        assert register(client, "dev-1")[0] == 200


def test_client_version_in_username_and_clean_session_false_are_accepted(emu, enrollment_doc):
    key = individual_key(enrollment_doc, "dev-1")
    with RawMqttClient("127.0.0.1", emu.dps_port, ca_file=emu.pki.dps_root) as client:
        username = dps_username(emu.id_scope, "dev-1", GENERAL_API, "azure-iot-device-provisioning-py%2F2.14.0")
        assert client.connect("dev-1", username, dps_token(emu, "dev-1", key), clean_session=False) == 0


def test_body_registration_id_mismatch_is_400(emu, enrollment_doc):
    with dps_client(emu, "dev-1", individual_key(enrollment_doc, "dev-1")) as client:
        status, _, answer = client.dps_request(register_topic("1"), {"registrationId": "dev-2"})
        assert status == 400 and answer["errorCode"] == 400004
        status, _, answer = client.dps_request(register_topic("2"), b"{not json")
        assert status == 400


def assert_error_body(answer, code):
    assert answer["errorCode"] == code
    assert set(answer) >= {"errorCode", "trackingId", "message", "timestampUtc"}
    assert answer["timestampUtc"].endswith("Z")


def test_wrong_key_answers_401_by_default(emu, enrollment_doc):
    wrong = individual_key(enrollment_doc, "dev-2")
    with dps_client(emu, "dev-1", wrong) as client:
        status, _, answer = client.dps_request(register_topic("1"), {"registrationId": "dev-1"})
    assert status == 401
    assert_error_body(answer, 401002)
    assert emu.registrations("dev-1")[-1]["http_status"] == 401


def test_wrong_key_refused_at_connack_when_configured(make_emulator, enrollment_doc):
    emu = make_emulator(faults={"auth_failure": "connack"})
    wrong = individual_key(enrollment_doc, "dev-2")
    with RawMqttClient("127.0.0.1", emu.dps_port, ca_file=emu.pki.dps_root) as client:
        code = client.connect("dev-1", dps_username(emu.id_scope, "dev-1"), dps_token(emu, "dev-1", wrong))
        assert code == 5
        assert client.wait_closed(2)
    assert emu.stats["dps"]["refused"] == 1


def test_expired_token_and_wrong_scope_get_401(emu, enrollment_doc):
    key = individual_key(enrollment_doc, "dev-1")
    with dps_client(emu, "dev-1", key, token=dps_token(emu, "dev-1", key, ttl=-5)) as client:
        assert client.dps_request(register_topic("1"), b"")[0] == 401
    with RawMqttClient("127.0.0.1", emu.dps_port, ca_file=emu.pki.dps_root) as client:
        token = dps_token(emu, "dev-1", key)
        assert client.connect("dev-1", dps_username("0ne0000FFFF", "dev-1"), token) == 0
        client.subscribe()
        assert client.dps_request(register_topic("1"), b"")[0] == 401


@pytest.mark.parametrize("mode, expect_connack, expect_status", [(None, 0, 401), ("404", 0, 404), ("connack", 5, None)])
def test_unknown_registration(make_emulator, enrollment_doc, mode, expect_connack, expect_status):
    emu = make_emulator(faults={"unknown_registration": mode} if mode else None)
    key = individual_key(enrollment_doc, "dev-1")  # a key, but no enrollment for "stranger" uses it
    with RawMqttClient("127.0.0.1", emu.dps_port, ca_file=emu.pki.dps_root) as client:
        code = client.connect("stranger", dps_username(emu.id_scope, "stranger"), dps_token(emu, "stranger", key))
        assert code == expect_connack
        if expect_status:
            client.subscribe()
            status, _, answer = client.dps_request(register_topic("1"), b"")
            assert status == expect_status and answer["errorCode"] == {401: 401002, 404: 404201}[status]


@pytest.mark.parametrize(
    "client_id, username, expected",
    [
        ("other", "{scope}/registrations/dev-1/api-version=2021-11-01-preview", 2),
        ("dev-1", "{scope}/registrations/dev-1/?api-version=2021-11-01-preview", 4),
        ("dev-1", "{scope}/registrations/dev-1/api-version=2099-01-01", 4),
        ("dev-1", "{scope}/devices/dev-1/api-version=2019-03-31", 4),
        ("dev-1", None, 4),
    ],
)
def test_connect_refusals(emu, enrollment_doc, client_id, username, expected):
    key = individual_key(enrollment_doc, "dev-1")
    with RawMqttClient("127.0.0.1", emu.dps_port, ca_file=emu.pki.dps_root) as client:
        username = username.format(scope=emu.id_scope) if username else None
        password = dps_token(emu, "dev-1", key) if username else None  # MQTT forbids a password without a user
        assert client.connect(client_id, username, password) == expected


def test_mqtt_31_protocol_is_refused(emu, enrollment_doc):
    with RawMqttClient("127.0.0.1", emu.dps_port, ca_file=emu.pki.dps_root) as client:
        code = client.connect("dev-1", dps_username(emu.id_scope, "dev-1"), "x", protocol_level=3)
        assert code == 1


def test_disabled_and_failed_enrollments(emu, enrollment_doc):
    key = individual_key(enrollment_doc, "dev-1")
    with dps_client(emu, "dev-disabled", key) as client:
        status, _, answer = client.dps_request(register_topic("1"), b"")
    assert status == 200 and answer["status"] == "disabled" and answer["operationId"] == ""
    with dps_client(emu, "dev-fails", key) as client:
        status, final = register(client, "dev-fails")
    assert status == 200 and final["status"] == "failed"
    assert final["registrationState"]["errorCode"] == 400207
    assert final["registrationState"]["errorMessage"] == "Custom allocation failed with status code: 400"
    assert [r["status"] for r in emu.registrations()] == ["disabled", "failed"]


def test_no_answer_without_subscription(emu, enrollment_doc):
    with dps_client(emu, "dev-1", individual_key(enrollment_doc, "dev-1"), subscribe=False) as client:
        client.publish(register_topic("1"), b"", qos=1)
        with pytest.raises(TimeoutError):
            client.wait_publish(timeout=0.5)
        assert client.subscribe("devices/x/#") == [0x80]  # DPS serves only its response topics
    assert emu.stats["dps"]["undelivered"] == 1


def test_unknown_operation_is_404(emu, enrollment_doc):
    with dps_client(emu, "dev-1", individual_key(enrollment_doc, "dev-1")) as client:
        status, _, answer = client.dps_request(poll_topic("1", "4.0000.nope"))
        assert status == 404 and answer["errorCode"] == 404202
        _, _, first = client.dps_request(register_topic("2"), b"")
    # Another registration cannot poll dev-1's operation.
    with dps_client(emu, "dev-2", individual_key(enrollment_doc, "dev-2")) as other:
        assert other.dps_request(poll_topic("3", first["operationId"]))[0] == 404


def test_answers_never_leak_between_connections(emu, enrollment_doc):
    """Eight devices register concurrently with the same $rid; each sees only its own answers."""
    errors = []

    def device(registration_id):
        try:
            with dps_client(
                emu, registration_id, derive_device_key(enrollment_doc["groups"][0]["group_key"], registration_id)
            ) as client:
                status, final = register(client, registration_id, rid="same")
                assert status == 200 and final["registrationState"]["registrationId"] == registration_id
                with pytest.raises(TimeoutError):
                    client.wait_publish(timeout=0.3)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=device, args=(f"fleet-{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert not errors, errors
    assert emu.stats["dps"]["assigned"] == 8


def test_connection_counters(emu, enrollment_doc):
    key = individual_key(enrollment_doc, "dev-1")
    for _ in range(2):
        with dps_client(emu, "dev-1", key) as client:
            client.ping()
    stats = emu.stats["dps"]
    assert stats["by_client"] == {"dev-1": 2} and stats["connections"] == 2
    assert emu.connections("dps", "dev-2") == 0 and emu.connections("gateway") == 0


def test_records_and_logs_hold_no_secrets(emu, enrollment_doc, caplog):
    key = individual_key(enrollment_doc, "dev-1")
    token = dps_token(emu, "dev-1", key)
    with dps_client(emu, "dev-1", key, token=token) as client:
        register(client, "dev-1")
    with dps_client(emu, "dev-1", individual_key(enrollment_doc, "dev-2")) as client:
        client.dps_request(register_topic("1"), b"")
    text = (emu.state_dir / "registrations.jsonl").read_text() + caplog.text
    signature = token.split("sig=")[1].split("&")[0]
    for secret in (key, individual_key(enrollment_doc, "dev-2"), signature, "SharedAccessSignature"):
        assert secret not in text


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x10\xff\xff\xff\xff\x7f",
        b"\x30\x05\x00\x01",
        b"GET / HTTP/1.1\r\n\r\n",
        mqtt.encode(mqtt.PingReq()),
        b"\x10\x02\x00\x00",
    ],
    ids=["bad-length", "half-publish", "http", "ping-first", "short-connect"],
)
def test_misbehaving_clients_are_dropped_and_the_server_keeps_serving(emu, enrollment_doc, garbage):
    with RawMqttClient("127.0.0.1", emu.dps_port, ca_file=emu.pki.dps_root) as client:
        client.send_raw(garbage)
        if garbage.startswith(b"\x30"):
            client.close()  # the client vanishes mid-packet
        else:
            assert client.wait_closed(3)
    wait_until(lambda: emu.stats["dps"]["active"] == 0)
    assert emu.stats["dps"]["protocol_errors"] == 1
    with dps_client(emu, "dev-1", individual_key(enrollment_doc, "dev-1")) as client:
        assert register(client, "dev-1")[0] == 200
    assert emu.stats["dps"].get("internal_errors", 0) == 0


@pytest.mark.parametrize(
    "packet",
    [
        mqtt.Publish(register_topic("1"), b"", qos=2, packet_id=1),
        mqtt.Publish("devices/dev-1/messages/events/", b"", qos=0),
        mqtt.Publish("$dps/registrations/PUT/iotdps-register/", b"", qos=0),  # no $rid
        mqtt.Connect("dev-1"),
    ],
)
def test_policy_violations_drop_the_connection(emu, enrollment_doc, packet):
    with dps_client(emu, "dev-1", individual_key(enrollment_doc, "dev-1")) as client:
        client.send(packet)
        assert client.wait_closed(3)
    assert emu.stats["dps"]["dropped"] == 1


def test_client_not_trusting_the_server_is_counted(emu):
    with pytest.raises(ssl.SSLCertVerificationError):
        RawMqttClient("127.0.0.1", emu.dps_port, ca_file=emu.pki.trust_root)  # wrong root for DPS
    wait_until(lambda: emu.stats["dps"]["tls_failures"] == 1)


def test_trust_bundle_rotation_while_running(emu, enrollment_doc, tmp_path):
    key = individual_key(enrollment_doc, "dev-1")

    def bundle():
        with dps_client(emu, "dev-1", key) as client:
            return register(client, "dev-1")[1]["registrationState"]["trustBundle"]

    first, again = bundle(), bundle()
    assert again["etag"] == first["etag"] and again["lastModifiedDateTime"] == first["lastModifiedDateTime"]
    # 1. The enrollment file changes: a second certificate joins the bundle.
    extra = write_bundle(tmp_path / "extra.pem", [make_root()])
    enrollment_doc["trust_bundles"]["edge"]["certificates"] = ["pki:trust-root", str(extra)]
    write_enrollments(emu.enrollments_path, enrollment_doc)
    second = bundle()
    assert len(second["certificates"]) == 2 and second["etag"] != first["etag"]
    assert second["createdDateTime"] == first["createdDateTime"]
    # 2. A certificate file changes on disk, the enrollment file does not.
    write_bundle(extra, [make_root()])
    third = bundle()
    assert third["etag"] not in (first["etag"], second["etag"])
    # 3. An invalid edit is ignored; the emulator keeps serving the last good version.
    emu.enrollments_path.write_text(json.dumps({"individual": "oops"}))
    assert bundle()["etag"] == third["etag"]
    assert emu.enrollment_error is not None and "individual" in str(emu.enrollment_error)
