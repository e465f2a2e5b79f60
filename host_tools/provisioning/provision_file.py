"""Write and validate provisioning files (`provision-file create|validate|show`); `fleet.py` makes many at once.

A device gets its own symmetric key. For a group enrollment that key is derived here, on the host, from the group
key and the registration id; the group key itself never reaches a file or the console. Keys are never printed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import click

SCHEMA_PATH = Path(__file__).resolve().parent / "provisioning.schema.json"
GLOBAL_DPS_HOST = "global.azure-devices-provisioning.net"
DEFAULT_CA_NAME = "certs/dps-root.pem"
SECRET_FIELDS = ("symmetric_key", "wifi.password")
GROUP_KEY_FILE_LIMIT = 4096  # a DPS group key is 88 characters

# Roots Azure DPS server certificates chain to, by subject common name. The Baltimore root expired in May 2025 and
# has left certifi's bundle; it is taken when present, for old certifi versions and legacy endpoints.
DPS_PUBLIC_ROOTS: tuple[tuple[str, bool], ...] = (
    ("DigiCert Global Root G2", True),
    ("DigiCert Global Root G3", True),
    ("Microsoft RSA Root Certificate Authority 2017", True),
    ("Microsoft ECC Root Certificate Authority 2017", True),
    ("Baltimore CyberTrust Root", False),
)

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.S)


class ProvisioningFileError(ValueError):
    """A provisioning file (or an input to one) is wrong; the message names the file and the field."""


# --- keys ------------------------------------------------------------------------------------------------------------


def decode_key(key_b64: str, what: str) -> bytes:
    try:
        key = base64.b64decode(key_b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ProvisioningFileError(f"{what} is not valid base64") from None  # no value: it is a secret
    if len(key) < 16:
        raise ProvisioningFileError(f"{what} must decode to at least 16 bytes")
    return key


def derive_device_key(group_key_b64: str, registration_id: str) -> str:
    """The per-device key of a DPS group enrollment: base64(HMAC-SHA256(b64decode(group key), utf8(registration id)))."""
    group_key = decode_key(group_key_b64, "group key")
    digest = hmac.new(group_key, registration_id.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


# --- CA certificates -------------------------------------------------------------------------------------------------


def _common_name(pem: bytes) -> str | None:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    with warnings.catch_warnings():  # some old roots in the bundle have non-RFC serials; only the name matters here
        warnings.simplefilter("ignore")
        cert = x509.load_pem_x509_certificate(pem)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return names[0].value if names else None


def public_dps_roots(bundle: Path | None = None) -> list[tuple[str, bytes]]:
    """(subject CN, PEM) of each DPS root found in certifi's bundle (or `bundle`), in DPS_PUBLIC_ROOTS order."""
    if bundle is None:
        import certifi

        bundle = Path(certifi.where())
    by_name: dict[str, bytes] = {}
    for match in _PEM_CERT.finditer(Path(bundle).read_bytes()):
        pem = match.group(0).replace(b"\r\n", b"\n")
        name = _common_name(pem)
        if name:
            by_name.setdefault(name, pem)
    roots = []
    for name, required in DPS_PUBLIC_ROOTS:
        if name in by_name:
            roots.append((name, by_name[name]))
        elif required:
            raise ProvisioningFileError(f"{bundle}: no '{name}' certificate in the CA bundle (update certifi)")
    return roots


def public_dps_roots_pem(bundle: Path | None = None) -> str:
    return "".join(f"# {name}\n{pem.decode('ascii')}\n" for name, pem in public_dps_roots(bundle))


def pem_certificates(path: Path) -> list[bytes]:
    return [m.group(0) for m in _PEM_CERT.finditer(Path(path).read_bytes())]


# --- validation ------------------------------------------------------------------------------------------------------


