"""DPS certificate issuance (preview api-version 2025-07-01-preview; docs/emulator.md "Certificate issuance").

An enrollment may name an issuance policy: a CA (certificate and key files) and a validity of 7 to 90 days. A device
that registers with a `csr` (base64 DER PKCS#10) gets `registrationState.issuedCertificateChain`: its operational
certificate (subject CN = registration id, the CSR's public key, clientAuth, a random serial), then the policy's CA.

The CSR is judged here, in this order, each problem with its own errorCode (all answered 400):
400040 not decodable (not a string, not base64, PEM instead of DER, not PKCS#10), 400041 its signature does not
verify, 400042 its key is not EC P-384 (the preview's only key type), 400043 its subject CN is not the registration id.
These codes are the emulator's choice (the service's are not published for DPS; 400040 is the hub path's "CSR could
not be decoded").
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ISSUANCE_API_VERSION = "2025-07-01-preview"
MIN_VALIDITY_DAYS, MAX_VALIDITY_DAYS = 7, 90
DEFAULT_VALIDITY = dt.timedelta(days=30)
# Emulator-only: a validity in seconds (compressed-time renewal tests); overrides validity_days.
MAX_VALIDITY_SECONDS = MAX_VALIDITY_DAYS * 86400
MAX_CSR_CHARS = 16 * 1024  # a P-384 CSR is about 600 base64 characters

CSR_UNDECODABLE = 400040
CSR_BAD_SIGNATURE = 400041
CSR_WRONG_KEY = 400042
CSR_WRONG_SUBJECT = 400043
CSR_ERROR_CODES = {
    CSR_UNDECODABLE: "the csr is not base64 DER PKCS#10",
    CSR_BAD_SIGNATURE: "the csr's signature does not verify",
    CSR_WRONG_KEY: "the csr's key is not EC P-384",
    CSR_WRONG_SUBJECT: "the csr's subject CN is not the registration id",
}


class CsrProblem(ValueError):
    """A CSR DPS refuses: `error_code` is the errorCode of the 400 answer, the message names the problem."""

    def __init__(self, error_code: int, message: str):
        super().__init__(message)
        self.error_code = error_code


class PolicyFileError(ValueError):
    """A policy's CA certificate or key file cannot be used; the message names the file (never a key's bytes),
    `field` the policy's field ("ca_certificate" or "ca_key")."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class IssuancePolicy:
    """An issuing CA and how long what it signs lives. `ca_certificate`/`ca_key` are None when the enrollment file
    was parsed without reading its files."""

    name: str
    validity: dt.timedelta
    ca_certificate: Any = field(default=None, repr=False)
    ca_key: Any = field(default=None, repr=False, compare=False)


def validity_of(spec: dict, default: dt.timedelta | None = None) -> dt.timedelta | None:
    """`validity_seconds` (emulator-only) over `validity_days` over `default`."""
    if "validity_seconds" in spec:
        return dt.timedelta(seconds=spec["validity_seconds"])
    if "validity_days" in spec:
        return dt.timedelta(days=spec["validity_days"])
    return default


