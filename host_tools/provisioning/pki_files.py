"""PKI files on disk: certificates and keys loaded (a key must match its certificate), written whole (key files
mode 0600), and reused while still valid (the create-or-reuse steps `ensure_emulator_pki` and
`ensure_x509_group_ca` share, under a folder lock)."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from host_tools.provisioning.certificates import (
    BACKDATE,
    Issued,
    PkiError,
    is_self_signed,
    issued_by,
    key_kind,
    make_root,
    split_hosts,
    unique_name,
    utc_now,
)
from host_tools.secret_files import write_secret

# Reissue anything that would expire within this margin rather than hand out a nearly dead certificate.
RENEW_MARGIN = dt.timedelta(days=7)


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
        later = [
            i
            for i, c in enumerate(certs[1:], 2)
            if c.public_key().public_numbers() == key.public_key().public_numbers()
        ]
        if later:  # right files, wrong order: say which certificate is the key's
            raise PkiError(
                f"{cert_path}: the certificate of {key_path} is certificate {later[0]} of {len(certs)}; "
                "it must come first, then the certificates that issued it"
            )
        raise PkiError(f"{key_path}: does not belong to {cert_path}")
    return Issued(certs[0], key, chain=certs[1:])


def atomic_write(path: Path, data: bytes, private: bool = False) -> None:
    if private:  # a private key: owner-only file in a folder others cannot write to
        write_secret(path, data)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_issued(issued: Issued, cert_path: Path, key_path: Path, with_chain: bool = False) -> None:
    # Key first: a crash in between leaves a key without a matching certificate, which the next run
    # detects (load_issued checks the pair) and replaces.
    atomic_write(Path(key_path), issued.key_pem(), private=True)
    atomic_write(Path(cert_path), issued.cert_pem(with_chain=with_chain))


def write_bundle(path: str | os.PathLike, certs) -> Path:
    """Write certificates (x509.Certificate or Issued) to one PEM file, in the given order."""
    pem = b"".join((c.cert if isinstance(c, Issued) else c).public_bytes(serialization.Encoding.PEM) for c in certs)
    atomic_write(Path(path), pem)
    return Path(path)


@contextlib.contextmanager
def folder_lock(folder: Path):
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
    now = utc_now()
    return cert.not_valid_before_utc <= now + BACKDATE and cert.not_valid_after_utc - RENEW_MARGIN > now


def _covers(cert: x509.Certificate, names) -> bool:
    dns, ips = split_hosts(names)
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


def ensure_root(
    paths: dict[str, Path], name: str, label: str, actions: dict, kind: str = "p256"
) -> tuple[Issued, bool]:
    existing = _try_load(paths[name], paths[f"{name}_key"])
    if existing is not None and is_self_signed(existing.cert) and key_kind(existing.key) == kind:
        actions[name] = "reused"
        return existing, False
    root = make_root(unique_name(label), kind=kind)
    write_issued(root, paths[name], paths[f"{name}_key"])
    actions[name] = "created"
    return root, True


def ensure_child(
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
