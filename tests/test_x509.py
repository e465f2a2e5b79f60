"""X.509 attestation on the MicroPython Unix port against the emulator: a device certificate (CN = registration id)
registers with DPS over mutual TLS with no password, and the same certificate authenticates it at the gateway.
Both enrollment kinds end to end; every bad certificate or key is a classified error with nothing stored."""

from __future__ import annotations

import base64
import datetime as dt
import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization

from host_tools.provisioning import pki
from tests.helpers import HUB, enrollment_doc


@pytest.fixture(scope="module")
def group_ca(tmp_path_factory) -> pki.X509GroupCa:
    return pki.ensure_x509_group_ca(tmp_path_factory.mktemp("x509-ca"))


def x509_device(device, emu, registration_id, cert_file: Path, key_file: Path, use_mpy=False, **extra):
    """A device whose provisioning file names its certificate and key (copied into its flash as certs/...)."""
    dev = device(
        emu,
        registration_id,
        None,
        use_mpy=use_mpy,
        attestation="x509",
        certificate_file=f"certs/{cert_file.name}",
        private_key_file=f"certs/{key_file.name}",
        **extra,
    )
    for source in (cert_file, key_file):
        shutil.copy2(source, dev.root / "certs" / source.name)
    dev.write_provisioning()
    assert "symmetric_key" not in json.loads((dev.root / "provisioning.json").read_text()) or (
        json.loads((dev.root / "provisioning.json").read_text())["symmetric_key"] is None
    )
    return dev


def x509_group(group_id: str, ca_file: Path, **extra) -> dict:
    entry = {"group_id": group_id, "ca_certificate": str(ca_file), "assigned_hub": HUB, "trust_bundle": "bundle"}
    entry.update(extra)
    return entry


def x509_individual(registration_id: str, **how) -> dict:
    entry = {"registration_id": registration_id, "assigned_hub": HUB, "trust_bundle": "bundle"}
    entry.update(how)
    return entry


def _nothing_stored(dev) -> bool:
    return not (dev.storage / "state.json").exists() and not (dev.storage / "trust_bundle.pem").exists()


def _assert_provisioned_and_sent(result, emu, registration_id: str) -> None:
    assert result.status == 0, result.output
    assert result.event("certificate_loaded")["common_name"] == registration_id
    assert result.event("registered") == {"hub": HUB, "device_id": registration_id, "substatus": "initialAssignment"}
    assert result.event("gateway_verified") and result.event("telemetry_acknowledged")["device_id"] == registration_id
    records = [r for r in emu.telemetry() if r["device_id"] == registration_id]
    assert len(records) == 1 and records[0]["hub"] == HUB
    log = (emu.state_dir / "emulator.log").read_text()
    # The gateway took the certificate path: no password in the CONNECT (a password, even empty, means SAS).
    assert f"gateway {registration_id}@" in log and "(X.509 certificate, no password field)" in log
    dps_lines = [line for line in log.splitlines() if f"dps {registration_id}@" in line and "connected (" in line]
    assert dps_lines and all("X.509 certificate, no password field" in line for line in dps_lines)
    assert all(r["attestation"] == "x509" for r in emu.registrations() if r["registration_id"] == registration_id)


@pytest.mark.parametrize("use_mpy", [False, True], ids=["source", "mpy"])
def test_group_enrollment_with_intermediate_end_to_end(emulator, device, group_ca, tmp_path, use_mpy):
    # The group trusts the manufacturer's root; the device sends its certificate and the intermediate.
    cert, key = pki.issue_device(group_ca, "x509-group-dev", tmp_path)
    emu = emulator(enrollment_doc(groups=[x509_group("factory", group_ca.root)]), "-v")
    dev = x509_device(device, emu, "x509-group-dev", cert, key, use_mpy=use_mpy)

    result = dev.run()

    _assert_provisioned_and_sent(result, emu, "x509-group-dev")
    assert result.event("certificate_loaded")["certificates"] == "2"
    reg = [r for r in emu.registrations() if r["registration_id"] == "x509-group-dev" and r["status"] == "assigned"]
    assert reg and reg[-1]["enrollment"] == "group:factory"
    assert (dev.storage / "state.json").exists()

    # A cached boot: straight to the gateway with the same certificate, no DPS connection.
    dps_before = emu_dps_connections(emu)
    assert dps_before == 1
    again = dev.run()
    assert again.status == 0, again.output
    assert again.event("using_cached_assignment") and not again.event("registered")
    assert again.event("done")["dps_connections"] == "0"
    assert emu_dps_connections(emu) == dps_before


