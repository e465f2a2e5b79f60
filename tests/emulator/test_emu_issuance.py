"""Certificate issuance at the emulator (preview api-version 2025-07-01-preview): a device registers with a CSR made
by CPython's `cryptography` and gets an operational certificate from its enrollment's policy CA, which verifies, has
the policy's validity and (with its key) authenticates the official azure-iot-device SDK at the gateway; every CSR
problem is a 400 with its own errorCode; no policy, no chain; an expired issued certificate is refused at the gateway
while the onboarding key still works; the enrollment file's issuance fields are checked."""

from __future__ import annotations

import base64
import datetime as dt
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from host_tools.emulator.enrollments import EnrollmentError, parse_enrollments
from host_tools.emulator.issuance import ISSUANCE_API_VERSION
from host_tools.emulator.rawclient import RawMqttClient, hub_username
from host_tools.emulator.testing import TEST_HUB as HUB
from host_tools.emulator.testing import connect_dps, connect_gateway, register_raw
from host_tools.provisioning import pki
from host_tools.provisioning.issuance_ca import ensure_issuance_ca

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning"),
]
KEY = base64.b64encode(b"issuance test device key 32 byte").decode()


@pytest.fixture(scope="module")
def policy_ca(tmp_path_factory):
    return ensure_issuance_ca(tmp_path_factory.mktemp("issuance-ca"))


def issuance_doc(policy_ca, **policy) -> dict:
    """iss-1 (policy "lab", 30 days), iss-week (the policy at 7 days), iss-short (2 s: emulator-only
    validity_seconds), iss-plain (no policy)."""

    def device(registration_id, issuance=None):
        entry = {"registration_id": registration_id, "symmetric_key": KEY, "assigned_hub": HUB, "trust_bundle": "edge"}
        if issuance is not None:
            entry["certificate_issuance"] = issuance
        return entry

    return {
        "trust_bundles": {"edge": {"certificates": ["pki:trust-root"]}},
        "issuance_policies": {"lab": {**policy_ca.policy(validity_days=30), **policy}},
        "individual": [
            device("iss-1", {"policy": "lab"}),
            device("iss-week", {"policy": "lab", "validity_days": 7}),
            device("iss-short", {"policy": "lab", "validity_seconds": 2}),
            device("iss-plain"),
        ],
    }


def make_csr(registration_id: str, key=None, extra_cn: str | None = None) -> tuple[object, str]:
    """(private key, base64 DER PKCS#10) as a device makes them: EC P-384, CN = registration id, ecdsa-with-SHA384."""
    key = key or ec.generate_private_key(ec.SECP384R1())
    names = [x509.NameAttribute(NameOID.COMMON_NAME, registration_id)]
    if extra_cn:
        names.append(x509.NameAttribute(NameOID.COMMON_NAME, extra_cn))
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(names)).sign(key, hashes.SHA384())
    return key, base64.b64encode(csr.public_bytes(serialization.Encoding.DER)).decode()


def register(emu, registration_id: str, body_csr, api_version=ISSUANCE_API_VERSION, with_id=True) -> tuple[int, dict]:
    body = {"payload": None, "csr": body_csr}
    if with_id:
        body["registrationId"] = registration_id
    client = connect_dps(emu, registration_id, KEY, api_version=api_version)
    try:
        return register_raw(client, registration_id, body=body)
    finally:
        client.close()


def certificates(answer: dict) -> list[x509.Certificate]:
    chain = answer["registrationState"]["issuedCertificateChain"]
    return [x509.load_der_x509_certificate(base64.b64decode(c)) for c in chain]


