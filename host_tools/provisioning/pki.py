"""Test and demo PKI, made with `cryptography`: P-256 ECDSA by default ("lab" profile), or shaped like Azure's
("azure" profile: RSA-2048 servers under RSA-4096 intermediates and RSA-4096 roots; see PROFILES).

Two independent hierarchies, as in a real deployment:

- the **DPS root** signs the DPS server certificate (stands in for the public roots of the real service);
- a private **trust root** signs an **edge CA** (intermediate), which signs the **gateway server** certificate.
  DPS hands the trust root to devices as the trust bundle; the gateway serves `server + edge CA`.

`ensure_emulator_pki(folder, ...)` creates the files named in docs/design.md, or reuses them when they are
still valid and cover the requested host names (a changed host name reissues only the server certificate, so
devices that already trust the roots keep working). The building blocks (`make_root`, `make_intermediate`,
`make_server_cert`, `make_decoy_roots`, `write_bundle`) are public for tests that need unusual chains.

The profile a folder was made with is recorded in its `profile` file; `ensure_emulator_pki` without a profile
(the emulator) keeps whatever the folder holds, so `pki --profile azure --out STATE/pki` before starting the
emulator makes it serve Azure-shaped chains.

Keys are written unencrypted with mode 0600: this is test PKI, never use it for production devices.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import click
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ORGANIZATION = "azprov test PKI"
ROOT_DAYS = 3650
INTERMEDIATE_DAYS = 3650
SERVER_DAYS = 825
# Reissue anything that would expire within this margin rather than hand out a nearly dead certificate.
RENEW_MARGIN = dt.timedelta(days=7)
# Backdate notBefore so a device whose clock lags a little still accepts a fresh certificate.
BACKDATE = dt.timedelta(hours=1)

# File names (docs/design.md); the *-key.pem files of the CAs are extras so the set can be extended later.
FILES = {
    "dps_root": "dps-root.pem",
    "dps_root_key": "dps-root-key.pem",
    "dps_server": "dps-server.pem",
    "dps_server_key": "dps-server-key.pem",
    "trust_root": "trust-root.pem",
    "trust_root_key": "trust-root-key.pem",
    "edge_ca": "edge-ca.pem",
    "edge_ca_key": "edge-ca-key.pem",
    "gateway_server": "gateway-server.pem",
    "gateway_server_key": "gateway-server-key.pem",
}
# Files only the azure profile has: the intermediate between the DPS root and the DPS server (Azure's endpoints are
# served by an issuing CA under a root), and a trust bundle of several roots.
PROFILE_FILES = {
    "dps_ca": "dps-ca.pem",
    "dps_ca_key": "dps-ca-key.pem",
    "trust_bundle": "trust-bundle.pem",
}
PROFILE_MARK = "profile"


@dataclass(frozen=True)
class Profile:
    """Key kinds of a PKI: roots, intermediates (edge CA, DPS issuing CA), TLS servers."""

    name: str
    root: str
    intermediate: str
    server: str
    dps_intermediate: bool  # DPS's server certificate is issued by an intermediate (sent in its chain)
    bundle_roots: int  # trust-bundle.pem: this many roots, the trust root last (0: no such file)
    description: str


PROFILES = {
    "lab": Profile("lab", "p256", "p256", "p256", False, 0, "P-256 ECDSA everywhere (the default)"),
    "azure": Profile(
        "azure",
        "rsa4096",
        "rsa4096",
        "rsa2048",
        True,
        3,
        "as Azure's endpoints: RSA-2048 servers under RSA-4096 intermediates and RSA-4096 roots; "
        "trust-bundle.pem holds 3 RSA-4096 roots",
    ),
}
DEFAULT_PROFILE = "lab"
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


@dataclass(frozen=True)
class EmulatorPki:
    """Paths of the emulator's PKI files, plus what `ensure_emulator_pki` did to each (created/reused/reissued)."""

    folder: Path
    dps_root: Path
    dps_root_key: Path
    dps_server: Path
    dps_server_key: Path
    trust_root: Path
    trust_root_key: Path
    edge_ca: Path
    edge_ca_key: Path
    gateway_server: Path
    gateway_server_key: Path
    actions: dict = field(default_factory=dict, compare=False)
    profile: str = DEFAULT_PROFILE
    dps_ca: Path | None = None  # azure profile only
    dps_ca_key: Path | None = None
    trust_bundle: Path | None = None  # azure profile only: several roots, the trust root last

    def paths(self) -> dict[str, str]:
        """name -> path, for emulator.json (every file, keys included: the emulator is local test gear)."""
        names = list(FILES) + [n for n in PROFILE_FILES if getattr(self, n) is not None]
        return {name: str(getattr(self, name)) for name in names}

    def trust_root_pem(self) -> str:
        return self.trust_root.read_text()

    def dps_root_pem(self) -> str:
        return self.dps_root.read_text()

    def load_trust_root(self) -> Issued:
        return load_issued(self.trust_root, self.trust_root_key)

    def load_edge_ca(self) -> Issued:
        issued = load_issued(self.edge_ca, self.edge_ca_key)
        return issued

    def load_dps_root(self) -> Issued:
        return load_issued(self.dps_root, self.dps_root_key)


