"""X.509 at the emulator: the official azure-iot-device SDK registers with a device certificate (an individual
enrollment, and a group enrollment whose devices send an intermediate) and sends telemetry through the gateway
over mutual TLS; raw clients check each refusal (CN, another CA, missing intermediate, thumbprints, CONNACK mode,
edgeHub's thumbprint and CA paths at the gateway)."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from host_tools.emulator.enrollments import EnrollmentError, parse_enrollments
from host_tools.emulator.rawclient import RawMqttClient, dps_username, hub_username
from host_tools.emulator.testing import TEST_HUB as HUB
from host_tools.emulator.testing import register_raw
from host_tools.provisioning import pki

sdk = pytest.importorskip("azure.iot.device")
from azure.iot.device import X509, IoTHubDeviceClient, Message, ProvisioningDeviceClient, ProxyOptions  # noqa: E402
from azure.iot.device.exceptions import ClientError  # noqa: E402

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning"),
]


@pytest.fixture(scope="module")
def group_ca(tmp_path_factory) -> pki.X509GroupCa:
    return pki.ensure_x509_group_ca(tmp_path_factory.mktemp("x509-group"))


@pytest.fixture
def device_files(group_ca, tmp_path):
    def issue(registration_id: str, issuer=None, chain=True, **options):
        issued = pki.make_device_cert(issuer or group_ca.load_intermediate(), registration_id, **options)
        if not chain:
            issued.chain = []
        cert, key = tmp_path / f"{registration_id}.pem", tmp_path / f"{registration_id}-key.pem"
        pki.write_device_files(issued, cert, key)
        return cert, key, issued

    return issue


def x509_doc(group_ca, individuals=(), groups=None) -> dict:
    return {
        "id_scope": "0ne00X509AA",
        "trust_bundles": {"edge": {"certificates": ["pki:trust-root"]}},
        "individual": list(individuals),
        "groups": [
            {"group_id": "factory", "ca_certificate": str(group_ca.root), "assigned_hub": HUB, "trust_bundle": "edge"}
        ]
        if groups is None
        else groups,
    }


def sdk_register(emu, proxy_factory, registration_id, cert, key):
    proxy = proxy_factory(emu.dps_port)
    client = ProvisioningDeviceClient.create_from_x509_certificate(
        provisioning_host="localhost",
        registration_id=registration_id,
        id_scope=emu.id_scope,
        x509=X509(cert_file=str(cert), key_file=str(key)),
        server_verification_cert=emu.pki.dps_root_pem(),
        proxy_options=ProxyOptions("HTTP", "127.0.0.1", proxy.port),
    )
    return client.register()


def sdk_send(emu, proxy_factory, state, cert, key) -> None:
    proxy = proxy_factory(emu.gateway_port)
    client = IoTHubDeviceClient.create_from_x509_certificate(
        x509=X509(cert_file=str(cert), key_file=str(key)),
        hostname=state.assigned_hub,
        device_id=state.device_id,
        gateway_hostname="localhost",
        server_verification_cert=emu.pki.trust_root_pem(),
        proxy_options=ProxyOptions("HTTP", "127.0.0.1", proxy.port),
    )
    try:
        client.connect()
        client.send_message(Message('{"x509": true}', content_encoding="utf-8", content_type="application/json"))
    finally:
        client.shutdown()


@pytest.mark.parametrize("kind", ["individual", "group"])
def test_sdk_registers_with_a_certificate_and_sends_through_the_gateway(
    make_emulator, group_ca, device_files, proxy_factory, kind
):
    cert, key, issued = device_files(f"sdk-x509-{kind}")
    individuals = []
    if kind == "individual":
        individuals = [{"registration_id": "sdk-x509-individual", "certificate": str(cert), "assigned_hub": HUB}]
    emu = make_emulator(x509_doc(group_ca, individuals))

    result = sdk_register(emu, proxy_factory, f"sdk-x509-{kind}", cert, key)

    assert result.status == "assigned" and result.registration_state.device_id == f"sdk-x509-{kind}"
    record = emu.registrations(f"sdk-x509-{kind}")[-1]
    assert record["attestation"] == "x509"
    assert record["enrollment"] == ("individual:sdk-x509-individual" if kind == "individual" else "group:factory")
    sdk_send(emu, proxy_factory, result.registration_state, cert, key)
    (telemetry,) = emu.wait_for_telemetry(1, device_id=f"sdk-x509-{kind}")
    assert telemetry["payload"] == '{"x509": true}' and telemetry["hub"] == HUB
    assert emu.connections("gateway", f"sdk-x509-{kind}") == 1


def test_sdk_with_a_certificate_of_another_ca_gets_401(make_emulator, group_ca, device_files, proxy_factory, tmp_path):
    stranger = pki.ensure_x509_group_ca(tmp_path / "stranger")
    cert, key, _ = device_files("sdk-stranger", issuer=stranger.load_intermediate())
    emu = make_emulator(x509_doc(group_ca))
    with pytest.raises(ClientError) as info:
        sdk_register(emu, proxy_factory, "sdk-stranger", cert, key)
    assert "401" in str(info.value.__cause__)
    record = emu.registrations("sdk-stranger")[-1]
    assert record["http_status"] == 401 and record["error_code"] == 401002


def _x509_dps(emu, registration_id, cert, key, scope=None) -> RawMqttClient:
    client = RawMqttClient(emu.host, emu.dps_port, ca_file=emu.pki.dps_root, client_cert=(cert, key))
    client.connect_code = client.connect(
        registration_id, dps_username(scope or emu.id_scope, registration_id, "2021-11-01-preview"), None
    )
    return client


@pytest.mark.parametrize(
    "case",
    ["cn_mismatch", "another_ca", "missing_intermediate", "expired", "sas_individual", "wrong_certificate"],
)
def test_refusals_answer_401002(make_emulator, group_ca, device_files, tmp_path, case):
    registration_id = "raw-x509"
    individuals = []
    if case == "cn_mismatch":
        cert, key, _ = device_files("raw-other-cn")
    elif case == "another_ca":
        cert, key, _ = device_files(
            registration_id, issuer=pki.ensure_x509_group_ca(tmp_path / "b").load_intermediate()
        )
    elif case == "missing_intermediate":
        cert, key, _ = device_files(registration_id, chain=False)
    elif case == "expired":
        past = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
        cert, key, _ = device_files(registration_id, valid_from=past, valid_until=past + dt.timedelta(days=1))
    elif case == "sas_individual":
        cert, key, _ = device_files(registration_id)
        individuals = [{"registration_id": registration_id, "symmetric_key": "A" * 44, "assigned_hub": HUB}]
    else:  # an individual X.509 enrollment of another certificate shadows the group
        cert, key, _ = device_files(registration_id)
        other = pki.make_device_cert(pki.make_root(), registration_id).cert
        sha256 = hashlib.sha256(other.public_bytes(Encoding.DER)).hexdigest()
        individuals = [{"registration_id": registration_id, "thumbprint": sha256, "assigned_hub": HUB}]
    emu = make_emulator(x509_doc(group_ca, individuals))
    client = _x509_dps(emu, registration_id, cert, key)
    try:
        assert client.connect_code == 0
        assert client.subscribe() == [1]
        status, answer = register_raw(client, registration_id)
    finally:
        client.close()
    assert status == 401 and answer["errorCode"] == 401002, answer
    assert emu.registrations(registration_id)[-1]["attestation"] == "x509"


def test_sha256_thumbprint_enrollment_and_connack_mode(make_emulator, group_ca, device_files):
    cert, key, issued = device_files("raw-thumb", issuer=pki.make_root())
    sha256 = hashlib.sha256(issued.cert.public_bytes(Encoding.DER)).hexdigest().upper()
    emu = make_emulator(
        x509_doc(group_ca, [{"registration_id": "raw-thumb", "thumbprint": sha256, "assigned_hub": HUB}])
    )
    client = _x509_dps(emu, "raw-thumb", cert, key)
    try:
        assert client.connect_code == 0 and client.subscribe() == [1]
        status, answer = register_raw(client, "raw-thumb")
    finally:
        client.close()
    assert status == 200 and answer["registrationState"]["x509"]["certificateInfo"]["sha256Thumbprint"] == sha256
    # The same refusal at CONNACK when configured.
    stranger, stranger_key, _ = device_files("raw-stranger", issuer=pki.make_root())
    emu.set_faults(auth_failure="connack")
    client = _x509_dps(emu, "raw-stranger", stranger, stranger_key)
    client.close()
    assert client.connect_code == 5


def _x509_gateway(emu, device_id, cert, key, hub=HUB, password=None) -> int:
    client = RawMqttClient(emu.host, emu.gateway_port, ca_file=emu.pki.trust_root, client_cert=(cert, key))
    try:
        return client.connect(device_id, hub_username(hub, device_id), password)
    finally:
        client.close()


def test_gateway_authenticates_as_edgehub(make_emulator, group_ca, device_files, tmp_path):
    # Never registered: the gateway knows group devices by CA (CN = device id, chain to the CA) and individual ones
    # by thumbprint, as edgeHub does for devices in its scope.
    cert, key, _ = device_files("gw-group")
    single, single_key, issued = device_files("gw-single", issuer=pki.make_root())
    sha1 = hashlib.sha1(issued.cert.public_bytes(Encoding.DER)).hexdigest()
    emu = make_emulator(x509_doc(group_ca, [{"registration_id": "gw-single", "thumbprint": sha1, "assigned_hub": HUB}]))
    assert _x509_gateway(emu, "gw-group", cert, key) == 0
    assert _x509_gateway(emu, "gw-single", single, single_key) == 0
    assert _x509_gateway(emu, "gw-other-id", cert, key) == 5  # CN differs from the device id
    assert _x509_gateway(emu, "gw-single", cert, key) == 5  # another certificate than the enrolled one
    assert _x509_gateway(emu, "gw-group", cert, key, hub="other-hub.azure-devices.net") == 5
    no_chain, no_chain_key, _ = device_files("gw-group", chain=False)
    assert _x509_gateway(emu, "gw-group", no_chain, no_chain_key) == 5  # intermediate not sent
    stranger, stranger_key, _ = device_files("gw-group", issuer=pki.ensure_x509_group_ca(tmp_path / "s").load_root())
    assert _x509_gateway(emu, "gw-group", stranger, stranger_key) == 5
    # A password (even with a certificate) is the SAS path, as in edgeHub: a bad token is refused.
    assert _x509_gateway(emu, "gw-group", cert, key, password="not a token") == 5


def test_enrollment_file_x509_fields_are_checked(group_ca, tmp_path):
    leaf = tmp_path / "leaf.pem"
    pki.write_device_files(pki.make_device_cert(group_ca.load_intermediate(), "d"), leaf, tmp_path / "leaf-key.pem")
    cases = [
        ({"individual": [{"registration_id": "d", "assigned_hub": HUB}]}, "individual[0]", "exactly one of"),
        (
            {"individual": [{"registration_id": "d", "thumbprint": "abc", "assigned_hub": HUB}]},
            "individual[0].thumbprint",
            "",
        ),
        ({"groups": [{"group_id": "g", "ca_certificate": str(leaf), "assigned_hub": HUB}]}, "groups[0]", "not a CA"),
        ({"groups": [{"group_id": "g", "ca_certificate": "absent.pem", "assigned_hub": HUB}]}, "groups[0]", "absent"),
    ]
    for document, field, words in cases:
        with pytest.raises(EnrollmentError) as info:
            parse_enrollments(document, source=tmp_path / "enrollments.json")
        assert field in str(info.value) and words in str(info.value), str(info.value)