def test_x509_device_provisions_as_a_board(emulator, device, group_ca, tmp_path):
    # The path every board runs (run_loop): the configuration step loads the certificate and key too.
    cert, key = pki.issue_device(group_ca, "x509-board", tmp_path)
    emu = emulator(enrollment_doc(groups=[x509_group("factory", group_ca.root)]))
    dev = x509_device(device, emu, "x509-board", cert, key, run_loop=True, telemetry_count=1)

    result = dev.run()

    _assert_provisioned_and_sent(result, emu, "x509-board")
    assert result.event("run_loop_started") and not result.all("retry_scheduled")
    assert len(result.all("watchdog_unavailable")) <= 1  # said once, not before every step


def emu_dps_connections(emu) -> int:
    """CONNECTs the emulator's DPS accepted, from its log."""
    log = (emu.state_dir / "emulator.log").read_text()
    return sum(1 for line in log.splitlines() if " dps " in line and ": connected (" in line)


def test_cached_x509_device_reregisters_when_the_gateway_refuses_it(emulator, device, group_ca, tmp_path):
    cert, key = pki.issue_device(group_ca, "x509-refused", tmp_path)
    doc = enrollment_doc(groups=[x509_group("factory", group_ca.root)])
    emu = emulator(doc, "-v")
    dev = x509_device(device, emu, "x509-refused", cert, key)
    assert dev.run().status == 0
    # The gateway refuses the cached identity once (CONNACK 5): the device asks DPS again, with its certificate.
    emu.update_enrollments(dict(doc, faults={"gateway_refuse": {"code": 5, "count": 1}}))
    result = dev.run()
    assert result.status == 0, result.output
    assert result.event("reprovisioning")["reason"] == "authentication"
    assert result.event("registered") and result.event("telemetry_acknowledged")
    assert emu_dps_connections(emu) == 2


@pytest.mark.parametrize(
    "key_type, key_format, encoding, how, use_mpy",
    [("rsa", "pkcs1", "der", "certificate", True), ("ec", "sec1", "pem", "thumbprint", False)],
    ids=["rsa-pkcs1-der-by-certificate-mpy", "ec-sec1-pem-by-sha1-thumbprint-source"],
)
def test_individual_enrollment_end_to_end(emulator, device, tmp_path, key_type, key_format, encoding, how, use_mpy):
    root = pki.make_root()
    issued = pki.make_device_cert(root, "x509-single", key_type)
    suffix = "pem" if encoding == "pem" else "der"
    cert, key = tmp_path / f"dev.{suffix}", tmp_path / f"dev-key.{suffix}"
    pki.write_device_files(issued, cert, key, key_format, encoding)
    if how == "certificate":
        enrollment = x509_individual("x509-single", certificate=str(cert))
    else:
        sha1 = issued.cert.fingerprint(hashes.SHA1()).hex().upper()
        enrollment = x509_individual("x509-single", thumbprint=":".join(sha1[i : i + 2] for i in range(0, 40, 2)))
    emu = emulator(enrollment_doc([enrollment]), "-v")
    dev = x509_device(device, emu, "x509-single", cert, key, use_mpy=use_mpy)

    result = dev.run()

    _assert_provisioned_and_sent(result, emu, "x509-single")
    assert emu.registrations()[-1]["enrollment"] == "individual:x509-single"


def _expect_refused(dev, kind: str, *words: str):
    result = dev.run()
    assert result.status == 1, result.output
    assert result.error["kind"] == kind, result.output
    for word in words:
        assert word in result.error["message"], result.output
    assert not result.event("registered") and _nothing_stored(dev)
    return result


def test_certificate_from_another_ca_gets_401002(emulator, device, group_ca, tmp_path):
    other = pki.ensure_x509_group_ca(tmp_path / "other-ca")
    cert, key = pki.issue_device(other, "x509-stranger", tmp_path)
    emu = emulator(enrollment_doc(groups=[x509_group("factory", group_ca.root)]))
    result = _expect_refused(x509_device(device, emu, "x509-stranger", cert, key), "authentication")
    assert result.error["error_code"] == "401002" and result.error["status"] == "401"


