"""The operational certificate a device keeps after certificate issuance (docs/design.md "Device storage"):
`identity.pem` (the issued chain, leaf first, PEM) and `identity.key` (its private key) in the device's storage_dir.
`provision-file show` lists the certificates; the key file is only said to be there, never read."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

IDENTITY_CERTIFICATE = "identity.pem"
IDENTITY_KEY = "identity.key"
IDENTITY_LIMIT = 16 * 1024  # three P-384 certificates take about 3 KB


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

    path = Path(storage_dir) / IDENTITY_CERTIFICATE
    if not path.exists() and not path.is_symlink():
        return None
    identity = StoredIdentity(path, (Path(storage_dir) / IDENTITY_KEY).is_file())
    try:
        data = read_bounded(path, IDENTITY_LIMIT, "operational certificate file")
    except RuleError as exc:
        identity.problem = str(exc)
        return identity
    try:
        identity.certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        identity.problem = f"{path}: holds no PEM certificate"
    return identity


def validity_words(certificate: x509.Certificate, now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.UTC)
    if certificate.not_valid_after_utc < now:
        return "expired"
    if certificate.not_valid_before_utc > now:
        return "not yet valid"
    left = certificate.not_valid_after_utc - now
    return f"valid, {left.days} d {left.seconds // 3600} h left"
