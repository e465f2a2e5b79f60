# The provisioning file: good files load with defaults; each bad field gives an error that names it.
import json

from azprov import config, errors
from azprov.errors import ProvisioningError

GOOD = {
    "dps_host": "global.azure-devices-provisioning.net",
    "id_scope": "0ne00000001",
    "registration_id": "sensor-001",
    "symmetric_key": "NMgJDvdKTxjLi+xBxxkDDEwDJxEvOE5u8BiT0mVgPeg=",
    "dps_ca_file": "certs/dps-root.pem",
}


def _with(**changes):
    doc = dict(GOOD)
    for key, value in changes.items():
        if value is ...:
            del doc[key]
        else:
            doc[key] = value
    return json.dumps(doc)


def _error(text):
    try:
        config.parse(text, "/flash/provisioning.json")
    except ProvisioningError as exc:
        assert exc.kind == errors.CONFIGURATION
        return exc.message
    raise AssertionError("accepted: " + text)


def test_good_file_with_defaults_and_relative_paths():
    cfg = config.parse(_with(), "/flash/provisioning.json")
    assert cfg["dps_port"] == 8883 and cfg["gateway_host"] is None and cfg["log_level"] == "info"
    assert cfg["dps_ca_file"] == "/flash/certs/dps-root.pem"
    assert cfg["storage_dir"] == "/flash/azprov_state"
    assert config.parse(_with(), "provisioning.json")["dps_ca_file"] == "certs/dps-root.pem"


def test_each_bad_field_is_named():
    cases = [
        (_with(dps_host=...), "dps_host"),
        (_with(id_scope=""), "id_scope"),
        (_with(dps_port="8883"), "dps_port"),
        (_with(dps_port=70000), "dps_port"),
        (_with(dps_port=True), "dps_port"),
        (_with(registration_id="bad id!"), "registration_id"),
        (_with(registration_id="x" * 129), "registration_id"),
        (_with(symmetric_key="not base64!"), "symmetric_key"),
        (_with(symmetric_key="c2hvcnQ="), "symmetric_key"),
        (_with(symmetric_key=123), "symmetric_key"),
        (_with(log_level="loud"), "log_level"),
        (_with(gateway_host=""), "gateway_host"),
        (_with(gateway_port=0), "gateway_port"),
        (_with(sas_ttl_s=1), "sas_ttl_s"),
        (_with(force_reprovision="yes"), "force_reprovision"),
        (_with(wifi="ssid"), "wifi"),
        (_with(dps_ca_file=...), "dps_ca_file"),
    ]
    for text, field in cases:
        message = _error(text)
        assert field in message, (field, message)
        assert "/flash/provisioning.json" in message


def test_key_never_echoed_in_errors():
    message = _error(_with(symmetric_key="c2hvcnQ="))
    assert "c2hvcnQ" not in message


def test_not_json_or_not_object():
    assert "JSON" in _error("{oops")
    assert "object" in _error("[1]")


def test_deeply_nested_payload_refused():
    text = _with().replace('"dps_ca_file"', '"payload": ' + "[" * 1500 + "]" * 1500 + ', "dps_ca_file"')
    message = _error(text)
    # MicroPython parses the file and refuses the payload; CPython's parser already refuses the nesting.
    assert "payload" in message or "nested too deeply" in message


def test_overlong_utf8_refused_by_load():
    with open("provisioning.json", "wb") as f:
        f.write(_with(dps_ca_file="ca").encode().replace(b'"ca"', b'"ca\xc0\xaf.pem"'))
    try:
        config.load("provisioning.json")
    except ProvisioningError as exc:
        assert exc.kind == errors.CONFIGURATION and "UTF-8" in exc.message
    else:
        raise AssertionError("accepted an overlong UTF-8 form")