# --------------------------------------------------------------------------------------------- building blocks


def _now() -> dt.datetime:
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


def _name(common_name: str, unit: str = "test") -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _unique(label: str) -> str:
    # A short random suffix keeps roots made in different folders (or decoys) distinguishable by subject.
    return f"{label} {secrets.token_hex(3)}"


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key, days: int, not_before=None, not_after=None
) -> x509.CertificateBuilder:
    now = _now()
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


def _authority_key_id(issuer: Issued) -> x509.AuthorityKeyIdentifier:
    return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key())


def make_root(common_name: str | None = None, days: int = ROOT_DAYS, unit: str = "test", kind: str = "p256") -> Issued:
    """A self-signed CA certificate with a key of `kind` (see new_key)."""
    key = new_key(kind)
    name = _name(common_name or _unique("azprov root"), unit)
    cert = (
        _builder(name, name, key.public_key(), days)
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
        _builder(_name(common_name or _unique("azprov intermediate")), issuer.cert.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(_authority_key_id(issuer), critical=False)
        .sign(issuer.key, hashes.SHA256())
    )
    # What a server under this CA must send after its own certificate: this CA's issuers up to (not incl.) the root.
    return Issued(cert, key, chain=[] if is_self_signed(issuer.cert) else [issuer.cert] + list(issuer.chain))


def _split_hosts(names) -> tuple[list[str], list[ipaddress._BaseAddress]]:
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
    dns, ips = _split_hosts(list(hostnames) + list(ip_addresses))
    if not dns and not ips:
        raise PkiError("a server certificate needs at least one host name or IP address")
    key = new_key(kind)
    rsa_key = isinstance(key, rsa.RSAPrivateKey)
    sans = [x509.DNSName(n) for n in dns] + [x509.IPAddress(i) for i in ips]
    cert = (
        _builder(
            _name(common_name or (dns[0] if dns else str(ips[0])), unit="server"),
            issuer.cert.subject,
            key.public_key(),
            days,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=rsa_key,  # as on Azure's RSA server certificates
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(_authority_key_id(issuer), critical=False)
        .sign(issuer.key, hashes.SHA256())
    )
    chain: list[x509.Certificate] = []
    if include_issuer_in_chain and not is_self_signed(issuer.cert):
        chain = [issuer.cert] + list(issuer.chain)  # the issuer's `chain` is its own path up to the root
    return Issued(cert, key, chain=chain)


def make_decoy_roots(count: int, label: str = "decoy root", kind: str = "p256") -> list[Issued]:
    """Unrelated self-signed roots, e.g. to pad a trust bundle around the one root that matters ("rsa4096": the size
    of the public roots a real bundle holds)."""
    return [make_root(_unique(f"azprov {label} {i + 1}"), kind=kind) for i in range(count)]


def make_root_chain(length: int) -> list[Issued]:
    """`length` CAs, each signing the next: [root, intermediate 1, ...]."""
    chain = [make_root()]
    for i in range(1, length):
        chain.append(make_intermediate(chain[-1], _unique(f"azprov intermediate {i}")))
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


# --------------------------------------------------------------------------------------------- X.509 devices

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
    builder = _builder(
        _name(registration_id, unit="device"), issuer.cert.subject, key.public_key(), days, valid_from, valid_until
    )
    cert = (
        builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=isinstance(key, rsa.RSAPrivateKey),
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
        .add_extension(_authority_key_id(issuer), critical=False)
        .sign(issuer.key, hashes.SHA256())
    )
    chain = [] if is_self_signed(issuer.cert) else [issuer.cert] + list(issuer.chain)
    return Issued(cert, key, chain=chain)


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
    _atomic_write(Path(key_path), private_key_bytes(issued.key, key_format, encoding), private=True)
    _atomic_write(Path(cert_path), data)


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
    with _folder_lock(folder):
        root, root_new = _ensure_root(paths, "x509_root", "azprov X.509 group root", actions)
        _ensure_child(
            paths,
            "x509_intermediate",
            root,
            root_new,
            actions,
            lambda: make_intermediate(root, _unique("azprov X.509 group intermediate")),
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


# --------------------------------------------------------------------------------------------- files


def load_certificates(path: str | os.PathLike) -> list[x509.Certificate]:
    """Every certificate in a PEM file, in order."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PkiError(f"{path}: cannot read ({exc.strerror})") from exc
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise PkiError(f"{path}: not a PEM certificate file ({exc})") from exc
    return certs


def load_issued(cert_path: str | os.PathLike, key_path: str | os.PathLike) -> Issued:
    """A certificate file (first certificate = the subject, the rest = its chain) and its key file."""
    certs = load_certificates(cert_path)
    try:
        key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise PkiError(f"{key_path}: not a usable unencrypted PEM private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise PkiError(f"{key_path}: not an EC or RSA private key")
    if key.public_key().public_numbers() != certs[0].public_key().public_numbers():
        raise PkiError(f"{key_path}: does not belong to {cert_path}")
    return Issued(certs[0], key, chain=certs[1:])


def _atomic_write(path: Path, data: bytes, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o600 if private else 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_issued(issued: Issued, cert_path: Path, key_path: Path, with_chain: bool = False) -> None:
    # Key first: a crash in between leaves a key without a matching certificate, which the next run
    # detects (load_issued checks the pair) and replaces.
    _atomic_write(Path(key_path), issued.key_pem(), private=True)
    _atomic_write(Path(cert_path), issued.cert_pem(with_chain=with_chain))


def write_bundle(path: str | os.PathLike, certs) -> Path:
    """Write certificates (x509.Certificate or Issued) to one PEM file, in the given order."""
    pem = b"".join((c.cert if isinstance(c, Issued) else c).public_bytes(serialization.Encoding.PEM) for c in certs)
    _atomic_write(Path(path), pem)
    return Path(path)


def write_bundle_with_decoys(pki: EmulatorPki, path: str | os.PathLike, decoys: int = 2) -> Path:
    """A bundle of `decoys` unrelated roots followed by the trust root: only the last one signs the gateway."""
    return write_bundle(path, [d.cert for d in make_decoy_roots(decoys)] + [pki.load_trust_root().cert])


# --------------------------------------------------------------------------------------------- create or reuse


@contextlib.contextmanager
def _folder_lock(folder: Path):
    """Serialize concurrent creators (parallel test workers, two emulators) on one folder."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not on POSIX: no cross-process lock, creation is still atomic per file
        yield
        return
    with open(folder / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _usable(cert: x509.Certificate) -> bool:
    now = _now()
    return cert.not_valid_before_utc <= now + BACKDATE and cert.not_valid_after_utc - RENEW_MARGIN > now


def _covers(cert: x509.Certificate, names) -> bool:
    dns, ips = _split_hosts(names)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have_dns = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
    have_ips = set(san.get_values_for_type(x509.IPAddress))
    return all(n.lower() in have_dns for n in dns) and all(i in have_ips for i in ips)


def _try_load(cert_path: Path, key_path: Path) -> Issued | None:
    if not cert_path.exists() or not key_path.exists():
        return None
    try:
        issued = load_issued(cert_path, key_path)
    except PkiError:
        return None
    return issued if _usable(issued.cert) else None


def _ensure_root(
    paths: dict[str, Path], name: str, label: str, actions: dict, kind: str = "p256"
) -> tuple[Issued, bool]:
    existing = _try_load(paths[name], paths[f"{name}_key"])
    if existing is not None and is_self_signed(existing.cert) and key_kind(existing.key) == kind:
        actions[name] = "reused"
        return existing, False
    root = make_root(_unique(label), kind=kind)
    write_issued(root, paths[name], paths[f"{name}_key"])
    actions[name] = "created"
    return root, True


def _ensure_child(
    paths,
    name: str,
    issuer: Issued,
    issuer_changed: bool,
    actions: dict,
    make,
    names=None,
    with_chain: bool = False,
    kind: str | None = None,
) -> tuple[Issued, bool]:
    existing = None if issuer_changed else _try_load(paths[name], paths[f"{name}_key"])
    ok = (
        existing is not None
        and (kind is None or key_kind(existing.key) == kind)
        and issued_by(existing.cert, issuer.cert)
        and (names is None or _covers(existing.cert, names))
        and (not with_chain or existing.chain[:1] == [issuer.cert])
    )
    if ok:
        actions[name] = "reused"
        return existing, False
    actions[name] = "created" if not paths[name].exists() else "reissued"
    issued = make()
    write_issued(issued, paths[name], paths[f"{name}_key"], with_chain=with_chain)
    return issued, True


def server_names(hostname: str, ip_addresses=()) -> list[str]:
    """What a server certificate covers: the requested host, `localhost`, 127.0.0.1 and extra addresses."""
    return list(dict.fromkeys([hostname, "localhost", "127.0.0.1", *map(str, ip_addresses)]))


def folder_profile(folder: str | os.PathLike) -> str:
    """The profile a PKI folder was made with (its `profile` file), "lab" when it has none."""
    mark = Path(folder) / PROFILE_MARK
    name = mark.read_text().strip() if mark.is_file() else DEFAULT_PROFILE
    return name if name in PROFILES else DEFAULT_PROFILE


def ensure_emulator_pki(
    folder: str | os.PathLike,
    dps_hostname: str = "localhost",
    gateway_hostname: str = "localhost",
    ip_addresses=(),
    profile: str | None = None,
) -> EmulatorPki:
    """Create the emulator's PKI in `folder`, or reuse what is there and still fits.

    Reuse keeps a root as long as it parses, matches its key, has the profile's key kind and is not about to
    expire; a child is reused only if its issuer was reused and signed it; a server certificate must also cover the
    host names asked for. `profile` None keeps the folder's profile (see folder_profile).
    """
    folder = Path(folder)
    if profile is not None and profile not in PROFILES:
        raise PkiError(f"PKI profile {profile!r}: use one of {', '.join(PROFILES)}")
    spec = PROFILES[profile or folder_profile(folder)]
    paths = {name: folder / file_name for name, file_name in {**FILES, **PROFILE_FILES}.items()}
    actions: dict[str, str] = {}
    extra: dict[str, Path] = {}
    with _folder_lock(folder):
        dps_root, dps_root_new = _ensure_root(paths, "dps_root", "azprov DPS root", actions, spec.root)
        dps_issuer, dps_issuer_new = dps_root, dps_root_new
        if spec.dps_intermediate:
            dps_issuer, dps_issuer_new = _ensure_child(
                paths,
                "dps_ca",
                dps_root,
                dps_root_new,
                actions,
                lambda: make_intermediate(dps_root, _unique("azprov DPS issuing CA"), kind=spec.intermediate),
                kind=spec.intermediate,
            )
            actions["dps_ca_key"] = actions["dps_ca"]
            extra.update(dps_ca=paths["dps_ca"], dps_ca_key=paths["dps_ca_key"])
        dps_names = server_names(dps_hostname, ip_addresses)
        _ensure_child(
            paths,
            "dps_server",
            dps_issuer,
            dps_issuer_new,
            actions,
            lambda: make_server_cert(dps_issuer, dps_names, kind=spec.server),
            names=dps_names,
            with_chain=spec.dps_intermediate,
            kind=spec.server,
        )
        actions["dps_root_key"] = actions["dps_root"]
        actions["dps_server_key"] = actions["dps_server"]

        trust_root, trust_root_new = _ensure_root(paths, "trust_root", "azprov trust root", actions, spec.root)
        edge_ca, edge_ca_new = _ensure_child(
            paths,
            "edge_ca",
            trust_root,
            trust_root_new,
            actions,
            lambda: make_intermediate(trust_root, _unique("azprov edge CA"), kind=spec.intermediate),
            kind=spec.intermediate,
        )
        gateway_names = server_names(gateway_hostname, ip_addresses)
        _ensure_child(
            paths,
            "gateway_server",
            edge_ca,
            edge_ca_new,
            actions,
            lambda: make_server_cert(edge_ca, gateway_names, kind=spec.server),
            names=gateway_names,
            with_chain=True,
            kind=spec.server,
        )
        for name in ("trust_root", "edge_ca", "gateway_server"):
            actions[f"{name}_key"] = actions[name]
        if spec.bundle_roots:
            actions["trust_bundle"] = _ensure_trust_bundle(paths["trust_bundle"], trust_root, spec)
            extra["trust_bundle"] = paths["trust_bundle"]
        _atomic_write(folder / PROFILE_MARK, spec.name.encode() + b"\n")
    return EmulatorPki(folder=folder, actions=actions, profile=spec.name, **{n: paths[n] for n in FILES}, **extra)


def _ensure_trust_bundle(path: Path, trust_root: Issued, spec: Profile) -> str:
    """trust-bundle.pem: spec.bundle_roots roots of the profile's kind, the trust root last (the one that signs the
    gateway, as in the tests' decoy bundles)."""
    with contextlib.suppress(PkiError):
        certs = load_certificates(path) if path.exists() else []
        if len(certs) == spec.bundle_roots and certs[-1] == trust_root.cert:
            return "reused"
    action = "reissued" if path.exists() else "created"
    decoys = make_decoy_roots(spec.bundle_roots - 1, label="public root", kind=spec.root)
    write_bundle(path, [d.cert for d in decoys] + [trust_root.cert])
    return action


def reissue_gateway_cert(
    pki: EmulatorPki, hostnames, ip_addresses=(), out_cert: Path | None = None, out_key: Path | None = None
) -> tuple[Path, Path]:
    """A new gateway server certificate (server + edge CA chain) for other host names, under the same edge CA.
    Written to `out_cert`/`out_key` (default: next to the PKI as gateway-<first name>.pem), never over the
    emulator's own files."""
    edge_ca = pki.load_edge_ca()
    issued = make_server_cert(edge_ca, list(hostnames), ip_addresses)
    stem = f"gateway-{_split_hosts(hostnames)[0][0] if _split_hosts(hostnames)[0] else 'ip'}"
    out_cert = Path(out_cert or pki.folder / f"{stem}.pem")
    out_key = Path(out_key or pki.folder / f"{stem}-key.pem")
    write_issued(issued, out_cert, out_key, with_chain=True)
    return out_cert, out_key


# --------------------------------------------------------------------------------------------- CLI

_DESCRIPTIONS = {
    "dps_root": "DPS root (devices' dps_ca_file)",
    "dps_server": "DPS server certificate",
    "trust_root": "trust root (the trust bundle DPS hands out)",
    "edge_ca": "edge CA (IoT Edge [edge_ca] cert)",
    "edge_ca_key": "edge CA key (IoT Edge [edge_ca] pk)",
    "gateway_server": "gateway server cert + edge CA chain",
    "gateway_server_key": "gateway server key",
    "dps_ca": "DPS issuing CA (azure profile; served in the DPS chain)",
    "trust_bundle": "trust bundle of several roots, trust root last (azure profile)",
}


@click.command("pki")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the PKI files (created if absent; valid files in it are reused).",
)
@click.option("--gateway-host", help="Host name devices use to reach the gateway (goes into the SAN).")
@click.option("--ip", "ips", multiple=True, help="Extra IP address for the server certificates' SAN (repeatable).")
@click.option("--dps-host", default="localhost", show_default=True, help="Host name of the (emulated) DPS.")
@click.option(
    "--profile",
    type=click.Choice(sorted(PROFILES)),
    default=DEFAULT_PROFILE,
    show_default=True,
    help="lab: P-256 everywhere. azure: RSA-2048 servers under RSA-4096 intermediates and roots, a 3-root bundle.",
)
@click.option(
    "--x509-group-ca",
    is_flag=True,
    help="Make (or reuse) an X.509 enrollment-group CA: x509-root.pem and x509-intermediate.pem with their keys.",
)
@click.option(
    "--device",
    "devices",
    multiple=True,
    help="Issue a device certificate with this registration id as CN from the group CA's intermediate "
    "(repeatable): <id>.pem (device + intermediate) and <id>-key.pem (mode 0600).",
)
@click.option("--key-type", type=click.Choice(KEY_TYPES), default="ec", show_default=True, help="Device key type.")
def pki_command(
    out_dir: Path,
    gateway_host: str | None,
    ips: tuple[str, ...],
    dps_host: str,
    x509_group_ca: bool,
    devices: tuple[str, ...],
    key_type: str,
    profile: str,
):
    """Write a demo trust root, edge CA and gateway server certificate (plus the emulator's DPS certificates); with
    --x509-group-ca / --device, an X.509 enrollment-group CA (root + intermediate) and device certificates.

    The folder can serve as the emulator's PKI folder (STATE_DIR/pki) and as test material for a lab IoT Edge
    gateway: edge-ca.pem / edge-ca-key.pem as its edge CA, trust-root.pem as its trust bundle."""
    from rich.console import Console

    if not gateway_host and not x509_group_ca and not devices:
        raise click.UsageError("give --gateway-host (gateway PKI), --x509-group-ca or --device (X.509 devices)")
    if x509_group_ca or devices:
        _x509_command(out_dir, devices, key_type, Console(width=max(Console().width, 120)))
    if gateway_host:
        _gateway_pki_command(out_dir, gateway_host, ips, dps_host, profile)


def _x509_command(out_dir: Path, devices, key_type: str, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    try:
        ca = ensure_x509_group_ca(out_dir)
        issued = [(device, *issue_device(ca, device, out_dir, key_type)) for device in devices]
    except (PkiError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    table = Table(title=f"X.509 enrollment-group CA and devices in {ca.folder}")
    for column in ("file", "what", "subject", "expires", "action"):
        table.add_column(column, no_wrap=column != "what")
    for name, what in (("root", "group CA root (enrollment group / trust)"), ("intermediate", "intermediate")):
        cert = load_certificates(getattr(ca, name))[0]
        table.add_row(
            getattr(ca, name).name,
            what,
            escape(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value),
            cert.not_valid_after_utc.strftime("%Y-%m-%d"),
            ca.actions.get(f"x509_{name}", ""),
        )
    for device, cert_path, key_path in issued:
        cert = load_certificates(cert_path)[0]
        table.add_row(
            cert_path.name,
            f"device certificate ({key_type})",
            escape(device),
            cert.not_valid_after_utc.strftime("%Y-%m-%d"),
            "created",
        )
        table.add_row(key_path.name, "device private key (0600)", "", "", "created")
    console.print(table)


def _gateway_pki_command(out_dir: Path, gateway_host: str, ips, dps_host: str, profile: str) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    for ip in ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise click.BadParameter(f"{ip!r} is not an IP address", param_hint="--ip") from None
    try:
        pki = ensure_emulator_pki(
            out_dir, dps_hostname=dps_host, gateway_hostname=gateway_host, ip_addresses=ips, profile=profile
        )
    except (PkiError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    from rich import box

    # No vertical rules and the subject under the description: the table fits 80 columns without breaking names.
    table = Table(title=f"PKI in {pki.folder} (profile {pki.profile})", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("file", no_wrap=True)
    table.add_column("what (subject)", ratio=1)
    table.add_column("key", no_wrap=True)
    table.add_column("expires", no_wrap=True)
    table.add_column("action", no_wrap=True)
    for name, description in _DESCRIPTIONS.items():
        path = getattr(pki, name)
        if path is None:
            continue
        if name.endswith("_key"):
            subject, expires, kind = "", "", ""
        else:
            certs = load_certificates(path)
            cert = certs[-1] if name == "trust_bundle" else certs[0]
            subject = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
            expires = cert.not_valid_after_utc.strftime("%Y-%m-%d")
            kind = key_kind(cert.public_key()) + (f" x{len(certs)}" if name == "trust_bundle" else "")
        what = escape(description) + (f"\n[dim]{escape(subject)}[/dim]" if subject else "")
        table.add_row(path.name, what, kind, expires, pki.actions.get(name, ""))
    Console().print(table)
    click.echo(f"profile: {pki.profile} ({PROFILES[pki.profile].description})")
    click.echo(f"gateway certificate covers: {', '.join(server_names(gateway_host, ips))}")
