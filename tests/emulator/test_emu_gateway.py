"""The edgeHub-like gateway: authentication, telemetry records, policy drops, token expiry, faults."""

import json
import ssl
import time

import pytest

from host_tools.emulator import derive_device_key, generate_sas_token
from host_tools.emulator import mqtt_codec as mqtt
from host_tools.emulator.gateway import decode_property_bag, parse_hub_username
from host_tools.emulator.rawclient import RawMqttClient, hub_username
from host_tools.emulator.testing import TEST_HUB as HUB
from host_tools.emulator.testing import connect_dps as dps_client
from host_tools.emulator.testing import connect_gateway, hub_token, individual_key, wait_until
from host_tools.emulator.testing import register_raw as register
from host_tools.provisioning.pki import reissue_gateway_cert, write_bundle_with_decoys

pytestmark = pytest.mark.timeout(30)


def gateway_client(emu, device_id, key, token=None, expect=0):
    return connect_gateway(emu, device_id, key, HUB, token=token, expect=expect)


def test_telemetry_is_recorded_with_decoded_properties(emu, key):
    with gateway_client(emu, "dev-1", key) as client:
        client.publish(
            "devices/dev-1/messages/events/%24.ct=application%2Fjson&%24.ce=utf-8&unit=%C2%B0C", b'{"t": 21.5}', qos=1
        )
        client.publish("devices/dev-1/messages/events/$.ct=text%2Fplain&flag", "héllo", qos=0)
        client.publish("devices/dev-1/messages/events/", b"plain", qos=1)
        client.publish("devices/dev-1/messages/events", b"no slash", qos=1)
        client.ping()
    records = emu.wait_for_telemetry(4)
    assert [r["properties"] for r in records] == [
        {"$.ct": "application/json", "$.ce": "utf-8", "unit": "°C"},
        {"$.ct": "text/plain", "flag": ""},
        {},
        {},
    ]
    assert [r["payload"] for r in records] == ['{"t": 21.5}', "héllo", "plain", "no slash"]
    assert [r["qos"] for r in records] == [1, 0, 1, 1]
    first = records[0]
    assert set(first) == {"received_at", "device_id", "hub", "topic", "properties", "payload", "qos"}
    assert (first["device_id"], first["hub"]) == ("dev-1", HUB)
    on_disk = [json.loads(line) for line in (emu.state_dir / "telemetry.jsonl").read_text().splitlines()]
    assert on_disk == records
    assert emu.stats["gateway"]["messages"] == 4


def test_property_bag_and_username_parsing():
    assert decode_property_bag("a%26b=c%3Dd&%24.mid=1&plus=a+b") == {"a&b": "c=d", "$.mid": "1", "plus": "a+b"}
    assert parse_hub_username("h/d/?api-version=2021-04-12&DeviceClientType=x%2F1")[2]["DeviceClientType"] == "x/1"
    assert parse_hub_username("h/d/api-version=2019-10-01")[:2] == ("h", "d")
    for bad in ("h/d", "h//?api-version=1", "h/d/?x=1", "h/d/m/?api-version=1"):
        with pytest.raises(ValueError):
            parse_hub_username(bad)


@pytest.mark.parametrize("username_form", ["/?", "/"])
def test_username_forms_and_sr_naming_the_gateway(emu, key, username_form):
    token = generate_sas_token("localhost/devices/dev-1", key, int(time.time()) + 60)
    with RawMqttClient("127.0.0.1", emu.gateway_port, ca_file=emu.pki.trust_root) as client:
        username = hub_username(HUB, "dev-1", form=username_form) + "&DeviceClientType=azprov%2F0.1"
        assert client.connect("dev-1", username, token) == 0


def connack(emu, client_id, username, password):
    with RawMqttClient("127.0.0.1", emu.gateway_port, ca_file=emu.pki.trust_root) as client:
        code = client.connect(client_id, username, password)
        if code:
            assert client.wait_closed(2)
        return code