@pytest.mark.parametrize("with_id", [True, False], ids=["with-registrationId", "csr-and-payload-only"])
def test_a_good_csr_gets_a_chain_from_the_policy_ca(make_emulator, policy_ca, with_id):
    emu = make_emulator(issuance_doc(policy_ca))
    key, csr = make_csr("iss-1")
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)

    status, answer = register(emu, "iss-1", csr, with_id=with_id)

    assert status == 200 and answer["status"] == "assigned", answer
    state = answer["registrationState"]
    assert state["trustBundle"]["certificates"], "the trust bundle keeps coming with the issuance api-version"
    leaf, issuer = certificates(answer)
    ca = pki.load_certificates(policy_ca.certificate)[0]
    assert issuer == ca
    leaf.verify_directly_issued_by(ca)
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "iss-1"
    assert leaf.public_key().public_numbers() == key.public_key().public_numbers()
    assert leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == dt.timedelta(days=30)
    assert before <= leaf.not_valid_before_utc <= dt.datetime.now(dt.UTC)
    (issued,) = emu.issued_certificates("iss-1")
    assert issued["serial"] == format(leaf.serial_number, "X") and issued["subject_cn"] == "iss-1"
    assert issued["not_after"] == leaf.not_valid_after_utc.isoformat() and issued["policy"] == "lab"
    record = emu.registrations("iss-1")[-1]
    assert record["issued_certificate"] == {"serial": issued["serial"], "not_after": issued["not_after"]}


def test_the_enrollment_sets_the_validity(make_emulator, policy_ca):
    emu = make_emulator(issuance_doc(policy_ca))
    status, answer = register(emu, "iss-week", make_csr("iss-week")[1])
    assert status == 200
    leaf, _ = certificates(answer)
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == dt.timedelta(days=7)


def _tampered(csr_b64: str) -> str:
    der = bytearray(base64.b64decode(csr_b64))
    der[-1] ^= 0x01  # the last byte of the ECDSA signature's s: still DER, no longer a valid signature
    return base64.b64encode(bytes(der)).decode()


def _rsa_csr(registration_id: str) -> str:
    return make_csr(registration_id, key=rsa.generate_private_key(public_exponent=65537, key_size=2048))[1]


def _pem_csr(registration_id: str) -> str:
    body = make_csr(registration_id)[1]
    return "-----BEGIN CERTIFICATE REQUEST-----\n" + body + "\n-----END CERTIFICATE REQUEST-----\n"


CSR_CASES = {
    "p256": (lambda: make_csr("iss-1", key=ec.generate_private_key(ec.SECP256R1()))[1], 400042, "P-384"),
    "rsa": (lambda: _rsa_csr("iss-1"), 400042, "RSA 2048"),
    "wrong_cn": (lambda: make_csr("someone-else")[1], 400043, "CN=iss-1"),
    "two_cns": (lambda: make_csr("iss-1", extra_cn="iss-2")[1], 400043, "CN=iss-1"),
    "bad_signature": (lambda: _tampered(make_csr("iss-1")[1]), 400041, "signature"),
    "garbage_base64": (lambda: "not base64 at all!", 400040, "base64"),
    "pem": (lambda: _pem_csr("iss-1"), 400040, "PEM"),
    "not_a_csr": (lambda: base64.b64encode(b"\x30\x03\x02\x01\x01" * 8).decode(), 400040, "PKCS#10"),
    "not_a_string": (lambda: 12345, 400040, "string"),
    "empty": (lambda: "", 400040, "string"),
}


@pytest.mark.parametrize("case", sorted(CSR_CASES))
def test_a_bad_csr_is_refused_with_400_naming_the_problem(make_emulator, policy_ca, case):
    emu = make_emulator(issuance_doc(policy_ca))
    make, code, words = CSR_CASES[case]

    status, answer = register(emu, "iss-1", make())

    assert status == 400 and answer["errorCode"] == code, answer
    assert words in answer["message"], answer["message"]
    record = emu.registrations("iss-1")[-1]
    assert record["status"] == "error" and record["error_code"] == code
    assert emu.issued_certificates() == []


