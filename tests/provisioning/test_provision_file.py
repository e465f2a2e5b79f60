"""provision-file and fleet: keys derived on the host, files checked against the schema, secrets never shown."""

import base64
import hashlib
import hmac
import json

import pytest

from host_tools.provisioning.device_keys import derive_device_key
from host_tools.provisioning.dps_roots import DPS_PUBLIC_ROOTS, pem_certificates, public_dps_roots
from host_tools.provisioning.fleet import registration_ids
from host_tools.provisioning.validation import ProvisioningFileError, check_config, validate_provisioning_file
from host_tools.provisioning.writing import DeviceSettings
from tests.host_helpers import DEVICE_KEY, GROUP_KEY, VECTOR_DERIVED_KEY, VECTOR_REGISTRATION_ID, run_cli

pytestmark = pytest.mark.timeout(60)


def test_derived_key_matches_the_public_vector():
    assert derive_device_key(GROUP_KEY, VECTOR_REGISTRATION_ID) == VECTOR_DERIVED_KEY


def test_derived_key_is_hmac_of_the_registration_id():
    expected = base64.b64encode(hmac.new(base64.b64decode(GROUP_KEY), "sensor-ü".encode(), hashlib.sha256).digest())
    assert derive_device_key(GROUP_KEY, "sensor-ü") == expected.decode()
    with pytest.raises(ProvisioningFileError, match="group key is not valid base64"):
        derive_device_key("not base64!", "x")


def test_public_roots_are_picked_from_certifi_by_subject():
    from cryptography import x509

    roots = public_dps_roots()
    names = [name for name, _ in roots]
    required = [name for name, needed in DPS_PUBLIC_ROOTS if needed]
    assert names[: len(required)] == required
    for name, pem in roots:
        cert = x509.load_pem_x509_certificate(pem)
        assert cert.subject.rfc4514_string().startswith(f"CN={name}") or f"CN={name}" in cert.subject.rfc4514_string()


def test_create_from_a_group_key_never_writes_the_group_key(tmp_path):
    out = tmp_path / "dev" / "provisioning.json"
    proc = run_cli(
        "provision-file",
        "create",
        "--out",
        str(out),
        "--id-scope",
        "0ne00AAAAAA",
        "--registration-id",
        "sensor-007",
        "--group-key",
        GROUP_KEY,
        "--payload",
        '{"model": "thermo-1"}',
    )
    assert proc.returncode == 0, proc.stderr
    config = json.loads(out.read_text())
    assert config["symmetric_key"] == derive_device_key(GROUP_KEY, "sensor-007")
    assert config["payload"] == {"model": "thermo-1"}
    assert config["dps_ca_file"] == "certs/dps-root.pem"
    assert len(pem_certificates(out.parent / "certs" / "dps-root.pem")) >= 4
    assert out.stat().st_mode & 0o077 == 0, "a file holding a key is readable by its owner only"
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert GROUP_KEY not in path.read_text(errors="replace")
    for secret in (GROUP_KEY, config["symmetric_key"]):
        assert secret not in proc.stdout + proc.stderr
    assert "hidden" in proc.stdout


def test_create_from_an_individual_key_with_a_given_ca_file(tmp_path):
    ca = tmp_path / "elsewhere" / "emulator-root.pem"
    ca.parent.mkdir()
    ca.write_text(public_dps_roots()[0][1].decode())
    out = tmp_path / "dev" / "provisioning.json"
    proc = run_cli(
        "provision-file",
        "create",
        "--out",
        str(out),
        "--id-scope",
        "0ne00AAAAAA",
        "--registration-id",
        "sensor-1",
        "--symmetric-key",
        DEVICE_KEY,
        "--ca-file",
        str(ca),
        "--dps-host",
        "localhost",
        "--dps-port",
        "41234",
        "--gateway-host",
        "edge-gw.example.local",
        "--log-level",
        "debug",
    )
    assert proc.returncode == 0, proc.stderr
    config = validate_provisioning_file(out)
    assert config["symmetric_key"] == DEVICE_KEY and config["dps_port"] == 41234
    assert config["dps_ca_file"] == "certs/emulator-root.pem"
    assert (out.parent / "certs" / "emulator-root.pem").read_bytes() == ca.read_bytes()
    assert DEVICE_KEY not in proc.stdout + proc.stderr


