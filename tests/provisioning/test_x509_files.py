"""Host tools for X.509 devices: `pki` makes a group CA and device certificates, `provision-file create --attestation
x509` writes the files (given or newly issued), `validate` checks key/certificate, CN, chain and dates, `fleet`
gives each device its own certificate, `deploy` copies them; private keys are mode 0600 and never printed."""

from __future__ import annotations

import base64
import datetime as dt
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from host_tools.board.deploy import provisioning_files
from host_tools.provisioning import pki

REPO = Path(__file__).resolve().parents[2]
SCOPE = "0ne00AAAAAA"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "host_tools", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def key_material(path: Path) -> list[str]:
    """What of a private key must never appear in output: the PEM body lines, the DER as base64 and as hex."""
    data = path.read_bytes()
    key = (
        serialization.load_pem_private_key(data, None)
        if b"-----" in data
        else serialization.load_der_private_key(data, None)
    )
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pem_lines = [line for line in data.decode("ascii", "replace").splitlines() if line and not line.startswith("-")]
    return pem_lines + [base64.b64encode(der).decode()[:40], der.hex()[:40], der.hex().upper()[:40]]


@pytest.fixture(scope="module")
def group(tmp_path_factory) -> pki.X509GroupCa:
    return pki.ensure_x509_group_ca(tmp_path_factory.mktemp("group-ca"))


def test_pki_makes_group_ca_and_device_certificates(tmp_path):
    proc = cli("pki", "--out", str(tmp_path), "--x509-group-ca", "--device", "dev-ec", "--device", "dev-rsa")
    assert proc.returncode == 0, proc.stderr
    proc = cli("pki", "--out", str(tmp_path), "--device", "dev-rsa2", "--key-type", "rsa")
    assert proc.returncode == 0, proc.stderr
    root = x509.load_pem_x509_certificate((tmp_path / "x509-root.pem").read_bytes())
    intermediate = x509.load_pem_x509_certificate((tmp_path / "x509-intermediate.pem").read_bytes())
    intermediate.verify_directly_issued_by(root)
    for name, key_type in (("dev-ec", ec.EllipticCurvePrivateKey), ("dev-rsa2", rsa.RSAPrivateKey)):
        chain = x509.load_pem_x509_certificates((tmp_path / f"{name}.pem").read_bytes())
        assert chain[0].subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value == name
        assert chain[1] == intermediate  # the device sends the intermediate after its own certificate
        chain[0].verify_directly_issued_by(intermediate)
        key_path = tmp_path / f"{name}-key.pem"
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        assert isinstance(key, key_type)
        assert key.public_key().public_numbers() == chain[0].public_key().public_numbers()
        if key_type is rsa.RSAPrivateKey:
            assert key.key_size == 2048
        else:
            assert key.curve.name == "secp256r1"
        for secret in key_material(key_path):
            assert secret not in proc.stdout + proc.stderr