def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def _describe(error) -> str:
    """A jsonschema error as words that never repeat the offending value (it may be a key)."""
    kind, rule = error.validator, error.validator_value
    if kind == "type":
        types = rule if isinstance(rule, list) else [rule]
        words = {
            "string": "a string",
            "integer": "a whole number",
            "boolean": "true or false",
            "object": "an object",
            "null": "null",
            "number": "a number",
            "array": "a list",
        }
        return "must be " + " or ".join(words.get(t, t) for t in types)
    if kind == "pattern":
        return error.schema.get("x-hint", f"must match {rule}")
    if kind == "anyOf" and "x-hint" in error.schema:
        return error.schema["x-hint"]
    if kind == "enum":
        return "must be one of " + ", ".join(json.dumps(v) for v in rule)
    if kind in ("minimum", "maximum"):
        low, high = error.schema.get("minimum"), error.schema.get("maximum")
        if low is not None and high is not None:
            return f"must be between {low} and {high}"
        return f"must be at least {low}" if kind == "minimum" else f"must be at most {high}"
    if kind == "minLength":
        return "must not be empty" if rule == 1 else f"must be at least {rule} characters"
    if kind == "maxLength":
        return f"must be at most {rule} characters"
    if kind == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return f"has unknown fields: {', '.join(extra)}"
    return f"fails the schema rule '{kind}'"


