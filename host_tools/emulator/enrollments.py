"""The enrollment file: what the emulated DPS knows (ID scope, enrollments, trust bundles, faults).

Parsing validates with jsonschema and then checks what a schema cannot (keys are base64, ids are unique,
referenced trust bundles and certificate files exist); every error names the field, e.g.
`individual[0].symmetric_key: is not valid base64`. Reading, re-reading and writing the file: enrollment_file.py.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
from cryptography import x509

from host_tools.emulator import issuance, x509_auth
from host_tools.emulator.faults import GLOBAL_ONLY, FaultError, validate_faults
from host_tools.emulator.sas import derive_device_key

DEFAULT_ID_SCOPE = "0ne00000001"
DEFAULT_HUB = "azprov-hub.azure-devices.net"
PKI_PREFIX = "pki:"
PKI_NAMES = {"trust-root": "trust_root", "edge-ca": "edge_ca", "dps-root": "dps_root", "trust-bundle": "trust_bundle"}
ALLOCATION_ERRORS = {
    400207: "Custom allocation failed with status code: 400",
    400208: "No IoT hub is available to assign the device to",
    400209: "The IoT hub is not authorized for this enrollment",
}
SUBSTATUSES = ["initialAssignment", "deviceDataMigrated", "deviceDataReset", "reprovisionedToInitialAssignment"]

_ID = {"type": "string", "pattern": r"^[A-Za-z0-9._:-]{1,128}$"}
_HUB = {"type": "string", "pattern": r"^[A-Za-z0-9.-]{1,253}$"}
_KEY = {"type": "string", "minLength": 4}
_FILE = {"type": "string", "minLength": 1}
# SHA-1 (40 hex digits) or SHA-256 (64), colons between bytes allowed.
_THUMBPRINT = {
    "type": "string",
    "pattern": r"^([0-9A-Fa-f]{2}:?){19}[0-9A-Fa-f]{2}(:?([0-9A-Fa-f]{2}:?){11}[0-9A-Fa-f]{2})?$",
}
_VALIDITY = {
    "validity_days": {
        "type": "integer",
        "minimum": issuance.MIN_VALIDITY_DAYS,
        "maximum": issuance.MAX_VALIDITY_DAYS,
    },
    # Emulator-only (compressed-time renewal tests): overrides validity_days.
    "validity_seconds": {"type": "integer", "minimum": 1, "maximum": issuance.MAX_VALIDITY_SECONDS},
}
_POLICY_NAME = {"type": "string", "pattern": r"^[A-Za-z0-9._-]{1,128}$"}
_COMMON = {
    "assigned_hub": _HUB,
    "certificate_issuance": {
        "type": "object",
        "additionalProperties": False,
        "required": ["policy"],
        "properties": {"policy": _POLICY_NAME, **_VALIDITY},
    },
    "trust_bundle": {"type": ["string", "null"]},
    "payload": {},
    "disabled": {"type": "boolean"},
    "allocation_fails": {"oneOf": [{"type": "boolean"}, {"enum": sorted(ALLOCATION_ERRORS)}]},
    "substatus": {"enum": SUBSTATUSES},
    "faults": {"type": "object"},  # checked by faults.validate_faults for a message naming the fault
    "comment": {"type": "string"},
}

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "azprov emulator enrollment file",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "$schema": {"type": "string"},
        "comment": {"type": "string"},
        "id_scope": {"type": "string", "pattern": r"^[A-Za-z0-9]{1,64}$"},
        "settings": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"gateway_devices": {"enum": ["enrolled", "registered"]}},
        },
        "faults": {"type": "object"},
        "trust_bundles": {
            "type": "object",
            "propertyNames": {"pattern": r"^[A-Za-z0-9._-]{1,128}$"},
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["certificates"],
                "properties": {
                    "certificates": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}}
                },
            },
        },
        "issuance_policies": {
            "type": "object",
            "propertyNames": _POLICY_NAME,
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["ca_certificate", "ca_key"],
                "properties": {"ca_certificate": _FILE, "ca_key": _FILE, **_VALIDITY, "comment": {"type": "string"}},
            },
        },
        "individual": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["registration_id", "assigned_hub"],
                # How the device proves itself: its symmetric key, or (X.509) its certificate or its thumbprint.
                "oneOf": [
                    {"required": ["symmetric_key"]},
                    {"required": ["certificate"]},
                    {"required": ["thumbprint"]},
                ],
                "properties": {
                    "registration_id": _ID,
                    "symmetric_key": _KEY,
                    "certificate": _FILE,
                    "thumbprint": _THUMBPRINT,
                    "device_id": _ID,
                    **_COMMON,
                },
            },
        },
        "groups": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["group_id", "assigned_hub"],
                # A symmetric-key group, or an X.509 group trusting a CA certificate (a root or an intermediate).
                "oneOf": [{"required": ["group_key"]}, {"required": ["ca_certificate"]}],
                "properties": {"group_id": _ID, "group_key": _KEY, "ca_certificate": _FILE, **_COMMON},
            },
        },
    },
}


class EnrollmentError(ValueError):
    """The enrollment file is invalid. `field` is the dotted path of the offending field ('' for the file)."""

    def __init__(self, field: str, message: str, source: Path | None = None):
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{field + ': ' if field else ''}{message}")
        self.field = field
        self.source = source


@dataclass(frozen=True)
class Enrollment:
    kind: str  # "individual" or "group"
    name: str  # registration id (individual) or group id (group)
    key: str = field(repr=False)  # symmetric key (individual) or group key (group): never in repr/logs
    assigned_hub: str
    device_id: str | None = None
    trust_bundle: str | None = None
    payload: Any = None
    has_payload: bool = False
    disabled: bool = False
    allocation_error: int | None = None
    substatus: str = "initialAssignment"
    faults: dict = field(default_factory=dict)
    attestation: str = field(default="symmetric_key", repr=False)  # or "x509"
    thumbprints: frozenset = frozenset()  # x509 individual: SHA-1/SHA-256 (upper-case hex) the device may present
    ca_certificate: Any = field(default=None, repr=False)  # x509 group: the CA certificate (cryptography object)
    issuance: issuance.IssuancePolicy | None = None  # certificate issuance: the policy (validity as overridden here)

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.name}"

    @property
    def x509(self) -> bool:
        return self.attestation == "x509"

    def device_key(self, registration_id: str) -> str | None:
        """The key a device of this enrollment signs with (derived from the group key for a group); None for X.509."""
        if self.x509:
            return None
        return self.key if self.kind == "individual" else derive_device_key(self.key, registration_id)

    def device_id_for(self, registration_id: str) -> str:
        return self.device_id or registration_id


@dataclass
class Enrollments:
    id_scope: str = DEFAULT_ID_SCOPE
    faults: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    trust_bundles: dict[str, list[str]] = field(default_factory=dict)
    issuance_policies: dict[str, issuance.IssuancePolicy] = field(default_factory=dict)
    individual: dict[str, Enrollment] = field(default_factory=dict)
    groups: list[Enrollment] = field(default_factory=list)
    source: Path | None = None

    @property
    def base_dir(self) -> Path:
        return self.source.parent if self.source else Path.cwd()

    @property
    def gateway_devices(self) -> str:
        return self.settings.get("gateway_devices", "enrolled")

    def certificate_path(self, reference: str, pki=None) -> Path:
        if reference.startswith(PKI_PREFIX):
            attribute = PKI_NAMES[reference[len(PKI_PREFIX) :]]
            if pki is None:
                raise EnrollmentError("", f"{reference} needs the emulator's PKI")
            return Path(getattr(pki, attribute))
        path = Path(reference)
        return path if path.is_absolute() else self.base_dir / path

    def bundle_certificates(self, bundle_id: str, pki=None) -> list[x509.Certificate]:
        """The bundle's certificates, read now (so a certificate file replaced on disk shows up at once)."""
        certs: list[x509.Certificate] = []
        for index, reference in enumerate(self.trust_bundles[bundle_id]):
            where = f"trust_bundles.{bundle_id}.certificates[{index}]"
            path = self.certificate_path(reference, pki)
            try:
                found = x509.load_pem_x509_certificates(path.read_bytes())
            except OSError as exc:
                raise EnrollmentError(where, f"cannot read {path} ({exc.strerror})", self.source) from exc
            except ValueError as exc:
                raise EnrollmentError(where, f"{path} holds no PEM certificate", self.source) from exc
            certs.extend(found)
        return certs