def test_create_from_group_ca_then_validate(group, tmp_path):
    out = tmp_path / "dev" / "provisioning.json"
    proc = cli(
        "provision-file", "create", "--out", str(out), "--registration-id", "dev-new", "--id-scope", SCOPE,
        "--attestation", "x509", "--group-ca", str(group.intermediate), "--group-ca-key", str(group.intermediate_key),
        "--ca-file", str(group.root),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    config = json.loads(out.read_text())
    assert config["attestation"] == "x509" and "symmetric_key" not in config
    key_path = out.parent / config["private_key_file"]
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600 and stat.S_IMODE(out.stat().st_mode) == 0o600
    for secret in key_material(key_path):
        assert secret not in proc.stdout + proc.stderr
    ok = cli("provision-file", "validate", str(out), "--group-ca", str(group.root))
    assert ok.returncode == 0 and "ok" in ok.stdout, ok.stderr
    other = pki.ensure_x509_group_ca(tmp_path / "other")
    refused = cli("provision-file", "validate", str(out), "--group-ca", str(other.root))
    assert refused.returncode == 1 and "certificate_file" in refused.stderr and "does not reach" in refused.stderr
    assert "Traceback" not in refused.stderr


def _write_given(tmp_path: Path, issued: pki.Issued, name: str, key_format="pkcs8", encoding="pem"):
    cert, key = tmp_path / f"{name}.{encoding}", tmp_path / f"{name}-key.{encoding}"
    pki.write_device_files(issued, cert, key, key_format, encoding)
    return cert, key


def _create_given(out: Path, registration_id: str, cert: Path, key: Path) -> subprocess.CompletedProcess:
    return cli(
        "provision-file", "create", "--out", str(out), "--registration-id", registration_id, "--id-scope", SCOPE,
        "--attestation", "x509", "--certificate-file", str(cert), "--private-key-file", str(key),
        "--ca-file", str(cert),
    )  # fmt: skip


def test_create_from_given_files_checks_them_before_writing(group, tmp_path):
    intermediate = group.load_intermediate()
    good = pki.make_device_cert(intermediate, "dev-given", "rsa")
    cert, key = _write_given(tmp_path, good, "given", "pkcs1", "der")
    ca = tmp_path / "root.pem"
    ca.write_bytes(group.root.read_bytes())
    out = tmp_path / "ok" / "provisioning.json"
    proc = cli(
        "provision-file", "create", "--out", str(out), "--registration-id", "dev-given", "--id-scope", SCOPE,
        "--attestation", "x509", "--certificate-file", str(cert), "--private-key-file", str(key), "--ca-file", str(ca),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (out.parent / "certs" / "given-key.der").read_bytes() == key.read_bytes()

    other = pki.make_device_cert(intermediate, "dev-other")
    _, other_key = _write_given(tmp_path, other, "other")
    expired = pki.make_device_cert(
        intermediate,
        "dev-old",
        valid_from=dt.datetime.now(dt.UTC) - dt.timedelta(days=9),
        valid_until=dt.datetime.now(dt.UTC) - dt.timedelta(days=1),
    )
    old_cert, old_key = _write_given(tmp_path, expired, "old")
    encrypted = tmp_path / "enc.pem"
    encrypted.write_bytes(
        other.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"x")
        )
    )
    cases = [
        ("dev-given", cert, other_key, "private_key_file"),  # key of another certificate
        ("dev-claimed", cert, key, "registration_id"),  # CN differs
        ("dev-old", old_cert, old_key, "not_after"),  # expired
        ("dev-given", cert, encrypted, "encrypted"),
        ("dev-given", tmp_path / "absent.pem", key, "does not exist"),
    ]
    for index, (registration_id, cert_file, key_file, word) in enumerate(cases):
        out = tmp_path / f"bad-{index}" / "provisioning.json"
        proc = cli(
            "provision-file", "create", "--out", str(out), "--registration-id", registration_id, "--id-scope", SCOPE,
            "--attestation", "x509", "--certificate-file", str(cert_file), "--private-key-file", str(key_file),
            "--ca-file", str(ca),
        )  # fmt: skip
        assert proc.returncode == 1 and word in proc.stderr, (word, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert not out.parent.exists() or not any(out.parent.rglob("*")), f"{word}: something was written"


def test_fleet_gives_each_device_its_own_certificate(group, tmp_path):
    proc = cli(
        "fleet", "--out-dir", str(tmp_path / "fleet"), "--count", "3", "--pattern", "x509-{n:02d}", "--id-scope", SCOPE,
        "--attestation", "x509", "--group-ca", str(group.intermediate), "--group-ca-key", str(group.intermediate_key),
        "--ca-file", str(group.root),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    fingerprints = set()
    for n in (1, 2, 3):
        path = tmp_path / "fleet" / f"x509-{n:02d}.json"
        config = json.loads(path.read_text())
        cert = x509.load_pem_x509_certificates((path.parent / config["certificate_file"]).read_bytes())[0]
        assert cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value == f"x509-{n:02d}"
        fingerprints.add(cert.fingerprint(cert.signature_hash_algorithm))
        key_path = path.parent / config["private_key_file"]
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
        for secret in key_material(key_path):
            assert secret not in proc.stdout + proc.stderr
        assert cli("provision-file", "validate", str(path), "--group-ca", str(group.root)).returncode == 0
    assert len(fingerprints) == 3


def test_deploy_copies_certificate_and_key_like_the_ca_file(group, tmp_path):
    out = tmp_path / "dev" / "provisioning.json"
    assert (
        cli(
            "provision-file",
            "create",
            "--out",
            str(out),
            "--registration-id",
            "dev-deploy",
            "--id-scope",
            SCOPE,
            "--attestation",
            "x509",
            "--group-ca",
            str(group.intermediate),
            "--group-ca-key",
            str(group.intermediate_key),
            "--ca-file",
            str(group.root),
        ).returncode  # fmt: skip
        == 0
    )
    files = {f.dest: f for f in provisioning_files(out)}
    assert set(files) == {
        "/provisioning.json",
        "/certs/x509-root.pem",
        "/certs/dev-deploy.pem",
        "/certs/dev-deploy-key.pem",
    }
    assert files["/certs/dev-deploy-key.pem"].data == (out.parent / "certs" / "dev-deploy-key.pem").read_bytes()


def test_a_missing_file_is_named_by_its_field(group, tmp_path):
    """Issue 21, item 9: an error for a missing certificate, key or CA file named the file but not the field
    (certificate_file / private_key_file / dps_ca_file), in `create`, `validate` and `run-unix`."""
    out = tmp_path / "dev" / "provisioning.json"
    made = cli(
        "provision-file", "create", "--out", str(out), "--registration-id", "dev-fields", "--id-scope", SCOPE,
        "--attestation", "x509", "--group-ca", str(group.intermediate), "--group-ca-key", str(group.intermediate_key),
        "--ca-file", str(group.root),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    config = json.loads(out.read_text())
    absent = tmp_path / "absent.pem"
    given = {
        "certificate_file": out.parent / config["certificate_file"],
        "private_key_file": out.parent / config["private_key_file"],
    }
    for field, option in (
        ("certificate_file", "--certificate-file"),
        ("private_key_file", "--private-key-file"),
        ("dps_ca_file", "--ca-file"),
    ):
        files = {"--certificate-file": given["certificate_file"], "--private-key-file": given["private_key_file"]}
        files["--ca-file"] = group.root
        files[option] = absent
        proc = cli(
            "provision-file", "create", "--out", str(tmp_path / field / "provisioning.json"), "--id-scope", SCOPE,
            "--registration-id", "dev-fields", "--attestation", "x509",
            *[str(part) for pair in files.items() for part in pair],
        )  # fmt: skip
        assert proc.returncode == 1 and f"{field} ({option}): {absent}: " in proc.stderr, (field, proc.stderr)
        assert "does not exist" in proc.stderr
    for field, path in given.items():
        kept = path.read_bytes()
        path.unlink()
        for command in (["provision-file", "validate", str(out)], ["run-unix", "--provisioning", str(out)]):
            proc = cli(*command)
            assert proc.returncode == 1, proc.stderr
            assert f"{out}: {field}: {path}: " in proc.stderr and "does not exist" in proc.stderr, proc.stderr
        path.write_bytes(kept)


def test_a_certificate_file_with_the_intermediate_first_is_named_as_such(group, tmp_path):
    """Issue 21, item 3 (host side): a certificate file with the intermediate before the device certificate was
    reported as "private_key_file: does not belong to the device certificate"; `create`, `validate` and `run-unix`
    now name certificate_file and say the device certificate must come first."""
    from host_tools.provisioning.x509_identity import plan_identity

    identity = plan_identity("dev-order", group_ca=group.intermediate, group_ca_key=group.intermediate_key)
    device_pem, intermediate_pem = x509.load_pem_x509_certificates(identity.cert_bytes)
    swapped = tmp_path / "swapped.pem"
    swapped.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (intermediate_pem, device_pem)))
    key = tmp_path / "dev-order-key.pem"
    key.write_bytes(identity.key_bytes)
    other = plan_identity("dev-other", group_ca=group.intermediate, group_ca_key=group.intermediate_key)
    other_device = x509.load_pem_x509_certificates(other.cert_bytes)[0]
    ca_first = tmp_path / "ca-first.pem"  # a CA first, then a device certificate that is not this key's
    ca_first.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (intermediate_pem, other_device)))
    for cert_file, words in ((swapped, "is certificate 2 of 2; it must come first"), (ca_first, "is a CA")):
        out = tmp_path / cert_file.stem / "provisioning.json"
        proc = cli(
            "provision-file", "create", "--out", str(out), "--registration-id", "dev-order", "--id-scope", SCOPE,
            "--attestation", "x509", "--certificate-file", str(cert_file), "--private-key-file", str(key),
            "--ca-file", str(group.root),
        )  # fmt: skip
        assert proc.returncode == 1, proc.stderr
        assert "certificate_file: the" in proc.stderr and words in proc.stderr, proc.stderr
        assert "must come first" in proc.stderr
        assert "private_key_file" not in proc.stderr.replace("the one private_key_file belongs to", "")
    # A file written in the right order, then its certificate file swapped behind the tools' back.
    out = tmp_path / "dev" / "provisioning.json"
    right = tmp_path / "right.pem"
    right.write_bytes(identity.cert_bytes)
    made = cli(
        "provision-file", "create", "--out", str(out), "--registration-id", "dev-order", "--id-scope", SCOPE,
        "--attestation", "x509", "--certificate-file", str(right), "--private-key-file", str(key),
        "--ca-file", str(group.root),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    (out.parent / json.loads(out.read_text())["certificate_file"]).write_bytes(swapped.read_bytes())
    for command in (["provision-file", "validate", str(out)], ["run-unix", "--provisioning", str(out)]):
        proc = cli(*command)
        assert proc.returncode == 1 and f"{out}: certificate_file: the device certificate" in proc.stderr, proc.stderr
        assert "must come first" in proc.stderr


def test_a_group_ca_file_in_the_wrong_order_is_named_as_such(group, tmp_path):
    """Issue 21, item 3 (host side, the host's own check): a --group-ca file with its root before the intermediate
    whose key is given was "key does not belong"; now the file and the order are named."""
    root = x509.load_pem_x509_certificate(group.root.read_bytes())
    intermediate = x509.load_pem_x509_certificates(group.intermediate.read_bytes())[0]
    swapped = tmp_path / "swapped-ca.pem"
    swapped.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (root, intermediate)))
    with pytest.raises(pki.PkiError, match="is certificate 2 of 2; it must come first"):
        pki.load_issued(swapped, group.intermediate_key)
