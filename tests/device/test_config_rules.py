# The provisioning file's rules, each at its edge, with the exact message a user reads: "<file>: <field> <rule>".
# The messages are what `host_tools` and the device log print, so a user fixes the named field from them alone.
import json

from azprov import config, errors
from azprov.errors import ProvisioningError

PATH = "/flash/provisioning.json"
GOOD = {
    "dps_host": "global.azure-devices-provisioning.net",
    "id_scope": "0ne00000001",
    "registration_id": "sensor-001",
    "symmetric_key": "NMgJDvdKTxjLi+xBxxkDDEwDJxEvOE5u8BiT0mVgPeg=",
    "dps_ca_file": "certs/dps-root.pem",
}
X509 = {"attestation": "x509", "symmetric_key": None, "certificate_file": "dev.pem", "private_key_file": "dev.key"}


def _doc(changes):
    doc = dict(GOOD)
    for key, value in changes.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return json.dumps(doc)


def _accepts(changes, path=PATH):
    return config.parse(_doc(changes), path)


def _message(changes, path=PATH):
    text = changes if isinstance(changes, str) else _doc(changes)
    try:
        config.parse(text, path)
    except ProvisioningError as exc:
        assert exc.kind == errors.CONFIGURATION, exc.kind
        return exc.message
    raise AssertionError("accepted: %r" % (changes,))


def _x509(**changes):
    merged = dict(X509)
    merged.update(changes)
    return merged


def test_each_refusal_reads_file_field_and_rule():
    host = "must be a host name (letters, digits, dots and dashes)"
    reg = "must be up to 128 letters, digits or -._: and end in a letter, digit or -"
    cases = [
        ({"dps_host": None}, "dps_host is required"),
        ({"dps_port": "8883"}, "dps_port must be a whole number"),
        ({"dps_port": True}, "dps_port must be a whole number"),
        ({"dps_host": 5}, "dps_host must be a string"),
        ({"force_reprovision": 1}, "force_reprovision must be true or false"),
        ({"wifi": "ssid"}, "wifi must be an object"),
        ({"symmetric_key": None}, "symmetric_key is required"),
        ({"certificate_file": "dev.pem"}, 'certificate_file is only used with "attestation": "x509"'),
        ({"private_key_file": "dev.key"}, 'private_key_file is only used with "attestation": "x509"'),
        (_x509(symmetric_key=GOOD["symmetric_key"]), 'symmetric_key must not be set with "attestation": "x509"'),
        (_x509(certificate_file=None), 'certificate_file is required with "attestation": "x509"'),
        (_x509(private_key_file=None), 'private_key_file is required with "attestation": "x509"'),
        (_x509(private_key_file=" "), "private_key_file must not be empty"),
        (_x509(certificate_expiry_warning_days=3651), "certificate_expiry_warning_days must be between 0 and 3650"),
        (_x509(certificate_expiry_warning_days=-1), "certificate_expiry_warning_days must be between 0 and 3650"),
        (
            _x509(registration_id="x" * 65),
            "registration_id must be at most 64 characters with x509 (it is the certificate's CN)",
        ),
        ({"attestation": "tpm"}, 'attestation must be "symmetric_key" or "x509"'),
        ({"dps_ca_file": "  "}, "dps_ca_file must not be empty"),
        ({"dps_host": "-dps.example"}, "dps_host " + host),
        ({"gateway_host": "gw.example."}, "gateway_host " + host),
        ({"dps_host": "d" * 254}, "dps_host " + host),
        ({"ntp_host": "pool ntp.org"}, "ntp_host " + host),
        ({"id_scope": "0ne0000001"}, "id_scope must be 0ne followed by 8 letters or digits, e.g. 0ne00AAAAAA"),
        ({"storage_dir": "state\\..\\up"}, "storage_dir must not contain '..'"),
        ({"dps_port": 65536}, "dps_port must be between 1 and 65535"),
        ({"gateway_port": 0}, "gateway_port must be between 1 and 65535"),
        ({"registration_id": "x" * 129}, "registration_id " + reg),
        ({"registration_id": "sensor:"}, "registration_id " + reg),
        ({"symmetric_key": "AAAAAAAAAAAAAAAAAAAA"}, "symmetric_key must be a base64 key of at least 16 bytes"),
        ({"symmetric_key": "not base64!"}, "symmetric_key must be a base64 key of at least 16 bytes"),
        ({"log_level": "loud"}, "log_level must be one of debug, info, warning, error"),
        ({"sas_ttl_s": 4}, "sas_ttl_s must be between 5 and 31622400 seconds"),
        ({"sas_ttl_s": 31622401}, "sas_ttl_s must be between 5 and 31622400 seconds"),
        ({"mqtt_keepalive_s": 1}, "mqtt_keepalive_s must be between 2 and 1740 seconds"),
        ({"mqtt_keepalive_s": 1741}, "mqtt_keepalive_s must be between 2 and 1740 seconds"),
        ({"telemetry_count": -1}, "telemetry_count must not be negative"),
        ({"telemetry_interval_s": -1}, "telemetry_interval_s must not be negative"),
        ({"max_gateway_failures": -1}, "max_gateway_failures must not be negative"),
        ({"reset_after_failures": -1}, "reset_after_failures must not be negative"),
        ({"ntp_resync_s": -1}, "ntp_resync_s must not be negative"),
        ({"registration_timeout_s": 4}, "registration_timeout_s must be at least 5 seconds"),
        ({"retry_base_ms": 0}, "retry_base_ms must be between 1 and 3600000 milliseconds"),
        ({"retry_base_ms": 3600001}, "retry_base_ms must be between 1 and 3600000 milliseconds"),
        ({"retry_max_s": 0}, "retry_max_s must be between 1 and 86400 seconds"),
        ({"retry_max_s": 86401}, "retry_max_s must be between 1 and 86400 seconds"),
        ({"watchdog_timeout_s": 19}, "watchdog_timeout_s must be 0 (off) or between 20 and 3600 seconds"),
        ({"watchdog_timeout_s": 3601}, "watchdog_timeout_s must be 0 (off) or between 20 and 3600 seconds"),
        ({"wifi": {"ssid": "home", "psk": "x"}}, "wifi.psk is not a Wi-Fi setting (ssid, password)"),
        ({"wifi": {"ssid": ""}}, "wifi.ssid must be a string of 1 to 32 characters"),
        ({"wifi": {"ssid": "s" * 33}}, "wifi.ssid must be a string of 1 to 32 characters"),
        ({"wifi": {"password": "x"}}, "wifi.ssid must be a string of 1 to 32 characters"),
        ({"wifi": {"ssid": "home", "password": "p" * 65}}, "wifi.password must be a string of at most 64 characters"),
        ({"wifi": {"ssid": "home", "password": 1234}}, "wifi.password must be a string of at most 64 characters"),
    ]
    for changes, expected in cases:
        assert _message(changes) == PATH + ": " + expected, (changes, _message(changes))