def test_missing_intermediate_gets_401002(emulator, device, group_ca, tmp_path):
    issued = pki.make_device_cert(group_ca.load_intermediate(), "x509-no-chain")
    issued.chain = []  # the device certificate alone: the root cannot be reached
    cert, key = tmp_path / "leaf.pem", tmp_path / "leaf-key.pem"
    pki.write_device_files(issued, cert, key)
    emu = emulator(enrollment_doc(groups=[x509_group("factory", group_ca.root)]))
    result = _expect_refused(x509_device(device, emu, "x509-no-chain", cert, key), "authentication")
    assert result.error["error_code"] == "401002"


def test_refusal_at_connack_when_configured(emulator, device, group_ca, tmp_path):
    other = pki.ensure_x509_group_ca(tmp_path / "other-ca")
    cert, key = pki.issue_device(other, "x509-connack", tmp_path)
    emu = emulator(enrollment_doc(groups=[x509_group("factory", group_ca.root)]), "--fault", "auth_failure=connack")
    _expect_refused(x509_device(device, emu, "x509-connack", cert, key), "authentication", "CONNACK")


def test_cn_differing_from_registration_id_is_refused_before_connecting(emulator, device, group_ca, tmp_path):
    cert, key = pki.issue_device(group_ca, "x509-real-cn", tmp_path)
    emu = emulator(enrollment_doc(groups=[x509_group("factory", group_ca.root)]))
    dev = x509_device(device, emu, "x509-claimed", cert, key)
    result = _expect_refused(dev, "configuration", "x509-claimed", "x509-real-cn")
    assert not emu.registrations()
    assert result.event("done") is None


def test_expired_certificate_is_a_classified_error(emulator, device, group_ca, tmp_path):
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    cert, key = pki.issue_device(
        group_ca, "x509-expired", tmp_path, valid_from=past, valid_until=past + dt.timedelta(days=5)
    )
    emu = emulator(enrollment_doc(groups=[x509_group("factory", group_ca.root)]))
    _expect_refused(x509_device(device, emu, "x509-expired", cert, key), "authentication", "not_after")
    assert not emu.registrations()


def test_expiring_certificate_is_a_warning_with_not_after(emulator, device, group_ca, tmp_path):
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    cert, key = pki.issue_device(group_ca, "x509-expiring", tmp_path, valid_until=soon)
    emu = emulator(enrollment_doc(groups=[x509_group("factory", group_ca.root)]))
    dev = x509_device(device, emu, "x509-expiring", cert, key, certificate_expiry_warning_days=10)
    result = dev.run()
    assert result.status == 0, result.output
    warning = result.event("certificate_expiring")
    assert warning["not_after"] == soon.strftime("%Y-%m-%dT%H:%M:%SZ") and warning["days_left"] in ("2", "3")


def test_key_of_another_certificate_is_refused(emulator, device, group_ca, tmp_path):
    cert, _ = pki.issue_device(group_ca, "x509-mixed", tmp_path)
    _, other_key = pki.issue_device(group_ca, "x509-other", tmp_path)
    emu = emulator(enrollment_doc(groups=[x509_group("factory", group_ca.root)]))
    _expect_refused(x509_device(device, emu, "x509-mixed", cert, other_key), "configuration", "private_key_file")
    assert not emu.registrations()


