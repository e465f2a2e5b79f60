"""Operational certificates issued by DPS, end to end on the path a board runs (`run_loop`), both runtimes: the device
makes its key and CSR, the emulator's policy CA signs it, the device authenticates at the gateway with the issued
certificate (no SAS token there), renews it at 80 % of a compressed validity, and says so when the enrollment has
no certificate policy. The key never appears in any output."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from host_tools.provisioning.issuance_ca import ensure_issuance_ca
from tests.helpers import assert_no_secret, enrollment_doc, individual, new_key
from tests.secrets_scan import issued_key_forms, scan

BOARD = {"run_loop": True, "retry_base_ms": 200, "retry_max_s": 2, "reset_after_failures": 0, "watchdog_timeout_s": 0}


@pytest.fixture(scope="module")
def policy_ca(tmp_path_factory):
    return ensure_issuance_ca(tmp_path_factory.mktemp("issuance-ca"))


def _issuing(policy_ca, registration_id, key, **issuance):
    entry = individual(registration_id, key)
    entry["certificate_issuance"] = {"policy": "lab", **issuance}
    doc = enrollment_doc([entry])
    doc["issuance_policies"] = {"lab": policy_ca.policy(validity_days=30)}
    return doc


def _issued(emu, registration_id) -> list[dict]:
    path = emu.state_dir / "issued-certificates.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if registration_id in json.dumps(r)]


def _stored_identity(dev) -> dict:
    return json.loads((dev.storage / "state.json").read_text())["identity"]


def _gateway_passwords(emu) -> list:
    return [r.get("password") for r in emu.credentials_received() if r["endpoint"] == "gateway"]


def test_symmetric_onboarding_then_issued_certificate_at_the_gateway(emulator, device, policy_ca):
    key = new_key()
    emu = emulator(_issuing(policy_ca, "iss-dev", key), "--record-credentials")
    dev = device(emu, "iss-dev", key, certificate_issuance=True, telemetry_count=2, telemetry_interval_s=0, **BOARD)

    result = dev.run()

    assert result.status == 0, result.output
    assert result.event("csr_created")["curve"] == "P-384"
    assert result.event("dps_connected")["api_version"] == "2025-07-01-preview"
    issued = result.event("certificate_issued")
    assert issued["subject"] == "iss-dev" and issued["certificates"] == "2"
    assert len(_issued(emu, "iss-dev")) == 1
    # The stored chain is what the policy CA signed, for the stored key.
    identity = _stored_identity(dev)
    leaf = x509.load_der_x509_certificate(base64.b64decode(identity["chain"][0]))
    ca = x509.load_pem_x509_certificate(policy_ca.certificate.read_bytes())
    leaf.verify_directly_issued_by(ca)
    private = serialization.load_der_private_key(base64.b64decode(identity["key"]), None)
    assert private.public_key().public_numbers() == leaf.public_key().public_numbers()
    # Mutual TLS at the gateway: no SAS token went there, only to DPS (the onboarding credential).
    assert _gateway_passwords(emu) and all(not p for p in _gateway_passwords(emu))
    assert result.event("telemetry_acknowledged")
    # The private key appears in no output, log or record (the secrets scan, with every form of the issued key).
    texts = {"device output": result.output, "emulator log": (emu.state_dir / "emulator.log").read_text()}
    for path in emu.state_dir.glob("*.jsonl"):
        texts[path.name] = path.read_text()
    findings = scan(texts, [key], [], [], range(0), issued_key_forms(dev.storage / "state.json"))
    assert not [f for f in findings if "private key" in f.what or "a key" in f.what], [str(f) for f in findings]
    assert_no_secret(result.output, key)

    # A cached boot: the stored identity, no DPS connection, no new certificate.
    again = dev.run()
    assert again.status == 0, again.output
    assert again.event("done")["dps_connections"] == "0"
    assert len(_issued(emu, "iss-dev")) == 1


def test_x509_onboarding_then_issued_certificate(emulator, device, policy_ca, tmp_path):
    from host_tools.provisioning import pki
    from tests.test_x509 import x509_device, x509_group

    group_ca = pki.ensure_x509_group_ca(tmp_path / "group")
    cert, key_file = pki.issue_device(group_ca, "iss-x509", tmp_path)
    doc = enrollment_doc(groups=[dict(x509_group("factory", group_ca.root), certificate_issuance={"policy": "lab"})])
    doc["issuance_policies"] = {"lab": policy_ca.policy(validity_days=30)}
    emu = emulator(doc)
    dev = x509_device(device, emu, "iss-x509", cert, key_file, certificate_issuance=True, telemetry_count=1, **BOARD)

    result = dev.run()

    assert result.status == 0, result.output
    assert result.event("certificate_issued")["subject"] == "iss-x509"
    assert len(_issued(emu, "iss-x509")) == 1 and result.event("telemetry_acknowledged")


def test_renewal_at_80_percent_of_the_validity(emulator, device, policy_ca):
    key = new_key()
    # 20 s of validity: renewed after 16 s, with a new key pair and a new CSR.
    emu = emulator(_issuing(policy_ca, "iss-renew", key, validity_seconds=20))
    dev = device(emu, "iss-renew", key, certificate_issuance=True, telemetry_count=22, telemetry_interval_s=1, **BOARD)

    result = dev.run(timeout=150)

    assert result.status == 0, result.output
    assert len(result.all("certificate_renewal")) >= 1
    assert not result.all("operational_certificate_expired"), result.output  # renewed before it ran out
    issued = result.all("certificate_issued")
    assert len(issued) >= 2 and len(_issued(emu, "iss-renew")) == len(issued)
    assert len(result.all("csr_created")) == len(issued)
    assert not result.all("retry_scheduled"), result.output  # a planned renewal, not a failure
    sequences = [json.loads(r["payload"])["sequence"] for r in emu.telemetry() if r["device_id"] == "iss-renew"]
    assert sequences == list(range(22))


def test_an_expired_certificate_falls_back_to_the_onboarding_credential(emulator, device, policy_ca):
    key = new_key()
    emu = emulator(_issuing(policy_ca, "iss-expired", key, validity_seconds=3))
    dev = device(emu, "iss-expired", key, certificate_issuance=True, telemetry_count=1, **BOARD)
    assert dev.run().status == 0
    import time

    time.sleep(4)  # the stored certificate has expired: the next boot registers again (with the key) for a new one
    result = dev.run()
    assert result.status == 0, result.output
    assert result.event("operational_certificate_expired") and result.event("certificate_issued")
    assert len(_issued(emu, "iss-expired")) == 2


def test_an_enrollment_without_a_policy_is_a_classified_error(emulator, device):
    key = new_key()
    emu = emulator(enrollment_doc([individual("iss-none", key)]))
    dev = device(emu, "iss-none", key, certificate_issuance=True)

    result = dev.run()

    assert result.status == 1
    assert result.error["kind"] == "assignment_failed" and "certificate policy" in result.error["message"]
    assert not (dev.storage / "state.json").exists()


def test_a_refused_csr_is_a_classified_error_and_nothing_is_stored(emulator, device, policy_ca):
    key = new_key()
    emu = emulator(_issuing(policy_ca, "iss-refused", key), "--fault", "refuse_csr=400040")
    dev = device(emu, "iss-refused", key, certificate_issuance=True)

    result = dev.run()

    assert result.status == 1
    error = result.error
    assert error["kind"] == "bad_request" and error["status"] == "400" and error["error_code"] == "400040", (
        result.output
    )
    assert "refused" in error["message"]
    assert not (dev.storage / "state.json").exists() and _issued(emu, "iss-refused") == []


@pytest.mark.parametrize("case", ["no_policy", "refused_csr"])
def test_on_a_board_a_refusal_waits_at_the_cap_and_is_logged_classified(emulator, device, policy_ca, case):
    from tests.runloop_board import Board, install_standins

    key = new_key()
    if case == "no_policy":
        emu = emulator(enrollment_doc([individual("iss-board", key)]))
        kind = "assignment_failed"
    else:
        emu = emulator(_issuing(policy_ca, "iss-board", key), "--fault", "refuse_csr=400042")
        kind = "bad_request"
    dev = device(emu, "iss-board", key, certificate_issuance=True, **dict(BOARD, retry_max_s=3))
    install_standins(dev.root)
    with Board(dev.root) as board:
        retries = board.wait_for("retry_scheduled", 2, timeout=60)
    assert all(r["reason"] == kind and r["step"] == "provision" for r in retries), retries
    assert all(float(r["in_s"]) == 3.0 for r in retries)  # needs a person: the cap, not the backoff
    assert not (dev.storage / "state.json").exists() and _issued(emu, "iss-board") == []