def load_policy_ca(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, Any]:
    """The policy's CA certificate (first of a PEM or DER file) and its unencrypted PEM/DER key, which must match
    and be a CA able to sign certificates."""
    try:
        data = cert_path.read_bytes()
    except OSError as exc:
        raise PolicyFileError("ca_certificate", f"cannot read {cert_path} ({exc.strerror})") from None
    try:
        cert = (
            x509.load_pem_x509_certificates(data)[0] if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
        )
    except (ValueError, IndexError):
        raise PolicyFileError("ca_certificate", f"{cert_path} holds no PEM or DER certificate") from None
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = constraints.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise PolicyFileError("ca_certificate", f"{cert_path} is not a CA certificate")
    try:
        key_data = key_path.read_bytes()
    except OSError as exc:
        raise PolicyFileError("ca_key", f"cannot read {key_path} ({exc.strerror})") from None
    try:
        if b"-----BEGIN" in key_data:
            key = serialization.load_pem_private_key(key_data, password=None)
        else:
            key = serialization.load_der_private_key(key_data, password=None)
    except (ValueError, TypeError):
        # Never the key's bytes: only that it is not usable.
        raise PolicyFileError("ca_key", f"{key_path} holds no unencrypted PEM or DER private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise PolicyFileError("ca_key", f"{key_path} is not an EC or RSA private key")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        raise PolicyFileError("ca_key", f"{key_path} is not the key of {cert_path}")
    return cert, key


def parse_csr(text: Any, registration_id: str) -> x509.CertificateSigningRequest:
    """The CSR of a register request, checked as DPS does (see the module docstring); CsrProblem otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise CsrProblem(CSR_UNDECODABLE, "csr must be a non-empty string: base64 DER PKCS#10")
    if len(text) > MAX_CSR_CHARS:
        raise CsrProblem(CSR_UNDECODABLE, f"csr is longer than {MAX_CSR_CHARS} characters")
    if "-----BEGIN" in text:
        raise CsrProblem(CSR_UNDECODABLE, "csr is PEM: send base64 DER without the header and footer")
    compact = "".join(text.split())
    try:
        der = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise CsrProblem(CSR_UNDECODABLE, "csr is not valid base64") from None
    try:
        csr = x509.load_der_x509_csr(der)
        public_key = csr.public_key()
    except (ValueError, TypeError):
        raise CsrProblem(CSR_UNDECODABLE, "csr is not a DER PKCS#10 certificate signing request") from None
    try:
        signed = csr.is_signature_valid
    except (ValueError, TypeError):
        signed = False
    if not signed:
        raise CsrProblem(CSR_BAD_SIGNATURE, "csr signature does not verify with the csr's own key")
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(public_key.curve, ec.SECP384R1):
        raise CsrProblem(CSR_WRONG_KEY, f"csr key is {_key_words(public_key)}; certificate issuance needs EC P-384")
    names = [str(a.value) for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [registration_id]:
        found = "no CN" if not names else ("CN " + ", ".join(repr(n[:70]) for n in names))
        raise CsrProblem(CSR_WRONG_SUBJECT, f"csr subject has {found}; it must be CN={registration_id}")
    return csr


def _key_words(public_key) -> str:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"EC {public_key.curve.name}"
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA {public_key.key_size}"
    return type(public_key).__name__.replace("PublicKey", "").lstrip("_") or "unknown"


def _signature_hash(key) -> hashes.HashAlgorithm:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {384: hashes.SHA384(), 521: hashes.SHA512()}.get(key.curve.key_size, hashes.SHA256())
    return hashes.SHA256()


def issue(
    policy: IssuancePolicy, csr: x509.CertificateSigningRequest, registration_id: str, now: dt.datetime
) -> x509.Certificate:
    """The operational certificate for a checked CSR: CN = registration id, the CSR's key, clientAuth, valid from
    `now` for the policy's validity, signed by the policy's CA."""
    start = now.replace(microsecond=0)
    public_key = csr.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, registration_id)]))
        .issuer_name(policy.ca_certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + policy.validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(policy.ca_key.public_key()), critical=False)
    )
    return builder.sign(policy.ca_key, _signature_hash(policy.ca_key))


def chain_field(leaf: x509.Certificate, policy: IssuancePolicy) -> list[str]:
    """registrationState.issuedCertificateChain: base64 DER, leaf first, then the issuing CA."""
    return [base64.b64encode(c.public_bytes(Encoding.DER)).decode("ascii") for c in (leaf, policy.ca_certificate)]


def issued_record(leaf: x509.Certificate, policy: IssuancePolicy, registration_id: str, device_id: str) -> dict:
    """What issued-certificates.jsonl keeps of an issued certificate (no key: the device's never leaves it)."""
    return {
        "registration_id": registration_id,
        "device_id": device_id,
        "policy": policy.name,
        "serial": format(leaf.serial_number, "X"),
        "subject_cn": registration_id,
        "issuer": policy.ca_certificate.subject.rfc4514_string(),
        "not_before": leaf.not_valid_before_utc.isoformat(),
        "not_after": leaf.not_valid_after_utc.isoformat(),
    }