def schema_problems(config, where: str) -> list[str]:
    """Every schema problem with a provisioning dict, each as 'WHERE: FIELD: what is wrong' (words only)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_schema())
    problems = []
    for error in sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path]):
        path = ".".join(str(p) for p in error.absolute_path)
        if error.validator == "required":
            # one line per missing field, named in full (e.g. wifi.ssid)
            for name in error.validator_value:
                if isinstance(error.instance, dict) and name not in error.instance:
                    line = f"{where}: {path + '.' if path else ''}{name}: is required"
                    if line not in problems:
                        problems.append(line)
            continue
        problems.append(f"{where}: {path or '(file)'}: {_describe(error)}")
    return problems


def _verdict(config, text: str, where: str) -> tuple[list[str], dict | None]:
    """The device's verdict on a provisioning file (device_rules: the firmware's own rules), explained.

    Returns (problems, the device's config). Problems are empty exactly when the device accepts the file; when it
    refuses, they are the schema's words for every field it flags, plus the device's own message if the schema
    did not name that field."""
    from host_tools.provisioning.device_rules import RuleError, judge_text

    try:
        return [], judge_text(text, where)
    except RuleError as exc:
        device_problem = str(exc)
    problems = schema_problems(config, where)
    field = device_problem[len(where) + 2 :].split(" ")[0] if device_problem.startswith(where + ": ") else ""
    if not isinstance(config, dict) or field.split(".")[0] not in config:
        field = ""  # the message is about the whole file (its size, its JSON), not one field
    if not field or not any(p.startswith(f"{where}: {field}:") for p in problems):
        problems.append(
            device_problem.replace(f"{where}: {field} ", f"{where}: {field}: ", 1) if field else device_problem
        )
    return problems, None


def check_config(config: dict, where: str) -> list[str]:
    """Every problem with a provisioning dict as it would be written (`file_text`); empty when the device takes it."""
    return _verdict(config, file_text(config), where)[0]


def file_text(config: dict) -> str:
    return json.dumps(config, indent=2) + "\n"


def unknown_fields(config: dict) -> list[str]:
    known = set(load_schema()["properties"])
    return sorted(set(config) - known) if isinstance(config, dict) else []


def resolve_ca_file(provisioning_path: Path, config: dict) -> Path:
    ca = Path(config["dps_ca_file"])
    return ca if ca.is_absolute() else Path(provisioning_path).parent / ca


def _refuse_constant(name):
    raise ValueError(f"{name} is not JSON")


def is_fleet_index(document) -> bool:
    """The `fleet.json` index that `fleet` writes beside the provisioning files."""
    return (
        isinstance(document, dict) and isinstance(document.get("devices"), list) and "registration_id" not in document
    )


def read_provisioning_document(path: Path):
    """(bytes, decoded JSON) of a provisioning file, read with the device's size limit; errors name the file."""
    from host_tools.provisioning.device_rules import RuleError, max_file_bytes, read_bounded

    try:
        data = read_bounded(path, max_file_bytes(), "provisioning file")
    except RuleError as exc:
        raise ProvisioningFileError(str(exc)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ProvisioningFileError(f"{path}: not UTF-8 text") from None
    try:
        # MicroPython's reading of JSON: control characters in strings pass, NaN and Infinity do not.
        document = json.loads(text, strict=False, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise ProvisioningFileError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    except RecursionError:
        raise ProvisioningFileError(f"{path}: JSON nested too deeply") from None
    except ValueError as exc:
        raise ProvisioningFileError(f"{path}: not valid JSON ({exc})") from None
    return data, document


def validate_provisioning_file(path: Path, check_ca: bool = True, group_ca: Path | None = None) -> dict:
    """Load and check a provisioning file as the device would; raise ProvisioningFileError naming file and field.
    With X.509 also its certificate and key (match, CN, dates; with `group_ca` the chain to that CA)."""
    from host_tools.provisioning.device_rules import RuleError, judge_ca_file, judge_identity

    path = Path(path)
    data, config = read_provisioning_document(path)
    if not isinstance(config, dict):
        raise ProvisioningFileError(f"{path}: must be a JSON object")
    if is_fleet_index(config):
        raise ProvisioningFileError(f"{path}: a fleet index (written by `fleet`), not a provisioning file")
    problems, device_config = _verdict(config, data.decode("utf-8"), str(path))
    if not problems and check_ca:
        try:
            judge_ca_file(Path(device_config["dps_ca_file"]), "dps_ca_file", path)
        except RuleError as exc:
            problems.append(str(exc))
    if not problems and device_config["attestation"] == "x509":
        try:
            judge_identity(device_config, path, group_ca)
        except RuleError as exc:
            problems.append(str(exc))
    if problems:
        raise ProvisioningFileError("\n".join(problems))
    return config


def redacted(config: dict) -> dict:
    """A copy safe to show: secrets replaced by a note of their presence."""
    shown = json.loads(json.dumps(config))
    if "symmetric_key" in shown:
        shown["symmetric_key"] = "<hidden>"
    if isinstance(shown.get("wifi"), dict) and "password" in shown["wifi"]:
        shown["wifi"]["password"] = "<hidden>"
    return shown


# --- writing ---------------------------------------------------------------------------------------------------------


@dataclass
class DeviceSettings:
    """Everything of a provisioning file except the registration id and key."""

    id_scope: str
    dps_host: str = GLOBAL_DPS_HOST
    dps_port: int = 8883
    payload: object = None
    gateway_host: str | None = None
    gateway_port: int = 8883
    storage_dir: str = "azprov_state"
    log_level: str = "info"
    sas_ttl_s: int = 3600
    force_reprovision: bool = False
    wifi_ssid: str | None = None
    wifi_password: str | None = None

    def config(self, registration_id: str, symmetric_key: str, dps_ca_file: str) -> dict:
        config = {
            "dps_host": self.dps_host,
            "dps_port": self.dps_port,
            "id_scope": self.id_scope,
            "registration_id": registration_id,
            "symmetric_key": symmetric_key,
            "dps_ca_file": dps_ca_file,
            "payload": self.payload,
            "gateway_host": self.gateway_host,
            "gateway_port": self.gateway_port,
            "storage_dir": self.storage_dir,
            "log_level": self.log_level,
            "sas_ttl_s": self.sas_ttl_s,
        }
        if self.force_reprovision:
            config["force_reprovision"] = True
        if self.wifi_ssid:
            config["wifi"] = {"ssid": self.wifi_ssid, "password": self.wifi_password or ""}
        return config


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write through a temporary file and a rename: the path holds the old content or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_private(path: Path, text: str) -> None:
    """Readable by the owner only: the file holds a device key."""
    _write_atomic(path, text.encode("utf-8"), 0o600)


@dataclass
class CaPlan:
    """Where a provisioning file's CA file will be: its name relative to the provisioning file, and what to write
    (nothing when the file is already there with that content)."""

    name: str
    target: Path
    content: bytes | None


def plan_ca_file(out_dir: Path, ca_file: Path | None, overwrite: bool = False) -> CaPlan:
    """Decide (without writing) where the DPS CA file goes, and check it with the device's own PEM reader.

    No ca_file: the public DPS roots from certifi go to certs/dps-root.pem. A ca_file already under out_dir is named
    in place; one elsewhere is copied to certs/<its name>. An existing different file is replaced only with
    `overwrite`."""
    from host_tools.provisioning.device_rules import CA_FILE_LIMIT, RuleError, judge_ca_text, read_bounded

    out_dir = Path(out_dir)
    if ca_file is None:
        name, content = DEFAULT_CA_NAME, public_dps_roots_pem().encode("ascii")
        where = f"{out_dir / name} (the public DPS roots)"
    else:
        ca_file = Path(ca_file)
        try:
            content = read_bounded(ca_file, CA_FILE_LIMIT, "CA file")
        except RuleError as exc:
            raise ProvisioningFileError(str(exc)) from None
        where = str(ca_file)
        try:
            name = ca_file.resolve().relative_to(out_dir.resolve()).as_posix()
            in_place = True
        except ValueError:
            name, in_place = f"certs/{ca_file.name}", False
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise ProvisioningFileError(f"{where}: CA file is not UTF-8") from None
    try:
        judge_ca_text(text, where)
    except RuleError as exc:
        raise ProvisioningFileError(f"{exc} (the device would refuse it)") from None
    target = out_dir / name
    if ca_file is not None and in_place:
        return CaPlan(name, target, None)
    if target.is_dir():
        raise ProvisioningFileError(f"{target}: is a folder, the CA file cannot go there")
    if target.exists() or target.is_symlink():
        try:
            same = target.read_bytes() == content
        except OSError:
            same = False
        if same:
            return CaPlan(name, target, None)
        if not overwrite:
            raise ProvisioningFileError(f"{target}: already exists with other certificates (use --force to replace it)")
    return CaPlan(name, target, content)


def place_ca_file(out_dir: Path, ca_file: Path | None, overwrite: bool = False) -> str:
    """plan_ca_file, then write it; returns the name relative to out_dir."""
    plan = plan_ca_file(out_dir, ca_file, overwrite)
    if plan.content is not None:
        _write_atomic(plan.target, plan.content, 0o644)
    return plan.name


def _refuse_existing(path: Path, overwrite: bool) -> None:
    if path.is_dir():
        raise ProvisioningFileError(f"{path}: is a folder, not a file")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise ProvisioningFileError(f"{path}: already exists (use --force to replace it)")


def write_provisioning_file(path: Path, config: dict, overwrite: bool = False) -> Path:
    """Check config with the device's rules, then write it to path (mode 0600). Its CA file must be in place."""
    path = Path(path)
    _refuse_existing(path, overwrite)
    problems = check_config(config, str(path))
    if problems:
        raise ProvisioningFileError("\n".join(problems))
    _write_private(path, file_text(config))
    return path


def _writing(what: Path, action):
    try:
        return action()
    except OSError as exc:
        raise ProvisioningFileError(f"{exc.filename or what}: cannot be written ({exc.strerror})") from None


def create_provisioning_file(
    path: Path,
    settings: DeviceSettings,
    registration_id: str,
    symmetric_key: str | None = None,
    group_key: str | None = None,
    ca_file: Path | None = None,
    overwrite: bool = False,
) -> dict:
    """Write one provisioning file from an individual key, or from a group key (the device key is derived).

    Everything is checked first (the fields with the device's rules, the CA file with its PEM reader, what already
    exists); nothing is written unless all of it will be."""
    if (symmetric_key is None) == (group_key is None):
        raise ProvisioningFileError("give exactly one of an individual symmetric key or a group enrollment key")
    path = Path(path)
    key = derive_device_key(group_key, registration_id) if group_key is not None else symmetric_key
    _refuse_existing(path, overwrite)
    plan = plan_ca_file(path.parent, ca_file, overwrite)
    config = settings.config(registration_id, key, plan.name)
    problems = check_config(config, str(path))
    if problems:
        raise ProvisioningFileError("\n".join(problems))
    _check_writable(path.parent)
    if plan.content is not None:
        _writing(plan.target, lambda: _write_atomic(plan.target, plan.content, 0o644))
    _writing(path, lambda: _write_private(path, file_text(config)))
    return config


# --- X.509 ----------------------------------------------------------------------------------------------------------

X509_FILE_LIMIT = 16 * 1024  # what the device reads into its heap (azprov.identity)


@dataclass
class IdentityPlan:
    """A device's certificate file and key file as they will be written beside its provisioning file."""

    cert_name: str
    key_name: str
    cert_bytes: bytes = field(repr=False)
    key_bytes: bytes = field(repr=False)  # private key: mode 0600, never shown


def x509_config(settings: DeviceSettings, registration_id: str, ca_name: str, cert_name: str, key_name: str) -> dict:
    config = {}
    for name, value in settings.config(registration_id, "", ca_name).items():
        if name == "symmetric_key":
            config.update(attestation="x509", certificate_file=cert_name, private_key_file=key_name)
        elif name != "sas_ttl_s":  # no token is signed with X.509
            config[name] = value
    return config


def plan_identity(
    registration_id: str,
    certificate_file: Path | None = None,
    private_key_file: Path | None = None,
    group_ca: Path | None = None,
    group_ca_key: Path | None = None,
    key_type: str = "ec",
) -> IdentityPlan:
    """The files of an X.509 device: given ones (copied to certs/), or a new device certificate (CN = registration id,
    EC P-256 or RSA 2048) issued by the group CA. When that CA is an intermediate, it (and any chain after it in its
    file) follows the device certificate, as the device must send it."""
    from host_tools.provisioning import pki
    from host_tools.provisioning.device_rules import RuleError, read_bounded

    if certificate_file is not None or private_key_file is not None:
        if certificate_file is None or private_key_file is None or group_ca is not None:
            raise ProvisioningFileError("give --certificate-file with --private-key-file, or --group-ca with its key")
        try:
            cert_bytes = read_bounded(certificate_file, X509_FILE_LIMIT, "certificate file")
            key_bytes = read_bounded(private_key_file, X509_FILE_LIMIT, "private key file")
        except RuleError as exc:
            raise ProvisioningFileError(str(exc)) from None
        return IdentityPlan(
            f"certs/{Path(certificate_file).name}", f"certs/{Path(private_key_file).name}", cert_bytes, key_bytes
        )
    if group_ca is None or group_ca_key is None:
        raise ProvisioningFileError(
            "X.509 needs the device's files (--certificate-file, --private-key-file) or a group CA to issue them "
            "(--group-ca, --group-ca-key)"
        )
    try:
        ca = pki.load_issued(group_ca, group_ca_key)
        issued = pki.make_device_cert(ca, registration_id, key_type)
    except pki.PkiError as exc:
        raise ProvisioningFileError(str(exc)) from None
    cert_bytes = issued.cert_pem(with_chain=True)
    return IdentityPlan(
        f"certs/{registration_id}.pem",
        f"certs/{registration_id}-key.pem",
        cert_bytes,
        pki.private_key_bytes(issued.key, "pkcs8", "pem"),
    )


def judge_planned_identity(config: dict, plan: IdentityPlan, where: str, ca: Path | None = None) -> dict:
    """Run the device's identity checks (and the host's chain checks) on planned files before anything is written."""
    import tempfile

    from host_tools.provisioning.device_rules import RuleError, judge_identity

    with tempfile.TemporaryDirectory(prefix="azprov-identity-") as tmp:
        cert, key = Path(tmp) / "certificate", Path(tmp) / "key"
        cert.write_bytes(plan.cert_bytes)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(plan.key_bytes)
        trial = dict(config, certificate_file=str(cert), private_key_file=str(key))
        try:
            return judge_identity(trial, where, ca)
        except RuleError as exc:
            # Name the user's files, not the temporary ones.
            text = str(exc).replace(str(cert), plan.cert_name).replace(str(key), plan.key_name)
            raise ProvisioningFileError(text) from None


def write_identity(out_dir: Path, plan: IdentityPlan) -> None:
    _writing(out_dir / plan.cert_name, lambda: _write_atomic(out_dir / plan.cert_name, plan.cert_bytes, 0o644))
    _writing(out_dir / plan.key_name, lambda: _write_atomic(out_dir / plan.key_name, plan.key_bytes, 0o600))


def create_x509_provisioning_file(
    path: Path,
    settings: DeviceSettings,
    registration_id: str,
    identity: IdentityPlan,
    ca_file: Path | None = None,
    overwrite: bool = False,
    group_ca: Path | None = None,
) -> dict:
    """Write an X.509 provisioning file with its certificate and key files (certs/ beside it), after checking all of
    it with the device's rules; nothing is written unless everything will be."""
    path = Path(path)
    _refuse_existing(path, overwrite)
    for name in (identity.cert_name, identity.key_name):
        target = path.parent / name
        if (
            target.exists()
            and not overwrite
            and target.read_bytes() != (identity.cert_bytes if name == identity.cert_name else identity.key_bytes)
        ):
            raise ProvisioningFileError(f"{target}: already exists (use --force to replace it)")
    plan = plan_ca_file(path.parent, ca_file, overwrite)
    config = x509_config(settings, registration_id, plan.name, identity.cert_name, identity.key_name)
    problems = check_config(config, str(path))
    if problems:
        raise ProvisioningFileError("\n".join(problems))
    judge_planned_identity(config, identity, str(path), group_ca)
    _check_writable(path.parent)
    if plan.content is not None:
        _writing(plan.target, lambda: _write_atomic(plan.target, plan.content, 0o644))
    write_identity(path.parent, identity)
    _writing(path, lambda: _write_private(path, file_text(config)))
    return config


def _check_writable(folder: Path) -> None:
    """The folder exists or can be made, and takes files; checked before the first file is written."""
    folder = Path(folder)
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise ProvisioningFileError(f"{existing}: is not a folder, {folder} cannot be made")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ProvisioningFileError(f"{existing}: folder is not writable")


# --- CLI -------------------------------------------------------------------------------------------------------------


def read_group_key(group_key: str | None, group_key_file: Path | None) -> str | None:
    if group_key is not None and group_key_file is not None:
        raise click.ClickException("give --group-key or --group-key-file, not both")
    if group_key_file is not None:
        from host_tools.provisioning.device_rules import RuleError, read_bounded

        try:
            data = read_bounded(group_key_file, GROUP_KEY_FILE_LIMIT, "group key file")
        except RuleError as exc:
            raise click.ClickException(str(exc)) from None
        try:
            text = data.decode("ascii").strip()
        except UnicodeDecodeError:
            raise click.ClickException(f"{group_key_file}: group key file is not base64 text") from None
        try:
            decode_key(text, "group key")
        except ProvisioningFileError as exc:
            raise click.ClickException(f"{group_key_file}: {exc}") from None
        return text
    if group_key is not None:
        try:
            decode_key(group_key, "group key")
        except ProvisioningFileError as exc:
            raise click.ClickException(f"--group-key: {exc}") from None
    return group_key


def x509_options(func):
    """Options of `provision-file create` and `fleet` for X.509 devices."""
    options = [
        click.option(
            "--attestation",
            type=click.Choice(["symmetric_key", "x509"]),
            default="symmetric_key",
            show_default=True,
            help="How the device proves who it is.",
        ),
        click.option(
            "--certificate-file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="x509: the device certificate, then its intermediates (PEM or DER); copied to certs/.",
        ),
        click.option(
            "--private-key-file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="x509: its unencrypted private key (PEM or DER); copied to certs/ with mode 0600, never shown.",
        ),
        click.option(
            "--group-ca",
            type=click.Path(dir_okay=False, path_type=Path),
            help="x509: issue a new device certificate from this enrollment-group CA certificate (e.g. from `pki`).",
        ),
        click.option(
            "--group-ca-key", type=click.Path(dir_okay=False, path_type=Path), help="x509: the group CA's key."
        ),
        click.option(
            "--key-type",
            type=click.Choice(["ec", "rsa"]),
            default="ec",
            show_default=True,
            help="x509: key of a new device certificate (EC P-256 or RSA 2048).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def settings_options(func):
    """Options shared by `provision-file create` and `fleet`."""
    options = [
        click.option("--id-scope", required=True, help="DPS ID scope (0ne...)."),
        click.option("--dps-host", default=GLOBAL_DPS_HOST, show_default=True, help="DPS host name."),
        click.option("--dps-port", type=int, default=8883, show_default=True),
        click.option(
            "--ca-file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="PEM CA file for the DPS server [default: the public DPS roots from certifi].",
        ),
        click.option("--payload", help='Registration payload as JSON, e.g. \'{"model": "thermo-1"}\'.'),
        click.option("--gateway-host", help="Edge gateway host for telemetry."),
        click.option("--gateway-port", type=int, default=8883, show_default=True),
        click.option("--storage-dir", default="azprov_state", show_default=True),
        click.option(
            "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True
        ),
        click.option(
            "--sas-ttl", "sas_ttl_s", type=int, default=3600, show_default=True, help="SAS token lifetime (seconds)."
        ),
        click.option("--force-reprovision", is_flag=True, help="Register again at every boot."),
        click.option("--wifi-ssid", help="Wi-Fi network for ESP32 boards."),
        click.option(
            "--wifi-password", envvar="AZPROV_WIFI_PASSWORD", help="Wi-Fi password [env AZPROV_WIFI_PASSWORD]."
        ),
        click.option(
            "--group-key",
            envvar="AZPROV_GROUP_KEY",
            help="Group enrollment key (base64) [env AZPROV_GROUP_KEY]; never written out.",
        ),
        click.option(
            "--group-key-file",
            type=click.Path(path_type=Path),
            help="File holding the group enrollment key.",
        ),
        click.option("--force", is_flag=True, help="Replace existing files."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def settings_from_options(
    id_scope,
    dps_host,
    dps_port,
    payload,
    gateway_host,
    gateway_port,
    storage_dir,
    log_level,
    sas_ttl_s,
    force_reprovision,
    wifi_ssid,
    wifi_password,
) -> DeviceSettings:
    parsed_payload = None
    if wifi_password is not None and not wifi_ssid:
        raise click.ClickException("--wifi-password needs --wifi-ssid (the network it is the password of)")
    if payload is not None:
        try:
            parsed_payload = json.loads(payload, strict=False, parse_constant=_refuse_constant)
        except json.JSONDecodeError as exc:
            raise click.ClickException(f"--payload is not valid JSON: {exc.msg}") from None
        except RecursionError:
            raise click.ClickException("--payload is nested too deeply") from None
        except ValueError as exc:
            raise click.ClickException(f"--payload is not valid JSON: {exc}") from None
    return DeviceSettings(
        id_scope=id_scope,
        dps_host=dps_host,
        dps_port=dps_port,
        payload=parsed_payload,
        gateway_host=gateway_host,
        gateway_port=gateway_port,
        storage_dir=storage_dir,
        log_level=log_level,
        sas_ttl_s=sas_ttl_s,
        force_reprovision=force_reprovision,
        wifi_ssid=wifi_ssid,
        wifi_password=wifi_password,
    )


def _summary_table(path: Path, config: dict, key_source: str):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(str(path)), show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for name, value in redacted(config).items():
        if name == "symmetric_key":
            value = f"<hidden: {key_source}>"
        table.add_row(name, escape(json.dumps(value) if not isinstance(value, str) else value))
    return table


@click.group("provision-file")
def provision_file():
    """Write, check and show provisioning files."""


@provision_file.command("create")
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("provisioning.json"),
    show_default=True,
    help="Provisioning file to write (the CA file goes beside it).",
)
@click.option("--registration-id", required=True, help="The device's registration id.")
@click.option(
    "--symmetric-key",
    envvar="AZPROV_SYMMETRIC_KEY",
    help="Individual enrollment key (base64) [env AZPROV_SYMMETRIC_KEY].",
)
@x509_options
@settings_options
def create(
    out,
    registration_id,
    symmetric_key,
    group_key,
    group_key_file,
    ca_file,
    force,
    attestation,
    certificate_file,
    private_key_file,
    group_ca,
    group_ca_key,
    key_type,
    **settings,
):
    """Write a provisioning file from an individual key, or from a group key and a registration id; with
    --attestation x509 from the device's certificate and key files, or with a new device certificate issued by an
    enrollment-group CA (--group-ca, --group-ca-key)."""
    from rich.console import Console

    if attestation == "x509":
        if symmetric_key is not None or group_key is not None or group_key_file is not None:
            raise click.ClickException("--attestation x509 takes no symmetric key or group key")
        try:
            identity = plan_identity(
                registration_id, certificate_file, private_key_file, group_ca, group_ca_key, key_type
            )
            config = create_x509_provisioning_file(
                out,
                settings_from_options(**settings),
                registration_id,
                identity,
                ca_file=ca_file,
                overwrite=force,
                group_ca=group_ca,
            )
        except ProvisioningFileError as exc:
            raise click.ClickException(str(exc)) from None
        Console(width=max(Console().width, 100)).print(_summary_table(out, config, ""))
        click.echo(
            f"wrote {out}, {out.parent / identity.cert_name}, {out.parent / identity.key_name} (mode 0600) "
            f"and {resolve_ca_file(out, config)}"
        )
        return
    if certificate_file or private_key_file or group_ca or group_ca_key:
        raise click.ClickException("certificate and CA options need --attestation x509")
    group_key = read_group_key(group_key, group_key_file)
    if (symmetric_key is None) == (group_key is None):
        raise click.ClickException("give exactly one of --symmetric-key or --group-key/--group-key-file")
    try:
        config = create_provisioning_file(
            out,
            settings_from_options(**settings),
            registration_id,
            symmetric_key=symmetric_key,
            group_key=group_key,
            ca_file=ca_file,
            overwrite=force,
        )
    except ProvisioningFileError as exc:
        raise click.ClickException(str(exc)) from None
    Console(width=max(Console().width, 100)).print(
        _summary_table(out, config, "derived from the group key" if group_key else "individual key")
    )
    click.echo(f"wrote {out} and {resolve_ca_file(out, config)}")


@provision_file.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--no-ca-check", is_flag=True, help="Do not check that the CA file exists and holds certificates.")
@click.option(
    "--group-ca",
    type=click.Path(dir_okay=False, path_type=Path),
    help="X.509: the enrollment group's CA certificate; the device's chain must reach it.",
)
def validate(files, no_ca_check, group_ca):
    """Check provisioning files against the schema (every problem names the file and the field)."""
    failures = []
    for path in files:
        try:
            _, document = read_provisioning_document(path)
        except ProvisioningFileError:
            document = None
        if is_fleet_index(document):
            click.echo(f"{path}: fleet index (written by `fleet`), skipped")
            continue
        try:
            config = validate_provisioning_file(path, check_ca=not no_ca_check, group_ca=group_ca)
        except ProvisioningFileError as exc:
            failures.append(str(exc))
            continue
        extra = unknown_fields(config)
        note = f" (unknown fields, ignored by the device: {', '.join(extra)})" if extra else ""
        click.echo(f"{path}: ok{note}")
    if failures:
        raise click.ClickException("\n".join(failures))


@provision_file.command("show")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def show(file):
    """Print a provisioning file with its secrets hidden."""
    from rich.console import Console

    try:
        config = validate_provisioning_file(file, check_ca=False)
    except ProvisioningFileError as exc:
        raise click.ClickException(str(exc)) from None
    Console().print(_summary_table(file, config, "set"))
