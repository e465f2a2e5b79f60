"""X.509 devices: an enrollment-group CA as a manufacturer has it (root + intermediate), and device certificates
(CN = registration id) issued from it, with their keys in the forms a device may be given."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from host_tools.provisioning.certificates import (
    Issued,
    PkiError,
    authority_key_id,
    cert_builder,
    chain_below,
    end_entity_key_usage,
    make_intermediate,
    new_key,
    subject_name,
    unique_name,
)
from host_tools.provisioning.pki_files import atomic_write, ensure_child, ensure_root, folder_lock, load_issued

DEVICE_DAYS = 365
KEY_TYPES = ("ec", "rsa")
KEY_FORMATS = ("pkcs8", "sec1", "pkcs1")  # sec1 for EC keys, pkcs1 for RSA keys ("traditional" OpenSSL forms)
X509_FILES = {
    "x509_root": "x509-root.pem",
    "x509_root_key": "x509-root-key.pem",
    "x509_intermediate": "x509-intermediate.pem",
    "x509_intermediate_key": "x509-intermediate-key.pem",
}


def new_device_key(key_type: str = "ec"):
    """EC P-256 (the default: small, fast on a microcontroller) or RSA 2048."""
    if key_type == "ec":
        return new_key()
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise PkiError(f"key type {key_type!r}: use one of {', '.join(KEY_TYPES)}")


def make_device_cert(
    issuer: Issued,
    registration_id: str,
    key_type: str = "ec",
    days: int = DEVICE_DAYS,
    valid_from: dt.datetime | None = None,
    valid_until: dt.datetime | None = None,
    key=None,
) -> Issued:
    """A TLS client certificate whose CN is the registration id (DPS and IoT Hub take the device's identity from
    it). The chain is what the device sends after it: the issuer when it is an intermediate, and its own chain."""
    key = key or new_device_key(key_type)
    builder = cert_builder(
        subject_name(registration_id, unit="device"),
        issuer.cert.subject,
        key.public_key(),
        days,
        valid_from,
        valid_until,
    )
    cert = (
        builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(end_entity_key_usage(key), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(authority_key_id(issuer), critical=False)
        .sign(issuer.key, hashes.SHA256())
    )
    return Issued(cert, key, chain=chain_below(issuer))


def private_key_bytes(key, key_format: str = "pkcs8", encoding: str = "pem") -> bytes:
    """An unencrypted private key in PKCS#8, SEC1 (EC) or PKCS#1 (RSA) form, PEM or DER."""
    if key_format not in KEY_FORMATS:
        raise PkiError(f"key format {key_format!r}: use one of {', '.join(KEY_FORMATS)}")
    is_rsa = isinstance(key, rsa.RSAPrivateKey)
    if (key_format == "sec1" and is_rsa) or (key_format == "pkcs1" and not is_rsa):
        raise PkiError(f"key format {key_format} does not fit an {'RSA' if is_rsa else 'EC'} key")
    fmt = serialization.PrivateFormat.PKCS8 if key_format == "pkcs8" else serialization.PrivateFormat.TraditionalOpenSSL
    enc = serialization.Encoding.PEM if encoding == "pem" else serialization.Encoding.DER
    return key.private_bytes(enc, fmt, serialization.NoEncryption())


def write_device_files(
    issued: Issued, cert_path: Path, key_path: Path, key_format: str = "pkcs8", encoding: str = "pem"
) -> None:
    """The device certificate followed by its intermediates (PEM, or concatenated DER), and its key (mode 0600)."""
    certs = [issued.cert] + list(issued.chain)
    if encoding == "pem":
        data = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    else:
        data = b"".join(c.public_bytes(serialization.Encoding.DER) for c in certs)
    atomic_write(Path(key_path), private_key_bytes(issued.key, key_format, encoding), private=True)
    atomic_write(Path(cert_path), data)


@dataclass(frozen=True)
class X509GroupCa:
    """An enrollment-group CA as a manufacturer has it: a root and an intermediate that signs device certificates."""

    folder: Path
    root: Path
    root_key: Path
    intermediate: Path
    intermediate_key: Path
    actions: dict = field(default_factory=dict, compare=False)

    def load_intermediate(self) -> Issued:
        return load_issued(self.intermediate, self.intermediate_key)

    def load_root(self) -> Issued:
        return load_issued(self.root, self.root_key)


def ensure_x509_group_ca(folder: str | os.PathLike) -> X509GroupCa:
    """Create (or reuse) x509-root.pem and x509-intermediate.pem (+ keys) in `folder`. The intermediate file holds
    only the intermediate; devices send it after their own certificate."""
    folder = Path(folder)
    paths = {name: folder / file_name for name, file_name in X509_FILES.items()}
    actions: dict[str, str] = {}
    with folder_lock(folder):
        root, root_new = ensure_root(paths, "x509_root", "azprov X.509 group root", actions)
        ensure_child(
            paths,
            "x509_intermediate",
            root,
            root_new,
            actions,
            lambda: make_intermediate(root, unique_name("azprov X.509 group intermediate")),
        )
    return X509GroupCa(
        folder=folder,
        root=paths["x509_root"],
        root_key=paths["x509_root_key"],
        intermediate=paths["x509_intermediate"],
        intermediate_key=paths["x509_intermediate_key"],
        actions=actions,
    )


def issue_device(
    ca: X509GroupCa,
    registration_id: str,
    out_dir: Path,
    key_type: str = "ec",
    key_format: str = "pkcs8",
    encoding: str = "pem",
    **cert_options,
) -> tuple[Path, Path]:
    """A device certificate under the group CA's intermediate, written as <id>.pem (device + intermediate) and
    <id>-key.pem (or .der files). Returns (certificate file, key file)."""
    suffix = "pem" if encoding == "pem" else "der"
    issued = make_device_cert(ca.load_intermediate(), registration_id, key_type, **cert_options)
    cert_path = Path(out_dir) / f"{registration_id}.{suffix}"
    key_path = Path(out_dir) / f"{registration_id}-key.{suffix}"
    write_device_files(issued, cert_path, key_path, key_format, encoding)
    return cert_path, key_path