def test_no_policy_no_chain(make_emulator, policy_ca):
    emu = make_emulator(issuance_doc(policy_ca))
    status, answer = register(emu, "iss-plain", make_csr("iss-plain")[1])
    assert status == 200 and answer["status"] == "assigned"
    assert answer["registrationState"].get("issuedCertificateChain") is None
    assert emu.issued_certificates() == [] and "issued_certificate" not in emu.registrations("iss-plain")[-1]


def test_older_api_versions_ignore_the_csr(make_emulator, policy_ca):
    emu = make_emulator(issuance_doc(policy_ca))
    status, answer = register(emu, "iss-1", "not even base64!", api_version="2021-11-01-preview")
    assert status == 200 and "issuedCertificateChain" not in answer["registrationState"]
    # Without a csr the issuance api-version registers as before: no chain.
    status, answer = register(emu, "iss-1", None)
    assert status == 200 and "issuedCertificateChain" not in answer["registrationState"]
    assert emu.issued_certificates() == []


def _issued_files(tmp_path, registration_id: str, answer: dict, key) -> tuple:
    """identity.pem (leaf, then the issuing CA) and identity.key, as a device would keep them."""
    cert_path, key_path = tmp_path / f"{registration_id}.pem", tmp_path / f"{registration_id}-key.pem"
    cert_path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates(answer)))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def _x509_gateway(emu, device_id, cert, key) -> int:
    client = RawMqttClient(emu.host, emu.gateway_port, ca_file=emu.pki.trust_root, client_cert=(cert, key))
    try:
        return client.connect(device_id, hub_username(HUB, device_id), None)
    finally:
        client.close()


def test_the_sdk_authenticates_at_the_gateway_with_an_issued_certificate(
    make_emulator, policy_ca, proxy_factory, tmp_path
):
    sdk = pytest.importorskip("azure.iot.device")
    emu = make_emulator(issuance_doc(policy_ca))
    key, csr = make_csr("iss-1")
    status, answer = register(emu, "iss-1", csr)
    assert status == 200
    cert_path, key_path = _issued_files(tmp_path, "iss-1", answer, key)
    state = answer["registrationState"]

    proxy = proxy_factory(emu.gateway_port)
    client = sdk.IoTHubDeviceClient.create_from_x509_certificate(
        x509=sdk.X509(cert_file=str(cert_path), key_file=str(key_path)),
        hostname=state["assignedHub"],
        device_id=state["deviceId"],
        gateway_hostname="localhost",
        server_verification_cert=emu.pki.trust_root_pem(),
        proxy_options=sdk.ProxyOptions("HTTP", "127.0.0.1", proxy.port),
    )
    try:
        client.connect()
        client.send_message(sdk.Message('{"issued": true}', content_encoding="utf-8", content_type="application/json"))
    finally:
        client.shutdown()

    (telemetry,) = emu.wait_for_telemetry(1, device_id="iss-1")
    assert telemetry["payload"] == '{"issued": true}' and telemetry["hub"] == HUB
    assert emu.stats["gateway"]["issued_certificate_connections"] == 1