def _field_path(parts) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_TYPE_WORDS = {
    "string": "a string",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "object": "an object",
    "array": "a list",
    "null": "null",
}


def _describe(error) -> str:
    """A schema error in words that never repeat the offending value: it may hold a key (jsonschema's own
    messages print the whole instance)."""
    kind, rule = error.validator, error.validator_value
    if kind == "type":
        types = rule if isinstance(rule, list) else [rule]
        return "must be " + " or ".join(_TYPE_WORDS.get(t, str(t)) for t in types)
    if kind == "required":
        missing = [name for name in rule if isinstance(error.instance, dict) and name not in error.instance]
        return f"needs the field {', '.join(missing) or ', '.join(rule)}"
    if kind == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        allowed = sorted(error.schema.get("properties", {}))
        return f"has unknown fields {', '.join(map(_printable_name, extra))}; allowed: {', '.join(allowed)}"
    if kind == "propertyNames":
        return "has a name with characters or a length that are not allowed"
    if kind == "pattern":
        return "has characters or a length that are not allowed"
    if kind == "enum":
        return "must be one of " + ", ".join(json.dumps(v) for v in rule)
    if kind == "oneOf" and all(isinstance(o, dict) and "required" in o for o in rule):
        return "needs exactly one of " + ", ".join(o["required"][0] for o in rule)
    if kind == "oneOf":
        return "must be true, false or one of " + ", ".join(map(str, sorted(ALLOCATION_ERRORS)))
    if kind in ("minLength", "minItems"):
        return (
            "must not be empty"
            if rule == 1
            else f"must have at least {rule} {'characters' if kind == 'minLength' else 'items'}"
        )
    if kind in ("minimum", "maximum"):
        low, high = error.schema.get("minimum"), error.schema.get("maximum")
        return f"must be between {low} and {high}" if low is not None and high is not None else f"breaks '{kind}'"
    if kind in ("maxLength", "maxItems"):
        return f"must have at most {rule} {'characters' if kind == 'maxLength' else 'items'}"
    return f"breaks the schema rule '{kind}'"


