"""Check a provisioning file as the device would (schema words for every problem, the firmware's own rules), and
show one with its secrets hidden."""

from __future__ import annotations

import json
from pathlib import Path

SCHEMA_PATH = Path(__file__).resolve().parent / "provisioning.schema.json"
SECRET_FIELDS = ("symmetric_key", "wifi.password")


class ProvisioningFileError(ValueError):
    """A provisioning file (or an input to one) is wrong; the message names the file and the field."""


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


def refuse_constant(name):
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
        document = json.loads(text, strict=False, parse_constant=refuse_constant)
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
            problems.append(_certificate_order_problem(device_config, path) or str(exc))
    if problems:
        raise ProvisioningFileError("\n".join(problems))
    return config


def _certificate_order_problem(config: dict, path: Path) -> str | None:
    """After the device refused the identity: the host's own diagnosis when the certificate file is out of order
    (the device's message would blame private_key_file), else None."""
    from host_tools.provisioning.x509_identity import order_problem

    try:
        cert_bytes = Path(config["certificate_file"]).read_bytes()
        key_bytes = Path(config["private_key_file"]).read_bytes()
    except OSError:
        return None
    problem = order_problem(cert_bytes, key_bytes)
    return f"{path}: {problem} ({config['certificate_file']})" if problem else None


def redacted(config: dict) -> dict:
    """A copy safe to show: secrets replaced by a note of their presence."""
    shown = json.loads(json.dumps(config))
    if "symmetric_key" in shown:
        shown["symmetric_key"] = "<hidden>"
    if isinstance(shown.get("wifi"), dict) and "password" in shown["wifi"]:
        shown["wifi"]["password"] = "<hidden>"
    return shown
