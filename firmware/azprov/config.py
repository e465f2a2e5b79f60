# The provisioning file: read, check every field, fill in defaults. An error names the field and nothing is
# written anywhere before the whole file is known to be good.
import json

from micropython import const

from azprov import errors
from azprov.encoding import b64decode, check_utf8
from azprov.errors import ProvisioningError

_MAX_FILE_BYTES = const(8192)
_MAX_DEPTH = const(32)  # JSON nesting a field may have; well inside every interpreter's stack (and an ESP32's)
_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_REG_ID_CHARS = _ALNUM + "-._:"
_HOST_CHARS = _ALNUM + ".-"
LOG_LEVELS = ("debug", "info", "warning", "error")

# name -> (type, default); _REQUIRED has no default.
_REQUIRED = object()
_FIELDS = {
    "dps_host": (str, _REQUIRED),
    "dps_port": (int, 8883),
    "id_scope": (str, _REQUIRED),
    "registration_id": (str, _REQUIRED),
    "attestation": (str, "symmetric_key"),
    "symmetric_key": (str, None),  # required with symmetric_key attestation, refused with x509
    "certificate_file": (str, None),  # x509: the device certificate, then any intermediates (PEM or DER)
    "private_key_file": (str, None),  # x509: its unencrypted key (PEM or DER; EC P-256 or RSA 2048)
    "certificate_expiry_warning_days": (int, 30),
    # DPS certificate issuance (preview, api-version 2025-07-01-preview): the device makes a P-384 key and a CSR,
    # and authenticates to the gateway with the certificate DPS has issued for it (azprov.csr).
    "certificate_issuance": (bool, False),
    "dps_ca_file": (str, _REQUIRED),
    "payload": (None, None),
    "gateway_host": (str, None),
    "gateway_port": (int, 8883),
    "storage_dir": (str, "azprov_state"),
    "log_level": (str, "info"),
    "sas_ttl_s": (int, 3600),
    "force_reprovision": (bool, False),
    "wifi": (dict, None),
    # Messages to send, 0: until power-off. Unset: 1 in a one-shot run (the Unix-port tests), 0 under the run loop,
    # so a board that is given no count never stops sending (app.telemetry_count).
    "telemetry_count": (int, None),
    "telemetry_interval_s": (int, 10),
    "registration_timeout_s": (int, 120),
    "max_gateway_failures": (int, 3),
    "mqtt_keepalive_s": (int, 120),
    # Run as a board (azprov.supervisor: never stops): null runs so on every port but Unix.
    "run_loop": (bool, None),
    "retry_base_ms": (int, 1000),
    "retry_max_s": (int, 300),
    "reset_after_failures": (int, 10),  # 0: never reset the board
    "retry_deep_sleep": (bool, False),
    "watchdog_timeout_s": (int, 60),  # 0: no watchdog
    "ntp_host": (str, None),
    "ntp_resync_s": (int, 86400),  # 0: only after a (re-)join
}


def defaults():
    """Every field's default (required fields: None): what the retry policy uses while the file cannot be read."""
    out = {}
    for name in _FIELDS:
        default = _FIELDS[name][1]
        out[name] = None if default is _REQUIRED else default
    return out


def _error(path, field, message):
    return ProvisioningError(errors.CONFIGURATION, "%s: %s %s" % (path, field, message))


