"""Judging a client's X.509 certificate the way DPS and edgeHub do (reference sections A.4 and B.2).

- DPS: the registration id is the device certificate's CN. An individual enrollment matches by the certificate
  itself or its SHA-1/SHA-256 thumbprint; an enrollment group matches when the presented chain (device certificate,
  then the intermediates the device sent) leads to the group's CA certificate (a root or an intermediate). The
  individual enrollment of a registration id is tried first and decides alone.
- edgeHub: thumbprint authentication (SHA-1 or SHA-256, what DPS-provisioned X.509 devices get) or CA
  authentication (CN equals the device id, the chain validates to the CA, the certificate is not a CA).
Every check also needs the certificates to be within their dates. Reasons are short sentences for the log.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID


class CertificateProblem(ValueError):
    """The presented certificate does not authenticate the client; the message says why."""


def load_certificate_file(path: Path) -> list[x509.Certificate]:
    """Every certificate in a PEM file, or the one certificate of a DER file."""
    data = Path(path).read_bytes()
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


def thumbprints(certificate: x509.Certificate) -> set[str]:
    """SHA-1 and SHA-256 thumbprints (upper-case hex) of a certificate's DER bytes."""
    der = certificate.public_bytes(Encoding.DER)
    return {hashlib.sha1(der).hexdigest().upper(), hashlib.sha256(der).hexdigest().upper()}


def normalise_thumbprint(text: str) -> str:
    return text.replace(":", "").replace(" ", "").upper()


def common_name(certificate: x509.Certificate) -> str | None:
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def is_ca(certificate: x509.Certificate) -> bool:
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    if certificate.issuer != issuer.subject:
        return False
    try:
        certificate.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def check_dates(certificate: x509.Certificate, what: str, now: dt.datetime | None = None) -> None:
    now = now or dt.datetime.now(dt.UTC)
    if certificate.not_valid_after_utc < now:
        raise CertificateProblem(f"{what} expired at {certificate.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}")
    if certificate.not_valid_before_utc > now:
        raise CertificateProblem(f"{what} is not valid before {certificate.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}")


def check_device_certificate(presented: list[x509.Certificate], identity: str, label: str) -> x509.Certificate:
    """The device certificate, after checking that it exists, is in its dates, is not a CA and has `identity` as CN."""
    if not presented:
        raise CertificateProblem("no client certificate was presented")
    device = presented[0]
    check_dates(device, "the device certificate")
    if is_ca(device):
        raise CertificateProblem("the device certificate is a CA certificate")
    cn = common_name(device)
    if cn != identity:
        raise CertificateProblem(f"certificate CN {cn!r} differs from the {label} {identity!r}")
    return device


def chain_reaches(presented: list[x509.Certificate], anchor: x509.Certificate) -> None:
    """Raises CertificateProblem unless the device certificate, through the intermediates the client sent, was
    issued under `anchor` (itself possibly an intermediate)."""
    check_dates(anchor, "the enrollment's CA certificate")
    current = presented[0]
    pool = list(presented[1:])
    while True:
        if current == anchor or _issued_by(current, anchor):
            return
        step = next((c for c in pool if _issued_by(current, c)), None)
        if step is None:
            raise CertificateProblem(
                f"the chain from {common_name(current)!r} does not reach the CA {common_name(anchor)!r}"
                " (another CA, or an intermediate not sent)"
            )
        if not is_ca(step):
            raise CertificateProblem(f"{common_name(step)!r} in the chain is not a CA certificate")
        check_dates(step, f"intermediate {common_name(step)!r}")
        pool.remove(step)
        current = step