def test_the_gateway_refuses_an_expired_or_foreign_issued_certificate(make_emulator, policy_ca, tmp_path):
    emu = make_emulator(issuance_doc(policy_ca))
    key, csr = make_csr("iss-short")
    status, answer = register(emu, "iss-short", csr)
    assert status == 200
    cert_path, key_path = _issued_files(tmp_path, "iss-short", answer, key)
    leaf, _ = certificates(answer)
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == dt.timedelta(seconds=2)
    assert _x509_gateway(emu, "iss-short", cert_path, key_path) == 0
    assert _x509_gateway(emu, "iss-1", cert_path, key_path) == 5  # CN is another device's

    # Another CA's certificate with the right CN, and a policy-less device's certificate: refused.
    stranger = ensure_issuance_ca(tmp_path / "stranger").certificate
    other = pki.make_device_cert(pki.load_issued(stranger, stranger.with_name("ca-key.pem")), "iss-1")
    pki.write_device_files(other, tmp_path / "other.pem", tmp_path / "other-key.pem")
    assert _x509_gateway(emu, "iss-1", tmp_path / "other.pem", tmp_path / "other-key.pem") == 5
    plain = pki.make_device_cert(pki.load_issued(policy_ca.certificate, policy_ca.key), "iss-plain")
    pki.write_device_files(plain, tmp_path / "plain.pem", tmp_path / "plain-key.pem")
    assert _x509_gateway(emu, "iss-plain", tmp_path / "plain.pem", tmp_path / "plain-key.pem") == 5

    while dt.datetime.now(dt.UTC) <= leaf.not_valid_after_utc:
        time.sleep(0.2)
    assert _x509_gateway(emu, "iss-short", cert_path, key_path) == 5  # expired: the device must fall back
    connect_gateway(emu, "iss-short", KEY, HUB).close()  # ... to its onboarding key, which still works
    status, answer = register(emu, "iss-short", make_csr("iss-short")[1])  # and renew through DPS
    assert status == 200 and len(emu.issued_certificates("iss-short")) == 2


def test_enrollment_file_issuance_fields_are_checked(policy_ca, tmp_path):
    leaf = pki.make_device_cert(pki.load_issued(policy_ca.certificate, policy_ca.key), "d")
    pki.write_device_files(leaf, tmp_path / "leaf.pem", tmp_path / "leaf-key.pem")
    other_key = tmp_path / "other-key.pem"
    other_key.write_bytes(
        ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    good = policy_ca.policy()
    device = {"registration_id": "d", "symmetric_key": KEY, "assigned_hub": HUB}

    def doc(policy=None, issuance=None):
        entry = dict(device, certificate_issuance=issuance) if issuance is not None else device
        return {"issuance_policies": {"p": policy or good}, "individual": [entry]}

    cases = [
        (doc(dict(good, validity_days=6)), "issuance_policies.p.validity_days", "between 7 and 90"),
        (doc(dict(good, validity_days=91)), "issuance_policies.p.validity_days", "between 7 and 90"),
        (doc(dict(good, validity_seconds=0)), "issuance_policies.p.validity_seconds", "between 1 and"),
        (doc({"ca_certificate": good["ca_certificate"]}), "issuance_policies.p", "ca_key"),
        (doc(dict(good, ca_key=str(other_key))), "issuance_policies.p.ca_key", "is not the key of"),
        (doc(dict(good, ca_key=str(tmp_path / "absent.pem"))), "issuance_policies.p.ca_key", "cannot read"),
        (doc(dict(good, ca_certificate=str(tmp_path / "leaf.pem"))), "issuance_policies.p.ca_certificate", "not a CA"),
        (doc(dict(good, ca_key=str(tmp_path / "leaf.pem"))), "issuance_policies.p.ca_key", "no unencrypted"),
        (doc(issuance={"policy": "q"}), "individual[0].certificate_issuance.policy", "no policy 'q'"),
        (doc(issuance={}), "individual[0].certificate_issuance", "policy"),
        (doc(issuance={"policy": "p", "validity_days": 100}), "certificate_issuance.validity_days", "between"),
        (doc(issuance={"policy": "p", "days": 7}), "individual[0].certificate_issuance", "unknown fields"),
    ]
    secret = policy_ca.key.read_text().splitlines()[1]
    for document, field, words in cases:
        with pytest.raises(EnrollmentError) as info:
            parse_enrollments(document, source=tmp_path / "enrollments.json")
        message = str(info.value)
        assert field in message and words in message, message
        assert secret not in message
    parsed = parse_enrollments(doc(issuance={"policy": "p", "validity_seconds": 90}), source=tmp_path / "e.json")
    assert parsed.individual["d"].issuance.validity == dt.timedelta(seconds=90)
