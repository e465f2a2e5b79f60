"""A certificate-issuance policy CA for the emulator (`pki --issuance-ca DIR`): the CA an enrollment's issuance
policy signs devices' operational certificates with (docs/emulator.md "Certificate issuance").

An EC P-384 self-signed CA (ecdsa-with-SHA384), as `ca.pem` and `ca-key.pem` (mode 0600, through
host_tools/secret_files.py); reused while valid, like the rest of the lab PKI. Test PKI: never for production.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from host_tools.provisioning.certificates import (
    Issued,
    PkiError,
    _ca_key_usage,
    cert_builder,
    is_self_signed,
    subject_name,
    unique_name,
)
from host_tools.provisioning.pki_files import _try_load, folder_lock, write_issued

ISSUANCE_CA_DAYS = 3650
ISSUANCE_CA_FILES = {"ca": "ca.pem", "ca_key": "ca-key.pem"}


@dataclass(frozen=True)
class IssuanceCa:
    folder: Path
    certificate: Path
    key: Path
    action: str = field(default="", compare=False)  # "created" or "reused"

    def policy(self, validity_days: int = 30) -> dict:
        """The enrollment file's `issuance_policies` entry for this CA."""
        return {"ca_certificate": str(self.certificate), "ca_key": str(self.key), "validity_days": validity_days}


def make_issuance_ca(common_name: str | None = None, days: int = ISSUANCE_CA_DAYS) -> Issued:
    """A self-signed EC P-384 CA that may sign end-entity certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP384R1())
    name = subject_name(common_name or unique_name("azprov issuance CA"), unit="issuance")
    cert = (
        cert_builder(name, name, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    return Issued(cert, key)


def _reusable(issued: Issued | None) -> bool:
    return (
        issued is not None
        and is_self_signed(issued.cert)
        and isinstance(issued.key, ec.EllipticCurvePrivateKey)
        and isinstance(issued.key.curve, ec.SECP384R1)
    )


def ensure_issuance_ca(folder: str | os.PathLike) -> IssuanceCa:
    """Create (or reuse, when valid and P-384) `ca.pem` and `ca-key.pem` in `folder`."""
    folder = Path(folder)
    cert_path, key_path = folder / ISSUANCE_CA_FILES["ca"], folder / ISSUANCE_CA_FILES["ca_key"]
    if folder.exists() and not folder.is_dir():
        raise PkiError(f"{folder}: is not a folder")
    with folder_lock(folder):
        if _reusable(_try_load(cert_path, key_path)):
            action = "reused"
        else:
            write_issued(make_issuance_ca(), cert_path, key_path)
            action = "created"
    return IssuanceCa(folder, cert_path, key_path, action)
