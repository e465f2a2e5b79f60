"""The DPS CA file: the public roots Azure DPS server certificates chain to, picked from certifi's bundle."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from host_tools.provisioning.validation import ProvisioningFileError

# Roots Azure DPS server certificates chain to, by subject common name. The Baltimore root expired in May 2025 and
# has left certifi's bundle; it is taken when present, for old certifi versions and legacy endpoints.
DPS_PUBLIC_ROOTS: tuple[tuple[str, bool], ...] = (
    ("DigiCert Global Root G2", True),
    ("DigiCert Global Root G3", True),
    ("Microsoft RSA Root Certificate Authority 2017", True),
    ("Microsoft ECC Root Certificate Authority 2017", True),
    ("Baltimore CyberTrust Root", False),
)

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.S)


def _common_name(pem: bytes) -> str | None:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    with warnings.catch_warnings():  # some old roots in the bundle have non-RFC serials; only the name matters here
        warnings.simplefilter("ignore")
        cert = x509.load_pem_x509_certificate(pem)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return names[0].value if names else None


def public_dps_roots(bundle: Path | None = None) -> list[tuple[str, bytes]]:
    """(subject CN, PEM) of each DPS root found in certifi's bundle (or `bundle`), in DPS_PUBLIC_ROOTS order."""
    if bundle is None:
        import certifi

        bundle = Path(certifi.where())
    by_name: dict[str, bytes] = {}
    for match in _PEM_CERT.finditer(Path(bundle).read_bytes()):
        pem = match.group(0).replace(b"\r\n", b"\n")
        name = _common_name(pem)
        if name:
            by_name.setdefault(name, pem)
    roots = []
    for name, required in DPS_PUBLIC_ROOTS:
        if name in by_name:
            roots.append((name, by_name[name]))
        elif required:
            raise ProvisioningFileError(f"{bundle}: no '{name}' certificate in the CA bundle (update certifi)")
    return roots


def public_dps_roots_pem(bundle: Path | None = None) -> str:
    return "".join(f"# {name}\n{pem.decode('ascii')}\n" for name, pem in public_dps_roots(bundle))


def pem_certificates(path: Path) -> list[bytes]:
    return [m.group(0) for m in _PEM_CERT.finditer(Path(path).read_bytes())]