@pytest.mark.parametrize(
    "case",
    [
        "wrong key",
        "expired",
        "wrong hub",
        "wrong resource",
        "unknown device",
        "no password",
        "not a token",
        "client id mismatch",
        "bad username",
        "disabled",
    ],
)
def test_refusals(emu, enrollment_doc, key, case):
    now = int(time.time())
    other_key = individual_key(enrollment_doc, "dev-2")
    args = {
        "wrong key": ("dev-1", hub_username(HUB, "dev-1"), hub_token(HUB, "dev-1", other_key)),
        "expired": ("dev-1", hub_username(HUB, "dev-1"), hub_token(HUB, "dev-1", key, expiry=now - 1)),
        "wrong hub": (
            "dev-1",
            hub_username("other.azure-devices.net", "dev-1"),
            hub_token("other.azure-devices.net", "dev-1", key),
        ),
        "wrong resource": ("dev-1", hub_username(HUB, "dev-1"), hub_token(HUB, "dev-2", key)),
        "unknown device": ("ghost", hub_username(HUB, "ghost"), hub_token(HUB, "ghost", key)),
        "no password": ("dev-1", hub_username(HUB, "dev-1"), None),
        "not a token": ("dev-1", hub_username(HUB, "dev-1"), "hunter2"),
        "client id mismatch": ("dev-2", hub_username(HUB, "dev-1"), hub_token(HUB, "dev-1", key)),
        "bad username": ("dev-1", f"{HUB}/dev-1", hub_token(HUB, "dev-1", key)),
        "disabled": ("dev-disabled", hub_username(HUB, "dev-disabled"), hub_token(HUB, "dev-disabled", key)),
    }[case]
    expected = {"client id mismatch": 2, "bad username": 4}.get(case, 5)
    assert connack(emu, *args) == expected
    assert emu.stats["gateway"]["refused"] == 1


def test_group_device_at_the_gateway(emu, enrollment_doc):
    device_key = derive_device_key(enrollment_doc["groups"][0]["group_key"], "fleet-9")
    with gateway_client(emu, "fleet-9", device_key) as client:
        client.publish("devices/fleet-9/messages/events/", b"x", qos=1)
    assert emu.wait_for_telemetry(1)[0]["device_id"] == "fleet-9"


@pytest.mark.parametrize(
    "packet",
    [
        mqtt.Publish("devices/dev-1/messages/events/", b"x", qos=2, packet_id=1),
        mqtt.Publish("devices/dev-2/messages/events/", b"x", qos=1, packet_id=1),
        mqtt.Publish("some/other/topic", b"x", qos=0),
    ],
    ids=["qos2", "other-device", "unknown-topic"],
)
def test_policy_violations_drop_the_connection(emu, key, packet):
    with gateway_client(emu, "dev-1", key) as client:
        client.send(packet)
        assert client.wait_closed(3)
    assert emu.telemetry() == [] and emu.stats["gateway"]["dropped"] == 1


def test_token_expiry_closes_a_live_connection(emu, key):
    with gateway_client(emu, "dev-1", key, token=hub_token(HUB, "dev-1", key, expiry=int(time.time()) + 2)) as client:
        client.ping()
        started = time.monotonic()
        assert client.wait_closed(5)
        assert time.monotonic() - started < 4
    assert emu.stats["gateway"]["expired"] == 1
    with gateway_client(emu, "dev-1", key) as client:  # renewal = reconnect with a fresh token
        client.ping()


def test_subscriptions_and_twin(emu, key):
    with gateway_client(emu, "dev-1", key) as client:
        assert client.subscribe("devices/dev-1/messages/devicebound/#") == [1]
        assert client.subscribe("$iothub/twin/res/#", qos=0) == [0]
        assert client.subscribe("devices/dev-2/messages/devicebound/#") == [0x80]
        client.publish("$iothub/twin/PATCH/properties/reported/?$rid=1", {"fw": "1.2"}, qos=0)
        assert client.wait_publish().topic == "$iothub/twin/res/204/?$rid=1&$version=2"
        client.publish("$iothub/twin/GET/?$rid=2", b"", qos=0)
        twin = json.loads(client.wait_publish().payload)
        assert twin["reported"] == {"fw": "1.2", "$version": 2}


def test_gateway_refuse_and_drop_faults(emu, key):
    emu.set_faults(gateway_refuse={"code": 3, "count": 1})
    assert connack(emu, "dev-1", hub_username(HUB, "dev-1"), hub_token(HUB, "dev-1", key)) == 3
    emu.set_faults(gateway_drop_after={"messages": 2})
    with gateway_client(emu, "dev-1", key) as client:
        client.publish("devices/dev-1/messages/events/", b"one", qos=1)
        client.publish("devices/dev-1/messages/events/", b"two", qos=1, wait_ack=False)
        assert client.wait_closed(3)  # no PUBACK for "two"
    with gateway_client(emu, "dev-1", key) as client:
        client.publish("devices/dev-1/messages/events/", b"two", qos=1)
    assert [r["payload"] for r in emu.wait_for_telemetry(2)] == ["one", "two"]
    emu.set_faults(gateway_drop_after="connack")
    with gateway_client(emu, "dev-1", key) as client:
        assert client.wait_closed(3)