def test_x509_attestation_fields():
    x509 = {"attestation": "x509", "symmetric_key": ..., "certificate_file": "dev.pem", "private_key_file": "dev.key"}
    cfg = config.parse(_with(**x509), "/flash/provisioning.json")
    assert cfg["attestation"] == "x509" and cfg["symmetric_key"] is None
    assert cfg["certificate_file"] == "/flash/dev.pem" and cfg["private_key_file"] == "/flash/dev.key"
    assert cfg["certificate_expiry_warning_days"] == 30
    assert config.parse(_with(), "p.json")["attestation"] == "symmetric_key"
    cases = [
        (_with(**dict(x509, symmetric_key=GOOD["symmetric_key"])), "symmetric_key"),
        (_with(attestation="x509", symmetric_key=..., private_key_file="dev.key"), "certificate_file"),
        (_with(**dict(x509, private_key_file="")), "private_key_file"),
        (_with(**dict(x509, registration_id="x" * 65)), "registration_id"),
        (_with(**dict(x509, certificate_expiry_warning_days=-1)), "certificate_expiry_warning_days"),
        (_with(attestation="tpm"), "attestation"),
        (_with(certificate_file="dev.pem"), "certificate_file"),
        (_with(symmetric_key=...), "symmetric_key"),
    ]
    for text, field in cases:
        assert field in _error(text), field


def test_rules_the_host_validator_shares():
    # Issue 14: each of these got a different verdict from `provision-file validate` and the device.
    cases = [
        (_with(dps_port=8883.0), "dps_port"),
        (_with(gateway_port=40911.0), "gateway_port"),
        (_with(registration_timeout_s=0), "registration_timeout_s"),
        (_with(registration_timeout_s=4), "registration_timeout_s"),
        (_with(dps_host="dps host/x"), "dps_host"),
        (_with(gateway_host="-gw"), "gateway_host"),
        (_with(id_scope="scope"), "id_scope"),
        (_with(id_scope="0ne0000000/"), "id_scope"),
        (_with(storage_dir="../../etc"), "storage_dir"),
        (_with(wifi={}), "wifi.ssid"),
        (_with(wifi={"ssid": "x" * 33}), "wifi.ssid"),
        (_with(wifi={"ssid": "net", "password": 5}), "wifi.password"),
        (_with(wifi={"ssid": "net", "pass": "x"}), "wifi.pass"),
        (_with(extra=[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]), "extra"),
    ]
    for text, field in cases:
        message = _error(text)
        assert ": " + field + " " in message, (field, message)
    # Upper-case ID scopes are accepted, as by DPS and the emulator.
    assert config.parse(_with(id_scope="0NE00AAAAAA"), "p.json")["id_scope"] == "0NE00AAAAAA"
    assert config.parse(_with(registration_timeout_s=5, wifi={"ssid": "n"}), "p.json")["wifi"] == {"ssid": "n"}


def test_run_loop_fields_have_defaults_and_bounds():
    cfg = config.parse(_with(), "/flash/provisioning.json")
    assert cfg["run_loop"] is None and cfg["retry_base_ms"] == 1000 and cfg["retry_max_s"] == 300
    assert cfg["reset_after_failures"] == 10 and cfg["retry_deep_sleep"] is False
    assert cfg["watchdog_timeout_s"] == 60 and cfg["ntp_host"] is None and cfg["ntp_resync_s"] == 86400
    assert config.parse(_with(watchdog_timeout_s=0, run_loop=True))["watchdog_timeout_s"] == 0
    for text, field in [
        (_with(run_loop="yes"), "run_loop"),
        (_with(retry_base_ms=0), "retry_base_ms"),
        (_with(retry_max_s=0), "retry_max_s"),
        (_with(retry_max_s=86401), "retry_max_s"),
        (_with(reset_after_failures=-1), "reset_after_failures"),
        (_with(retry_deep_sleep=1), "retry_deep_sleep"),
        (_with(watchdog_timeout_s=10), "watchdog_timeout_s"),
        (_with(watchdog_timeout_s=3601), "watchdog_timeout_s"),
        (_with(ntp_host=""), "ntp_host"),
        (_with(ntp_host="ntp server"), "ntp_host"),
        (_with(ntp_resync_s=-5), "ntp_resync_s"),
    ]:
        assert field in _error(text), field


def test_unset_telemetry_count_sends_until_power_off_under_the_run_loop():
    # A field device given no count must never stop sending; a one-shot run (the Unix-port tests) sends one.
    from azprov.supervisor import telemetry_count

    cfg = config.parse(_with(), "provisioning.json")
    assert cfg["telemetry_count"] is None
    assert telemetry_count(cfg) == 1
    assert telemetry_count(cfg, looping=True) == 0
    for given in (0, 5):
        cfg = config.parse(_with(telemetry_count=given), "provisioning.json")
        assert telemetry_count(cfg) == given and telemetry_count(cfg, looping=True) == given