def _printable_name(name: str) -> str:
    # An unknown field's name is the user's own text, not a value; shown short and printable.
    name = name if len(name) <= 40 else name[:40] + "..."
    return json.dumps(name)


def _check_base64_key(value: str, where: str, source):
    text = value.strip() + "=" * (-len(value.strip()) % 4)
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise EnrollmentError(where, "is not valid base64", source) from None
    if len(decoded) < 16:
        raise EnrollmentError(where, f"decodes to {len(decoded)} bytes; use at least 16 (DPS keys are 32-64)", source)


def parse_enrollments(document: Any, source: Path | None = None, pki=None, check_files: bool = True) -> Enrollments:
    """Validate a decoded enrollment document. Raises EnrollmentError naming the field."""
    validator = jsonschema.Draft202012Validator(SCHEMA)
    errors = sorted(
        validator.iter_errors(document), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path)))
    )
    if errors:
        error = jsonschema.exceptions.best_match(errors)
        raise EnrollmentError(_field_path(error.absolute_path), _describe(error), source)

    result = Enrollments(
        id_scope=document.get("id_scope", DEFAULT_ID_SCOPE), source=source, settings=dict(document.get("settings", {}))
    )
    try:
        result.faults = validate_faults(document.get("faults"), "faults")
    except FaultError as exc:
        raise EnrollmentError("", str(exc), source) from None

    for bundle_id, spec in document.get("trust_bundles", {}).items():
        for index, reference in enumerate(spec["certificates"]):
            where = f"trust_bundles.{bundle_id}.certificates[{index}]"
            if reference.startswith(PKI_PREFIX) and reference[len(PKI_PREFIX) :] not in PKI_NAMES:
                raise EnrollmentError(
                    where,
                    f"unknown PKI name {reference!r} (known: {', '.join(PKI_PREFIX + n for n in PKI_NAMES)})",
                    source,
                )
        result.trust_bundles[bundle_id] = list(spec["certificates"])
    if check_files:
        for bundle_id in result.trust_bundles:
            if pki is not None or not any(r.startswith(PKI_PREFIX) for r in result.trust_bundles[bundle_id]):
                result.bundle_certificates(bundle_id, pki)
            else:
                for index, reference in enumerate(result.trust_bundles[bundle_id]):
                    if not reference.startswith(PKI_PREFIX):
                        where = f"trust_bundles.{bundle_id}.certificates[{index}]"
                        if not result.certificate_path(reference).is_file():
                            raise EnrollmentError(
                                where, f"file {result.certificate_path(reference)} does not exist", source
                            )

    for name, spec in document.get("issuance_policies", {}).items():
        result.issuance_policies[name] = _load_policy(result, name, spec, source, check_files)

    def common(entry: dict, where: str) -> dict:
        bundle = entry.get("trust_bundle")
        if bundle is not None and bundle not in result.trust_bundles:
            raise EnrollmentError(f"{where}.trust_bundle", f"no trust bundle {bundle!r} in trust_bundles", source)
        policy = None
        if "certificate_issuance" in entry:
            spec = entry["certificate_issuance"]
            policy = result.issuance_policies.get(spec["policy"])
            if policy is None:
                raise EnrollmentError(
                    f"{where}.certificate_issuance.policy",
                    f"no policy {spec['policy']!r} in issuance_policies",
                    source,
                )
            policy = dataclasses.replace(policy, validity=issuance.validity_of(spec, policy.validity))
        try:
            faults = validate_faults(entry.get("faults"), f"{where}.faults")
        except FaultError as exc:
            raise EnrollmentError("", str(exc), source) from None
        for name in GLOBAL_ONLY & set(faults):
            raise EnrollmentError(f"{where}.faults.{name}", "can only be set globally", source)
        fails = entry.get("allocation_fails", False)
        return dict(
            assigned_hub=entry["assigned_hub"],
            trust_bundle=bundle,
            payload=entry.get("payload"),
            has_payload="payload" in entry,
            disabled=entry.get("disabled", False),
            allocation_error=(400207 if fails is True else (fails or None)),
            substatus=entry.get("substatus", "initialAssignment"),
            faults=faults,
            issuance=policy,
        )

    device_ids: dict[str, str] = {}
    for index, entry in enumerate(document.get("individual", [])):
        where = f"individual[{index}]"
        registration_id = entry["registration_id"]
        x509_fields = {}
        if "symmetric_key" in entry:
            _check_base64_key(entry["symmetric_key"], f"{where}.symmetric_key", source)
        elif "certificate" in entry:
            cert = _load_ca_or_device(result, entry["certificate"], f"{where}.certificate", source)
            x509_fields = dict(attestation="x509", thumbprints=frozenset(x509_auth.thumbprints(cert)))
        else:
            x509_fields = dict(
                attestation="x509", thumbprints=frozenset({x509_auth.normalise_thumbprint(entry["thumbprint"])})
            )
        if registration_id in result.individual:
            raise EnrollmentError(f"{where}.registration_id", f"{registration_id!r} is enrolled twice", source)
        device_id = entry.get("device_id", registration_id)
        if device_id in device_ids:
            raise EnrollmentError(
                f"{where}.device_id", f"device id {device_id!r} is also used by {device_ids[device_id]}", source
            )
        device_ids[device_id] = where
        result.individual[registration_id] = Enrollment(
            kind="individual",
            name=registration_id,
            key=entry.get("symmetric_key", ""),
            device_id=entry.get("device_id"),
            **common(entry, where),
            **x509_fields,
        )
    group_ids = set()
    for index, entry in enumerate(document.get("groups", [])):
        where = f"groups[{index}]"
        x509_fields = {}
        if "group_key" in entry:
            _check_base64_key(entry["group_key"], f"{where}.group_key", source)
        else:
            ca = _load_ca_or_device(result, entry["ca_certificate"], f"{where}.ca_certificate", source, ca=True)
            x509_fields = dict(attestation="x509", ca_certificate=ca)
        if entry["group_id"] in group_ids:
            raise EnrollmentError(f"{where}.group_id", f"{entry['group_id']!r} is defined twice", source)
        group_ids.add(entry["group_id"])
        result.groups.append(
            Enrollment(
                kind="group",
                name=entry["group_id"],
                key=entry.get("group_key", ""),
                **common(entry, where),
                **x509_fields,
            )
        )
    return result


