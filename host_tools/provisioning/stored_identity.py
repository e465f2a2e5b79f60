"""The operational certificate a device keeps after certificate issuance (docs/design.md "Device storage"): the
`identity` entry of state.json in the device's storage_dir, `{"chain": [base64 DER, leaf first], "key": <base64 SEC1>,
"not_before", "not_after", ...}`, committed together with the assignment. `provision-file show` lists the
certificates; of the key it only says whether one is there, never its value."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

STATE_FILE = "state.json"
IDENTITY_KEY = "private key"
STATE_LIMIT = 16 * 1024  # the device's own bound on state.json


@dataclass
class StoredIdentity:
    certificate_file: Path
    key_present: bool
    certificates: list[x509.Certificate] = field(default_factory=list)
    problem: str | None = None  # the file cannot be read or holds no certificate


def storage_folder(provisioning_file: Path, config: dict) -> Path:
    """storage_dir as the device resolves it: relative to the provisioning file's folder."""
    storage = Path(config.get("storage_dir") or "azprov_state")
    return storage if storage.is_absolute() else Path(provisioning_file).parent / storage


def read_stored_identity(storage_dir: Path) -> StoredIdentity | None:
    """The stored operational certificate chain, or None when the device has none."""
    from host_tools.provisioning.device_rules import RuleError, read_bounded

    path = Path(storage_dir) / STATE_FILE
    if not path.exists() and not path.is_symlink():
        return None
    try:
        state = json.loads(read_bounded(path, STATE_LIMIT, "stored state"))
    except RuleError as exc:
        return StoredIdentity(path, False, problem=str(exc))
    except (ValueError, UnicodeError):
        return StoredIdentity(path, False, problem=f"{path}: is not JSON")
    issued = state.get("identity") if isinstance(state, dict) else None
    if issued is None:
        return None
    if not isinstance(issued, dict):
        return StoredIdentity(path, False, problem=f"{path}: identity is not an object")
    identity = StoredIdentity(path, isinstance(issued.get("key"), str) and bool(issued.get("key")))
    try:
        identity.certificates = [x509.load_der_x509_certificate(base64.b64decode(c)) for c in issued.get("chain") or []]
    except (ValueError, TypeError, binascii.Error):
        identity.problem = f"{path}: identity.chain holds something that is not a certificate"
    if not identity.certificates and identity.problem is None:
        identity.problem = f"{path}: identity.chain holds no certificate"
    return identity


def validity_words(certificate: x509.Certificate, now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.UTC)
    if certificate.not_valid_after_utc < now:
        return "expired"
    if certificate.not_valid_before_utc > now:
        return "not yet valid"
    left = certificate.not_valid_after_utc - now
    return f"valid, {left.days} d {left.seconds // 3600} h left"