def test_create_needs_exactly_one_key_and_does_not_overwrite(tmp_path, provisioning):
    common = ["provision-file", "create", "--id-scope", "0ne00AAAAAA", "--registration-id", "d1"]
    proc = run_cli(*common, "--out", str(tmp_path / "a.json"))
    assert proc.returncode != 0 and "exactly one" in proc.stderr
    proc = run_cli(*common, "--out", str(tmp_path / "a.json"), "--symmetric-key", DEVICE_KEY, "--group-key", GROUP_KEY)
    assert proc.returncode != 0 and "exactly one" in proc.stderr
    proc = run_cli(*common, "--out", str(provisioning), "--symmetric-key", DEVICE_KEY)
    assert proc.returncode != 0 and "already exists" in proc.stderr and "Traceback" not in proc.stderr


def test_validate_a_good_file(provisioning):
    proc = run_cli("provision-file", "validate", str(provisioning))
    assert proc.returncode == 0, proc.stderr
    assert f"{provisioning}: ok" in proc.stdout


BAD_CASES = [
    ({"id_scope": "scope"}, "id_scope", "0ne followed by 8 letters or digits"),
    ({"registration_id": "ends-with."}, "registration_id", "end in a letter"),
    ({"registration_id": "has space"}, "registration_id", "letters, digits"),
    ({"symmetric_key": "c2hvcnQ="}, "symmetric_key", "base64 key of at least 16 bytes"),
    ({"symmetric_key": "@@@@@@@@@@@@@@@@@@@@@@@@@@@@"}, "symmetric_key", "base64 key"),
    ({"dps_port": 70000}, "dps_port", "between 1 and 65535"),
    ({"dps_port": True}, "dps_port", "whole number"),
    ({"log_level": "verbose"}, "log_level", "one of"),
    ({"sas_ttl_s": 1}, "sas_ttl_s", "between 5 and"),
    ({"wifi": {"password": "pw-secret-123"}}, "wifi.ssid", "required"),
    ({"dps_ca_file": "certs/missing.pem"}, "dps_ca_file", "does not exist"),
    ({"dps_host": None}, "dps_host", "must be a string"),
]


@pytest.mark.parametrize("change,field,words", BAD_CASES, ids=[c[1] + "-" + c[2][:12] for c in BAD_CASES])
def test_validate_names_the_field_and_the_file_and_hides_secrets(provisioning, change, field, words):
    config = json.loads(provisioning.read_text())
    config.update(change)
    provisioning.write_text(json.dumps(config))
    with pytest.raises(ProvisioningFileError) as caught:
        validate_provisioning_file(provisioning)
    message = str(caught.value)
    assert f"{provisioning}: {field}: " in message and words in message, message
    for secret in (DEVICE_KEY, str(config.get("symmetric_key")), "pw-secret-123"):
        assert secret not in message


def test_validate_missing_field_unknown_field_and_bad_json(tmp_path, provisioning):
    config = json.loads(provisioning.read_text())
    del config["id_scope"]
    config["dps_hots"] = "typo"
    provisioning.write_text(json.dumps(config))
    proc = run_cli("provision-file", "validate", str(provisioning))
    assert proc.returncode == 1
    assert f"{provisioning}: id_scope: is required" in proc.stderr
    assert "Traceback" not in proc.stderr
    del config["dps_hots"]
    config["id_scope"] = "0ne00AAAAAA"
    config["telemetry_colour"] = "blue"
    provisioning.write_text(json.dumps(config))
    proc = run_cli("provision-file", "validate", str(provisioning))
    assert proc.returncode == 0 and "telemetry_colour" in proc.stdout  # the device ignores it: a warning, no error
    broken = tmp_path / "broken.json"
    broken.write_text('{"dps_host": ')
    proc = run_cli("provision-file", "validate", str(broken), str(tmp_path / "absent.json"))
    assert proc.returncode == 1
    assert f"{broken}: not valid JSON" in proc.stderr and "absent.json: provisioning file does not exist" in proc.stderr