def test_key_file_problems_name_the_field(emulator, device, group_ca, tmp_path):
    cert, key = pki.issue_device(group_ca, "x509-keys", tmp_path)
    emu = emulator(enrollment_doc(groups=[x509_group("factory", group_ca.root)]))
    encrypted = tmp_path / "encrypted.pem"
    loaded = serialization.load_pem_private_key(key.read_bytes(), None)
    encrypted.write_bytes(
        loaded.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    dev = x509_device(device, emu, "x509-keys", cert, encrypted)
    shutil.copy2(key, dev.root / "certs" / key.name)
    _expect_refused(dev, "configuration", "private_key_file", "encrypted")
    dev.write_provisioning(private_key_file="certs/absent.pem")
    _expect_refused(dev, "configuration", "private_key_file")
    (dev.root / "certs" / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    dev.write_provisioning(private_key_file=f"certs/{key.name}", certificate_file="certs/garbage.pem")
    _expect_refused(dev, "configuration", "certificate_file")
    assert not emu.registrations()


def private_key_material(key_file: Path) -> list[str]:
    """Every form a leaked private key could take in text: the PEM body lines, the DER bytes as base64 and as hex
    (both cases), and the raw private scalar / exponent in hex."""
    data = key_file.read_bytes()
    if b"-----BEGIN" in data:
        key = serialization.load_pem_private_key(data, None)
    else:
        key = serialization.load_der_private_key(data, None)
    forms = []
    for fmt in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL):
        der = key.private_bytes(serialization.Encoding.DER, fmt, serialization.NoEncryption())
        b64 = base64.b64encode(der).decode()
        forms += [b64[i : i + 32] for i in range(0, len(b64) - 32, 32)]
        forms += [der.hex()[i : i + 32] for i in range(0, len(der.hex()) - 32, 32)]
        forms += [der.hex().upper()[i : i + 32] for i in range(0, len(der.hex()) - 32, 32)]
        pem = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode()
        forms += [line for line in pem.splitlines() if line and not line.startswith("-----")]
    numbers = key.private_numbers()
    secret = numbers.private_value if hasattr(numbers, "private_value") else numbers.d
    forms.append(format(secret, "x")[:32])
    return forms


def test_no_private_key_material_in_any_output_or_file(emulator, device, group_ca, tmp_path):
    cert, key = pki.issue_device(group_ca, "x509-secret", tmp_path, key_type="rsa", key_format="pkcs1")
    emu = emulator(enrollment_doc(groups=[x509_group("factory", group_ca.root)]), "-v")
    dev = x509_device(
        device, emu, "x509-secret", cert, key, log_level="debug", telemetry_count=2, telemetry_interval_s=0
    )
    outputs = [dev.run().output]
    # A refused run too: the key of another device (errors must not quote it either).
    _, other_key = pki.issue_device(group_ca, "x509-other-secret", tmp_path)
    shutil.copy2(other_key, dev.root / "certs" / other_key.name)
    dev.write_provisioning(private_key_file=f"certs/{other_key.name}", force_reprovision=True)
    refused = dev.run()
    assert refused.status == 1 and refused.error["kind"] == "configuration"
    outputs.append(refused.output)
    texts = outputs + [(emu.state_dir / "emulator.log").read_text()]
    # Every file the device or the emulator wrote: all but the firmware, the provisioning file and its key files,
    # and the emulator's own enrollment file and PKI keys.
    written = [
        p
        for p in dev.root.rglob("*")
        if p.is_file()
        and p.parts[len(dev.root.parts)] not in ("azprov", "lib", "main.py", "provisioning.json", "certs")
    ]
    written += [p for p in emu.state_dir.rglob("*") if p.is_file() and not p.name.endswith("-key.pem")]
    assert any(p.name == "state.json" for p in written)
    texts += [p.read_text(errors="replace") for p in written]
    everything = "\n".join(texts)
    leaked = [form for k in (key, other_key) for form in private_key_material(k) if form in everything]
    assert not leaked, "private key material appeared in an output or file"


def test_key_without_public_part_that_does_not_match_fails_in_the_handshake(emulator, device, group_ca, tmp_path):
    # A SEC1 key without its optional public key cannot be compared with the certificate before connecting; the
    # TLS stack takes it, and the server refuses the handshake (the signature does not fit the certificate).
    cert, _ = pki.issue_device(group_ca, "x509-bare-key", tmp_path)
    _, other_key = pki.issue_device(group_ca, "x509-bare-other", tmp_path)
    private = serialization.load_pem_private_key(other_key.read_bytes(), None).private_numbers().private_value
    bare = (
        b"\x30\x31\x02\x01\x01\x04\x20"
        + private.to_bytes(32, "big")
        + b"\xa0\x0a\x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x07"
    )
    bare_key = tmp_path / "bare-key.der"
    bare_key.write_bytes(bare)
    emu = emulator(enrollment_doc(groups=[x509_group("factory", group_ca.root)]))
    result = _expect_refused(x509_device(device, emu, "x509-bare-key", cert, bare_key), "authentication", "TLS")
    assert result.event("certificate_loaded")  # the files passed every check the device can make alone