def test_whole_file_refusals_name_the_file():
    assert _message("{oops") == PATH + ": not valid JSON"
    assert _message("[1]") == PATH + ": must be a JSON object"
    assert _message('"text"', "prov.json") == "prov.json: must be a JSON object"
    try:
        config.parse("{oops")
    except ProvisioningError as exc:
        assert exc.message == "provisioning file: not valid JSON"
    else:
        raise AssertionError("accepted")
    # MicroPython parses this nesting and refuses the field; CPython's parser refuses the file.
    deep = _doc({}).replace('"dps_ca_file"', '"payload": ' + "[" * 1500 + "]" * 1500 + ', "dps_ca_file"')
    assert _message(deep) in (PATH + ": JSON nested too deeply", PATH + ": payload is nested too deeply")


def test_every_limit_itself_is_accepted():
    # The largest and smallest values each rule allows: the edges a user reads in the messages above.
    edges = [
        {"dps_host": "a"},
        {"dps_host": "d" * 253},
        {"gateway_host": "gw-1.example", "ntp_host": "pool.ntp.org"},
        {"dps_host": "X.example.X"},
        {"dps_port": 1, "gateway_port": 65535},
        {"registration_id": "r" * 128},
        {"registration_id": "a.b-c_d:eX"},
        {"registration_id": "a-"},
        {"symmetric_key": "AAAAAAAAAAAAAAAAAAAAAA=="},  # exactly 16 bytes
        {"sas_ttl_s": 5, "mqtt_keepalive_s": 2, "registration_timeout_s": 5},
        {"sas_ttl_s": 31622400, "mqtt_keepalive_s": 1740},
        {"retry_base_ms": 1, "retry_max_s": 1, "watchdog_timeout_s": 20},
        {"retry_base_ms": 3600000, "retry_max_s": 86400, "watchdog_timeout_s": 3600},
        {"watchdog_timeout_s": 0, "telemetry_count": 0, "telemetry_interval_s": 0, "ntp_resync_s": 0},
        {"max_gateway_failures": 0, "reset_after_failures": 0},
        {"id_scope": "0NE00aB3xYz"},
        {"storage_dir": "state/..data"},
        {"wifi": {"ssid": "s" * 32, "password": "p" * 64}},
        {"wifi": {"ssid": "s"}},
        {"log_level": "debug"},
        {"log_level": "error"},
        _x509(registration_id="x" * 64, certificate_expiry_warning_days=0),
        _x509(certificate_expiry_warning_days=3650),
    ]
    for changes in edges:
        cfg = _accepts(changes)
        for name, value in changes.items():
            if value is not None and name not in ("dps_ca_file", "storage_dir", "certificate_file", "private_key_file"):
                assert cfg[name] == value, (name, cfg[name])