def _too_deep(value):
    """True when `value` nests lists or objects _MAX_DEPTH levels deep or more, found without recursion."""
    todo = [(value, 1)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            if level >= _MAX_DEPTH:
                return True
            for inner in item:
                todo.append((inner, level + 1))
    return False


def _is_host_name(text):
    return 0 < len(text) <= 253 and all(c in _HOST_CHARS for c in text) and text[0] not in ".-" and text[-1] not in ".-"


def _directory_of(path):
    cut = path.rfind("/")
    return path[:cut] if cut > 0 else ("/" if cut == 0 else "")


def resolve(base, path):
    if path.startswith("/") or not base:
        return path
    return base.rstrip("/") + "/" + path


def load(path):
    from azprov.store import read_bounded

    try:
        text = read_bounded(path, _MAX_FILE_BYTES)
    except OSError:
        raise ProvisioningError(errors.CONFIGURATION, "%s: provisioning file cannot be read" % path)
    if text is None:
        raise ProvisioningError(
            errors.CONFIGURATION, "%s: provisioning file is larger than %d bytes" % (path, _MAX_FILE_BYTES)
        )
    try:
        check_utf8(text)
        text = text.decode()
    except UnicodeError:
        raise ProvisioningError(errors.CONFIGURATION, "%s: provisioning file is not UTF-8" % path)
    return parse(text, path)


def parse(text, path="provisioning file"):
    try:
        raw = json.loads(text)
    except (ValueError, UnicodeError):
        raise ProvisioningError(errors.CONFIGURATION, "%s: not valid JSON" % path)
    except RuntimeError:
        raise ProvisioningError(errors.CONFIGURATION, "%s: JSON nested too deeply" % path)
    if not isinstance(raw, dict):
        raise ProvisioningError(errors.CONFIGURATION, "%s: must be a JSON object" % path)
    for name in raw:
        if _too_deep(raw[name]):
            raise _error(path, name, "is nested too deeply")
    config = {}
    for name, (kind, default) in _FIELDS.items():
        value = raw.get(name)
        if value is None:
            if default is _REQUIRED:
                raise _error(path, name, "is required")
            config[name] = default
            continue
        # bool is a subclass of int: a port of `true` is a mistake, not 1.
        if kind is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
            raise _error(
                path,
                name,
                "must be " + {str: "a string", int: "a whole number", bool: "true or false", dict: "an object"}[kind],
            )
        config[name] = value
    _check_attestation(config, path)
    for name in ("dps_host", "id_scope", "registration_id", "dps_ca_file", "storage_dir"):
        if not config[name].strip():
            raise _error(path, name, "must not be empty")
    for name in ("dps_host", "gateway_host", "ntp_host"):
        if config[name] is not None and not _is_host_name(config[name]):
            raise _error(path, name, "must be a host name (letters, digits, dots and dashes)")
    scope = config["id_scope"]
    if len(scope) != 11 or scope[:3].lower() != "0ne" or any(c not in _ALNUM for c in scope):
        raise _error(path, "id_scope", "must be 0ne followed by 8 letters or digits, e.g. 0ne00AAAAAA")
    if ".." in config["storage_dir"].replace("\\", "/").split("/"):
        raise _error(path, "storage_dir", "must not contain '..'")
    for name in ("dps_port", "gateway_port"):
        if not 0 < config[name] < 65536:
            raise _error(path, name, "must be between 1 and 65535")
    reg_id = config["registration_id"]
    if len(reg_id) > 128 or any(c not in _REG_ID_CHARS for c in reg_id) or reg_id[-1] in "._:":
        raise _error(
            path, "registration_id", "must be up to 128 letters, digits or -._: and end in a letter, digit or -"
        )
    if config["attestation"] == "symmetric_key":
        try:
            short = len(b64decode(config["symmetric_key"])) < 16
        except ValueError:
            short = True
        if short:
            # The key itself is never echoed.
            raise _error(path, "symmetric_key", "must be a base64 key of at least 16 bytes")
    elif len(reg_id) > 64:
        raise _error(path, "registration_id", "must be at most 64 characters with x509 (it is the certificate's CN)")
    if config["log_level"] not in LOG_LEVELS:
        raise _error(path, "log_level", "must be one of " + ", ".join(LOG_LEVELS))
    if not 5 <= config["sas_ttl_s"] <= 86400 * 366:
        raise _error(path, "sas_ttl_s", "must be between 5 and 31622400 seconds")
    if not 2 <= config["mqtt_keepalive_s"] <= 1740:  # IoT Hub's ceiling is 29 minutes
        raise _error(path, "mqtt_keepalive_s", "must be between 2 and 1740 seconds")
    for name in (
        "telemetry_count",
        "telemetry_interval_s",
        "max_gateway_failures",
        "reset_after_failures",
        "ntp_resync_s",
    ):
        if config[name] is not None and config[name] < 0:
            raise _error(path, name, "must not be negative")
    if config["registration_timeout_s"] < 5:  # less cannot fit one TLS handshake and an answer
        raise _error(path, "registration_timeout_s", "must be at least 5 seconds")
    if not 1 <= config["retry_base_ms"] <= 3600000:
        raise _error(path, "retry_base_ms", "must be between 1 and 3600000 milliseconds")
    if not 1 <= config["retry_max_s"] <= 86400:
        raise _error(path, "retry_max_s", "must be between 1 and 86400 seconds")
    # The longest wait that cannot feed the watchdog is one blocking network call (15 s at most).
    if config["watchdog_timeout_s"] and not 20 <= config["watchdog_timeout_s"] <= 3600:
        raise _error(path, "watchdog_timeout_s", "must be 0 (off) or between 20 and 3600 seconds")
    wifi = config["wifi"]
    if wifi is not None:
        for name in wifi:
            if name not in ("ssid", "password"):
                raise _error(path, "wifi." + name, "is not a Wi-Fi setting (ssid, password)")
        ssid = wifi.get("ssid")
        if not isinstance(ssid, str) or not 0 < len(ssid) <= 32:
            raise _error(path, "wifi.ssid", "must be a string of 1 to 32 characters")
        if not isinstance(wifi.get("password", ""), str) or len(wifi.get("password", "")) > 64:
            raise _error(path, "wifi.password", "must be a string of at most 64 characters")
    base = _directory_of(path)
    config["dps_ca_file"] = resolve(base, config["dps_ca_file"])
    config["storage_dir"] = resolve(base, config["storage_dir"])
    for name in ("certificate_file", "private_key_file"):
        if config[name] is not None:
            config[name] = resolve(base, config[name])
    return config


def _check_attestation(config, path):
    # symmetric_key: the device signs SAS tokens with its key. x509: it shows a certificate in the TLS handshake
    # (DPS and gateway alike) and has no key to sign tokens with.
    kind = config["attestation"]
    if kind == "symmetric_key":
        if config["symmetric_key"] is None:
            raise _error(path, "symmetric_key", "is required")
        for name in ("certificate_file", "private_key_file"):
            if config[name] is not None:
                raise _error(path, name, 'is only used with "attestation": "x509"')
    elif kind == "x509":
        if config["symmetric_key"] is not None:
            raise _error(path, "symmetric_key", 'must not be set with "attestation": "x509"')
        for name in ("certificate_file", "private_key_file"):
            if config[name] is None:
                raise _error(path, name, 'is required with "attestation": "x509"')
            if not config[name].strip():
                raise _error(path, name, "must not be empty")
        if not 0 <= config["certificate_expiry_warning_days"] <= 3650:
            raise _error(path, "certificate_expiry_warning_days", "must be between 0 and 3650")
    else:
        raise _error(path, "attestation", 'must be "symmetric_key" or "x509"')