def test_show_hides_the_key(provisioning):
    proc = run_cli("provision-file", "show", str(provisioning))
    assert proc.returncode == 0 and "sensor-001" in proc.stdout
    assert DEVICE_KEY not in proc.stdout


def test_settings_build_a_schema_valid_config():
    settings = DeviceSettings(id_scope="0ne00AAAAAA", wifi_ssid="lab", wifi_password="pw", force_reprovision=True)
    config = settings.config("sensor-1", DEVICE_KEY, "certs/dps-root.pem")
    assert check_config(config, "x") == []
    assert config["wifi"] == {"ssid": "lab", "password": "pw"} and config["force_reprovision"] is True


def test_registration_id_patterns():
    assert registration_ids("sensor-{n:04d}", 3, start=9) == ["sensor-0009", "sensor-0010", "sensor-0011"]
    with pytest.raises(ProvisioningFileError, match="same registration id"):
        registration_ids("sensor", 2)
    with pytest.raises(ProvisioningFileError, match="cannot be filled in"):
        registration_ids("sensor-{m}", 2)


def test_fleet_writes_derived_keys_and_a_summary(tmp_path):
    out = tmp_path / "fleet"
    proc = run_cli(
        "fleet",
        "--out-dir",
        str(out),
        "--count",
        "30",
        "--id-scope",
        "0ne00AAAAAA",
        "--pattern",
        "sensor-{n:04d}",
        "--group-key",
        GROUP_KEY,
    )
    assert proc.returncode == 0, proc.stderr
    files = sorted(out.glob("sensor-*.json"))
    assert len(files) == 30
    for path in files:
        config = validate_provisioning_file(path)
        assert path.stem == config["registration_id"]
        assert config["symmetric_key"] == derive_device_key(GROUP_KEY, config["registration_id"])
    index = json.loads((out / "fleet.json").read_text())
    assert [d["registration_id"] for d in index["devices"]] == [p.stem for p in files]
    assert "sensor-0001" in proc.stdout and "sensor-0030" in proc.stdout and "fleet of 30" in proc.stdout
    everything = proc.stdout + proc.stderr + "".join(p.read_text() for p in out.rglob("*") if p.is_file())
    assert GROUP_KEY not in everything


def test_fleet_group_key_from_a_file_or_the_environment(tmp_path):
    key_file = tmp_path / "group.key"
    key_file.write_text(GROUP_KEY + "\n")
    proc = run_cli(
        "fleet",
        "--out-dir",
        str(tmp_path / "a"),
        "--count",
        "2",
        "--id-scope",
        "0ne00AAAAAA",
        "--group-key-file",
        str(key_file),
    )
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("fleet", "--out-dir", str(tmp_path / "b"), "--count", "2", "--id-scope", "0ne00AAAAAA")
    assert proc.returncode != 0 and "group enrollment key" in proc.stderr
    proc = run_cli(
        "fleet",
        "--out-dir",
        str(tmp_path / "c"),
        "--count",
        "2",
        "--id-scope",
        "0ne00AAAAAA",
        "--group-key",
        "!!notbase64",
    )
    assert proc.returncode != 0 and "group key is not valid base64" in proc.stderr
    assert "!!notbase64" not in proc.stderr


def test_validate_over_a_fleet_folder_skips_the_index(tmp_path):
    out = tmp_path / "fleet"
    common = ["--out-dir", str(out), "--id-scope", "0ne00AAAAAA", "--group-key", GROUP_KEY]
    assert run_cli("fleet", "--count", "3", *common).returncode == 0
    proc = run_cli("provision-file", "validate", *sorted(str(p) for p in out.glob("*.json")))
    assert proc.returncode == 0, proc.stderr
    assert "fleet.json: fleet index (written by `fleet`), skipped" in proc.stdout
    assert proc.stdout.count(": ok") == 3


