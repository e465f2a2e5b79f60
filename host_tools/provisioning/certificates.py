"""Certificates of the test PKI, made with `cryptography`: keys, roots, intermediates, TLS server certificates,
decoy roots, and the checks of who signed what. The building blocks every other PKI module (and tests that need
unusual chains) use."""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ORGANIZATION = "azprov test PKI"
ROOT_DAYS = 3650
INTERMEDIATE_DAYS = 3650
SERVER_DAYS = 825
# Backdate notBefore so a device whose clock lags a little still accepts a fresh certificate.
BACKDATE = dt.timedelta(hours=1)
KEY_KINDS = ("p256", "rsa2048", "rsa4096")


class PkiError(RuntimeError):
    """A certificate or key file could not be used."""


@dataclass
class Issued:
    """A certificate with its private key (and, for server certificates, the chain served after it)."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    chain: list[x509.Certificate] = field(default_factory=list)

    @property
    def subject(self) -> str:
        return self.cert.subject.rfc4514_string()

    def cert_pem(self, with_chain: bool = False) -> bytes:
        certs = [self.cert] + (self.chain if with_chain else [])
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_key(kind: str = "p256") -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    """A private key of `kind`: "p256" (ECDSA), "rsa2048" or "rsa4096"."""
    if kind == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind in ("rsa2048", "rsa4096"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(kind[3:]))
    raise PkiError(f"key kind {kind!r}: use one of {', '.join(KEY_KINDS)}")


def key_kind(key) -> str:
    """ "p256", "rsa2048", "rsa4096" (or a description of another key)."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return "p256" if key.curve.name == "secp256r1" else f"ec-{key.curve.name}"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return f"rsa{key.key_size}"
    return type(key).__name__


def subject_name(common_name: str, unit: str = "test") -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def unique_name(label: str) -> str:
    # A short random suffix keeps roots made in different folders (or decoys) distinguishable by subject.
    return f"{label} {secrets.token_hex(3)}"


def cert_builder(
    subject: x509.Name, issuer: x509.Name, public_key, days: int, not_before=None, not_after=None
) -> x509.CertificateBuilder:
    now = utc_now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - BACKDATE)
        .not_valid_after(not_after or now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def authority_key_id(issuer: Issued) -> x509.AuthorityKeyIdentifier:
    return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key())


def end_entity_key_usage(key) -> x509.KeyUsage:
    """KeyUsage of a TLS server or client certificate: signatures, plus key encipherment for an RSA key (as on
    Azure's RSA server certificates)."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=isinstance(key, rsa.RSAPrivateKey),
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def chain_below(issuer: Issued) -> list[x509.Certificate]:
    """What a certificate issued by `issuer` is sent with after itself: the issuer when it is an intermediate (not a
    self-signed root), then the issuer's own chain up to the root."""
    return [] if is_self_signed(issuer.cert) else [issuer.cert] + list(issuer.chain)


def make_root(common_name: str | None = None, days: int = ROOT_DAYS, unit: str = "test", kind: str = "p256") -> Issued:
    """A self-signed CA certificate with a key of `kind` (see new_key)."""
    key = new_key(kind)
    name = subject_name(common_name or unique_name("azprov root"), unit)
    cert = (
        cert_builder(name, name, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def make_intermediate(
    issuer: Issued,
    common_name: str | None = None,
    days: int = INTERMEDIATE_DAYS,
    path_length: int | None = None,
    kind: str = "p256",
) -> Issued:
    """A CA certificate signed by `issuer` (for example the edge CA under the trust root)."""
    key = new_key(kind)
    cert = (
        cert_builder(
            subject_name(common_name or unique_name("azprov intermediate")), issuer.cert.subject, key.public_key(), days
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(authority_key_id(issuer), critical=False)
        .sign(issuer.key, hashes.SHA256())
    )
    # What a server under this CA must send after its own certificate: this CA's issuers up to (not incl.) the root.
    return Issued(cert, key, chain=chain_below(issuer))


def split_hosts(names) -> tuple[list[str], list[ipaddress._BaseAddress]]:
    dns, ips = [], []
    for name in names:
        try:
            ips.append(ipaddress.ip_address(str(name)))
        except ValueError:
            dns.append(str(name))
    return list(dict.fromkeys(dns)), list(dict.fromkeys(ips))


def make_server_cert(
    issuer: Issued,
    hostnames,
    ip_addresses=(),
    common_name: str | None = None,
    days: int = SERVER_DAYS,
    include_issuer_in_chain: bool = True,
    kind: str = "p256",
) -> Issued:
    """A TLS server certificate for `hostnames` (IP literals among them become IP SANs, as do `ip_addresses`).

    The returned chain is what the server should send after its own certificate: the issuer when it is an
    intermediate (not a self-signed root), plus the issuer's own chain."""
    dns, ips = split_hosts(list(hostnames) + list(ip_addresses))
    if not dns and not ips:
        raise PkiError("a server certificate needs at least one host name or IP address")
    key = new_key(kind)
    sans = [x509.DNSName(n) for n in dns] + [x509.IPAddress(i) for i in ips]
    cert = (
        cert_builder(
            subject_name(common_name or (dns[0] if dns else str(ips[0])), unit="server"),
            issuer.cert.subject,
            key.public_key(),
            days,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(end_entity_key_usage(key), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(authority_key_id(issuer), critical=False)
        .sign(issuer.key, hashes.SHA256())
    )
    return Issued(cert, key, chain=chain_below(issuer) if include_issuer_in_chain else [])


def make_decoy_roots(count: int, label: str = "decoy root", kind: str = "p256") -> list[Issued]:
    """Unrelated self-signed roots, e.g. to pad a trust bundle around the one root that matters ("rsa4096": the size
    of the public roots a real bundle holds)."""
    return [make_root(unique_name(f"azprov {label} {i + 1}"), kind=kind) for i in range(count)]


def make_root_chain(length: int) -> list[Issued]:
    """`length` CAs, each signing the next: [root, intermediate 1, ...]."""
    chain = [make_root()]
    for i in range(1, length):
        chain.append(make_intermediate(chain[-1], unique_name(f"azprov intermediate {i}")))
    return chain


def is_self_signed(cert: x509.Certificate) -> bool:
    if cert.subject != cert.issuer:
        return False
    try:
        cert.verify_directly_issued_by(cert)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False
