"""Host tools for certificate issuance: `pki --issuance-ca DIR` makes the emulator's policy CA (key 0600, never
printed, reused), `provision-file create --certificate-issuance` sets the field and validate accepts it, and
`provision-file show` on a flash folder lists the stored operational certificate (identity.pem) but never its key."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from host_tools.emulator import issuance
from host_tools.emulator.enrollments import parse_enrollments
from host_tools.provisioning.issuance_ca import ensure_issuance_ca
from host_tools.provisioning.pki import load_certificates
from tests.host_helpers import DEVICE_KEY, run_cli

pytestmark = pytest.mark.timeout(60)


def test_pki_issuance_ca_writes_a_p384_ca_and_a_private_key(tmp_path):
    folder = tmp_path / "issuance"
    proc = run_cli("pki", "--issuance-ca", str(folder))
    assert proc.returncode == 0, proc.stderr
    cert_path, key_path = folder / "ca.pem", folder / "ca-key.pem"
    (cert,) = load_certificates(cert_path)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey) and cert.public_key().curve.name == "secp384r1"
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    cert.verify_directly_issued_by(cert)
    assert key_path.stat().st_mode & 0o777 == 0o600
    key_text = key_path.read_text()
    for line in key_text.splitlines()[1:-1]:
        assert line not in proc.stdout + proc.stderr
    assert "created" in proc.stdout
    # The snippet it prints is an issuance_policies entry the emulator loads.
    snippet = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("enrollment file: "))[17:])
    parsed = parse_enrollments(snippet, source=tmp_path / "enrollments.json")
    assert parsed.issuance_policies["default"].ca_certificate == cert
    # A second run reuses it.
    again = run_cli("pki", "--issuance-ca", str(folder))
    assert again.returncode == 0 and "reused" in again.stdout
    assert key_path.read_text() == key_text


def test_pki_options_need_their_folders(tmp_path):
    nothing = run_cli("pki")
    assert nothing.returncode == 2 and "--issuance-ca" in nothing.stderr
    no_out = run_cli("pki", "--x509-group-ca")
    assert no_out.returncode == 2 and "--out" in no_out.stderr
    blocker = tmp_path / "file"
    blocker.write_text("x")
    refused = run_cli("pki", "--issuance-ca", str(blocker / "ca"))
    assert refused.returncode != 0 and "Traceback" not in refused.stderr


def _create(out, *extra):
    return run_cli(
        "provision-file",
        "create",
        "--out",
        str(out),
        "--id-scope",
        "0ne00AAAAAA",
        "--registration-id",
        "iss-1",
        "--symmetric-key",
        DEVICE_KEY,
        *extra,
    )


def test_create_sets_certificate_issuance_and_validate_accepts_it(tmp_path):
    out = tmp_path / "flash" / "provisioning.json"
    proc = _create(out, "--certificate-issuance")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["certificate_issuance"] is True
    checked = run_cli("provision-file", "validate", str(out))
    assert checked.returncode == 0 and f"{out}: ok\n" in checked.stdout, checked.stdout + checked.stderr
    plain = tmp_path / "plain" / "provisioning.json"
    assert _create(plain).returncode == 0
    assert "certificate_issuance" not in json.loads(plain.read_text())


def _issued_chain(registration_id: str, ca_folder, validity: dt.timedelta) -> tuple[bytes, bytes]:
    """(identity.pem, identity.key) as a device stores them after DPS issued its certificate."""
    ca = ensure_issuance_ca(ca_folder)
    cert, ca_key = issuance.load_policy_ca(ca.certificate, ca.key)
    policy = issuance.IssuancePolicy("lab", validity, cert, ca_key)
    key = ec.generate_private_key(ec.SECP384R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, registration_id)]))
        .sign(key, hashes.SHA384())
    )
    csr = issuance.parse_csr(base64.b64encode(csr.public_bytes(serialization.Encoding.DER)).decode(), registration_id)
    leaf = issuance.issue(policy, csr, registration_id, dt.datetime.now(dt.UTC))
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, cert))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem, key_pem


def _store_identity(storage, pem, key_pem):
    """The identity as the firmware commits it: inside state.json (chain as base64 DER, the key as base64 DER)."""
    certs = x509.load_pem_x509_certificates(pem)
    key = ""
    if key_pem is not None:
        private = serialization.load_pem_private_key(key_pem, None)
        key = base64.b64encode(
            private.private_bytes(
                serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
            )
        ).decode()
    state = {
        "version": 1,
        "assignment": {"assigned_hub": "h", "device_id": "iss-1"},
        "trust_bundle": None,
        "identity": {
            "key": key,
            "chain": [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in certs],
            "not_before": int(certs[0].not_valid_before_utc.timestamp()),
            "not_after": int(certs[0].not_valid_after_utc.timestamp()),
        },
    }
    (storage / "state.json").write_text(json.dumps(state))


def test_show_lists_the_stored_operational_certificate_never_its_key(tmp_path):
    flash = tmp_path / "flash"
    assert _create(flash / "provisioning.json", "--certificate-issuance").returncode == 0
    before = run_cli("provision-file", "show", str(flash))
    assert before.returncode == 0 and "operational certificate" not in before.stdout

    pem, key_pem = _issued_chain("iss-1", tmp_path / "ca", dt.timedelta(days=30))
    storage = flash / "azprov_state"
    storage.mkdir()
    _store_identity(storage, pem, key_pem)
    leaf, ca = x509.load_pem_x509_certificates(pem)

    for target in (flash, flash / "provisioning.json"):
        proc = run_cli("provision-file", "show", str(target))
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout
        assert "operational certificate" in out and "CN=iss-1" in out
        assert ca.subject.rfc4514_string() in out  # the leaf's issuer and the CA's own subject
        assert format(leaf.serial_number, "X") in out
        assert f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z (valid, 29 d" in out
        assert "private key" in out and "present (never shown)" in out
        assert "PRIVATE KEY" not in out + proc.stderr
        for line in key_pem.decode().splitlines()[1:-1]:
            assert line not in out + proc.stderr


def test_show_says_when_the_stored_certificate_expired_or_is_unreadable(tmp_path):
    flash = tmp_path / "flash"
    assert _create(flash / "provisioning.json").returncode == 0
    storage = flash / "azprov_state"
    storage.mkdir()
    pem, _ = _issued_chain("iss-1", tmp_path / "ca", dt.timedelta(seconds=1))
    _store_identity(storage, pem, None)
    leaf = x509.load_pem_x509_certificates(pem)[0]
    while dt.datetime.now(dt.UTC) <= leaf.not_valid_after_utc:
        time.sleep(0.1)
    proc = run_cli("provision-file", "show", str(flash))
    assert proc.returncode == 0 and "(expired)" in proc.stdout and "absent (never shown)" in proc.stdout

    state = json.loads((storage / "state.json").read_text())
    state["identity"]["chain"] = ["bm90IGEgY2VydGlmaWNhdGU="]
    (storage / "state.json").write_text(json.dumps(state))
    proc = run_cli("provision-file", "show", str(flash))
    assert proc.returncode == 0 and "not a certificate" in proc.stdout, proc.stdout