def _tree(folder):
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_create_checks_everything_before_writing_and_replaces_nothing(tmp_path):
    device = tmp_path / "dev"
    common = ["provision-file", "create", "--id-scope", "0ne00AAAAAA", "--symmetric-key", DEVICE_KEY]
    # a field the device refuses: not even the CA file is written
    proc = run_cli(*common, "--out", str(device / "a.json"), "--registration-id", "d1", "--dps-port", "0")
    assert proc.returncode == 1 and "dps_port" in proc.stderr
    assert not device.exists()
    # another provisioning file's CA file, different from the default: kept unless --force
    (device / "certs").mkdir(parents=True)
    (device / "certs" / "dps-root.pem").write_text("# the CA another provisioning file uses\n")
    before = _tree(device)
    proc = run_cli(*common, "--out", str(device / "b.json"), "--registration-id", "d2")
    assert proc.returncode == 1 and "certs/dps-root.pem: already exists" in proc.stderr and "--force" in proc.stderr
    assert _tree(device) == before
    assert run_cli(*common, "--out", str(device / "b.json"), "--registration-id", "d2", "--force").returncode == 0


def test_fleet_into_a_folder_holding_one_of_its_files_writes_nothing(tmp_path):
    out = tmp_path / "fleet"
    out.mkdir()
    (out / "sensor-0003.json").write_text("someone else's\n")
    before = _tree(out)
    proc = run_cli(
        "fleet", "--out-dir", str(out), "--count", "5", "--id-scope", "0ne00AAAAAA", "--group-key", GROUP_KEY
    )
    assert proc.returncode == 1 and "sensor-0003.json: already exists" in proc.stderr
    assert _tree(out) == before


def test_wifi_password_needs_the_network(tmp_path):
    proc = run_cli(
        "provision-file",
        "create",
        "--out",
        str(tmp_path / "p.json"),
        "--id-scope",
        "0ne00AAAAAA",
        "--registration-id",
        "d1",
        "--symmetric-key",
        DEVICE_KEY,
        "--wifi-password",
        "secret-password-1",
    )
    assert proc.returncode == 1 and "--wifi-password needs --wifi-ssid" in proc.stderr
    assert "secret-password-1" not in proc.stdout + proc.stderr
    assert not (tmp_path / "p.json").exists()


def test_public_roots_with_a_non_positive_serial_give_no_warning(tmp_path):
    """Issue 21, item 9: a CA file with public roots from certifi whose serial number is not positive (the device's
    mbedTLS takes them) made `create` and `validate` print cryptography's CryptographyDeprecationWarning."""
    import warnings

    import certifi
    from cryptography import x509

    wanted = "CN=Go Daddy Root Certificate Authority - G2,"  # serial 0 in certifi's bundle (pinned)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pems = [
            pem
            for pem in pem_certificates(certifi.where())
            if x509.load_pem_x509_certificate(pem).subject.rfc4514_string().startswith(wanted)
        ]
    assert pems, f"{wanted} is no longer in certifi's bundle: pick another root with a serial number of 0"
    ca = tmp_path / "roots.pem"
    ca.write_bytes(public_dps_roots()[0][1] + b"\n" + pems[0] + b"\n")
    out = tmp_path / "dev" / "provisioning.json"
    created = run_cli(
        "provision-file", "create", "--out", str(out), "--id-scope", "0ne00AAAAAA", "--registration-id", "s1",
        "--symmetric-key", DEVICE_KEY, "--ca-file", str(ca),
    )  # fmt: skip
    validated = run_cli("provision-file", "validate", str(out))
    for proc in (created, validated):
        assert proc.returncode == 0, proc.stderr
        assert "Warning" not in proc.stderr and "serial number" not in proc.stderr, proc.stderr