def test_payload_nesting_limit_counts_lists_and_objects():
    # A field may nest 31 levels; 32 is refused whether the levels are lists or objects.
    for opener, closer in (("[", "]"), ('{"a": ', "}")):
        for depth, accepted in ((31, True), (32, False)):
            payload = opener * depth + "1" + closer * depth
            text = _doc({}).replace('"dps_ca_file"', '"payload": ' + payload + ', "dps_ca_file"')
            if accepted:
                assert config.parse(text, PATH)["payload"] is not None
            else:
                assert _message(text) == PATH + ": payload is nested too deeply"


def test_relative_files_resolve_beside_the_provisioning_file():
    files = ("dps_ca_file", "storage_dir", "certificate_file", "private_key_file")
    cases = [
        ("/provisioning.json", "/certs/dps-root.pem", "/azprov_state"),
        ("/flash/provisioning.json", "/flash/certs/dps-root.pem", "/flash/azprov_state"),
        ("a/provisioning.json", "a/certs/dps-root.pem", "a/azprov_state"),
        ("/sd/BOX/provisioning.json", "/sd/BOX/certs/dps-root.pem", "/sd/BOX/azprov_state"),
        ("provisioning.json", "certs/dps-root.pem", "azprov_state"),
    ]
    for path, ca, state in cases:
        cfg = _accepts({}, path)
        assert (cfg["dps_ca_file"], cfg["storage_dir"]) == (ca, state), (path, cfg["dps_ca_file"], cfg["storage_dir"])
    cfg = _accepts(_x509(dps_ca_file="/etc/ca.pem", storage_dir="/data"), "/flash/provisioning.json")
    assert [cfg[name] for name in files] == ["/etc/ca.pem", "/data", "/flash/dev.pem", "/flash/dev.key"]


def test_load_refusals_name_the_file():
    for name, content, expected in (
        ("big.json", b" " * 8193, "big.json: provisioning file is larger than 8192 bytes"),
        ("bad.json", b'{"dps_host": "\xff"}', "bad.json: provisioning file is not UTF-8"),
    ):
        with open(name, "wb") as f:
            f.write(content)
        try:
            config.load(name)
        except ProvisioningError as exc:
            assert exc.kind == errors.CONFIGURATION and exc.message == expected, exc.message
        else:
            raise AssertionError("accepted " + name)
    try:
        config.load("missing.json")
    except ProvisioningError as exc:
        assert exc.kind == errors.CONFIGURATION and exc.message == "missing.json: provisioning file cannot be read"
    else:
        raise AssertionError("loaded a missing file")
    with open("broken.json", "w") as f:
        f.write("{oops")
    try:
        config.load("broken.json")
    except ProvisioningError as exc:
        assert exc.message == "broken.json: not valid JSON"
    else:
        raise AssertionError("loaded broken JSON")
    with open("ok.json", "w") as f:
        f.write(_doc({}))
    assert config.load("ok.json")["dps_ca_file"] == "certs/dps-root.pem"