def test_drop_gateway_connections_api(emu, key):
    clients = [gateway_client(emu, "dev-1", key) for _ in range(2)]
    try:
        assert emu.drop_gateway_connections() == 2
        assert all(c.wait_closed(3) for c in clients)
    finally:
        for client in clients:
            client.close()


def test_registered_only_mode(make_emulator, enrollment_doc, key):
    enrollment_doc["settings"] = {"gateway_devices": "registered"}
    emu = make_emulator(enrollment_doc)
    assert connack(emu, "dev-1", hub_username(HUB, "dev-1"), hub_token(HUB, "dev-1", key)) == 5
    with dps_client(emu, "dev-1", key) as client:
        assert register(client, "dev-1")[0] == 200
    assert connack(emu, "dev-1", hub_username(HUB, "dev-1"), hub_token(HUB, "dev-1", key)) == 0
    emu.forget_assignments()
    assert connack(emu, "dev-1", hub_username(HUB, "dev-1"), hub_token(HUB, "dev-1", key)) == 5


def test_assigned_hub_wins_over_a_changed_enrollment(make_emulator, enrollment_doc, key):
    """After DPS assigned a hub, the gateway checks that hub even if the enrollment file moved the device."""
    from host_tools.emulator import write_enrollments

    emu = make_emulator()
    with dps_client(emu, "dev-1", key) as client:
        register(client, "dev-1")
    enrollment_doc["individual"][0]["assigned_hub"] = "moved.azure-devices.net"
    write_enrollments(emu.enrollments_path, enrollment_doc)
    assert connack(emu, "dev-1", hub_username(HUB, "dev-1"), hub_token(HUB, "dev-1", key)) == 0
    moved = "moved.azure-devices.net"
    assert connack(emu, "dev-1", hub_username(moved, "dev-1"), hub_token(moved, "dev-1", key)) == 5


def test_tls_trust(emu, key, tmp_path):
    # A bundle of three roots where only the last one signs the gateway: TLS succeeds.
    bundle = write_bundle_with_decoys(emu.pki, tmp_path / "bundle.pem", decoys=2)
    with RawMqttClient("127.0.0.1", emu.gateway_port, ca_file=bundle) as client:
        assert client.connect("dev-1", hub_username(HUB, "dev-1"), hub_token(HUB, "dev-1", key)) == 0
    # The DPS root does not sign the gateway.
    with pytest.raises(ssl.SSLCertVerificationError):
        RawMqttClient("127.0.0.1", emu.gateway_port, ca_file=emu.pki.dps_root)
    # Serving a certificate for another host name: a client checking "localhost" refuses it.
    cert, cert_key = reissue_gateway_cert(emu.pki, ["elsewhere.example"])
    emu.use_gateway_certificate(cert, cert_key)
    with pytest.raises(ssl.SSLCertVerificationError, match="(?i)hostname|match"):
        RawMqttClient("127.0.0.1", emu.gateway_port, ca_file=emu.pki.trust_root)
    with RawMqttClient(
        "127.0.0.1", emu.gateway_port, ca_file=emu.pki.trust_root, server_hostname="elsewhere.example"
    ) as client:
        client.connect("dev-1", hub_username(HUB, "dev-1"), hub_token(HUB, "dev-1", key))
    wait_until(lambda: emu.stats["gateway"]["tls_failures"] == 2)


def test_keepalive_is_enforced(emu, key):
    with RawMqttClient("127.0.0.1", emu.gateway_port, ca_file=emu.pki.trust_root) as client:
        assert client.connect("dev-1", hub_username(HUB, "dev-1"), hub_token(HUB, "dev-1", key), keepalive=1) == 0
        started = time.monotonic()
        assert client.wait_closed(4)  # silent for 1.5 x keep-alive
        assert 1.3 < time.monotonic() - started < 3.5


def test_clock_skew_at_the_gateway(emu, key):
    expired = hub_token(HUB, "dev-1", key, expiry=int(time.time()) - 20)
    assert connack(emu, "dev-1", hub_username(HUB, "dev-1"), expired) == 5
    emu.set_faults(sas_clock_skew_s=22)
    with gateway_client(emu, "dev-1", key, token=expired) as client:
        client.ping()
        assert client.wait_closed(5)  # the live-expiry check honours the same allowance