def _load_policy(result: Enrollments, name: str, spec: dict, source, check_files: bool) -> issuance.IssuancePolicy:
    """An issuance policy: its CA certificate and key (read now, when files are checked) and its validity."""
    validity = issuance.validity_of(spec, issuance.DEFAULT_VALIDITY)
    if not check_files:
        return issuance.IssuancePolicy(name, validity)
    try:
        cert, key = issuance.load_policy_ca(
            result.certificate_path(spec["ca_certificate"]), result.certificate_path(spec["ca_key"])
        )
    except issuance.PolicyFileError as exc:
        raise EnrollmentError(f"issuance_policies.{name}.{exc.field}", str(exc), source) from None
    try:
        x509_auth.check_dates(cert, "the CA certificate")
    except x509_auth.CertificateProblem as exc:
        raise EnrollmentError(f"issuance_policies.{name}.ca_certificate", str(exc), source) from None
    return issuance.IssuancePolicy(name, validity, cert, key)


def _load_ca_or_device(result: Enrollments, reference: str, where: str, source, ca: bool = False):
    """The first certificate of a PEM or DER file named by an X.509 enrollment (relative to the enrollment file)."""
    path = result.certificate_path(reference)
    try:
        cert = x509_auth.load_certificate_file(path)[0]
    except OSError as exc:
        raise EnrollmentError(where, f"cannot read {path} ({exc.strerror})", source) from exc
    except (ValueError, IndexError) as exc:
        raise EnrollmentError(where, f"{path} holds no PEM or DER certificate", source) from exc
    if ca:
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise EnrollmentError(where, f"{path} is not a CA certificate", source)
    return cert
