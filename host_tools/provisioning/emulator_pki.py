"""The emulator's PKI: two independent hierarchies, as in a real deployment, in the "lab" profile (P-256 ECDSA
everywhere) or the "azure" one (RSA-2048 servers under RSA-4096 intermediates and roots; see PROFILES).

- the **DPS root** signs the DPS server certificate (stands in for the public roots of the real service);
- a private **trust root** signs an **edge CA** (intermediate), which signs the **gateway server** certificate.
  DPS hands the trust root to devices as the trust bundle; the gateway serves `server + edge CA`.

`ensure_emulator_pki(folder, ...)` creates the files named in docs/design.md, or reuses them when they are
still valid and cover the requested host names (a changed host name reissues only the server certificate, so
devices that already trust the roots keep working).

The profile a folder was made with is recorded in its `profile` file; `ensure_emulator_pki` without a profile
(the emulator) keeps whatever the folder holds, so `pki --profile azure --out STATE/pki` before starting the
emulator makes it serve Azure-shaped chains.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from host_tools.provisioning.certificates import (
    Issued,
    PkiError,
    make_decoy_roots,
    make_intermediate,
    make_server_cert,
    split_hosts,
    unique_name,
)
from host_tools.provisioning.pki_files import (
    atomic_write,
    ensure_child,
    ensure_root,
    folder_lock,
    load_certificates,
    load_issued,
    write_bundle,
    write_issued,
)

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


def write_bundle_with_decoys(pki: EmulatorPki, path: str | os.PathLike, decoys: int = 2) -> Path:
    """A bundle of `decoys` unrelated roots followed by the trust root: only the last one signs the gateway."""
    return write_bundle(path, [d.cert for d in make_decoy_roots(decoys)] + [pki.load_trust_root().cert])


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
    with folder_lock(folder):
        dps_root, dps_root_new = ensure_root(paths, "dps_root", "azprov DPS root", actions, spec.root)
        dps_issuer, dps_issuer_new = dps_root, dps_root_new
        if spec.dps_intermediate:
            dps_issuer, dps_issuer_new = ensure_child(
                paths,
                "dps_ca",
                dps_root,
                dps_root_new,
                actions,
                lambda: make_intermediate(dps_root, unique_name("azprov DPS issuing CA"), kind=spec.intermediate),
                kind=spec.intermediate,
            )
            actions["dps_ca_key"] = actions["dps_ca"]
            extra.update(dps_ca=paths["dps_ca"], dps_ca_key=paths["dps_ca_key"])
        dps_names = server_names(dps_hostname, ip_addresses)
        ensure_child(
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

        trust_root, trust_root_new = ensure_root(paths, "trust_root", "azprov trust root", actions, spec.root)
        edge_ca, edge_ca_new = ensure_child(
            paths,
            "edge_ca",
            trust_root,
            trust_root_new,
            actions,
            lambda: make_intermediate(trust_root, unique_name("azprov edge CA"), kind=spec.intermediate),
            kind=spec.intermediate,
        )
        gateway_names = server_names(gateway_hostname, ip_addresses)
        ensure_child(
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
        atomic_write(folder / PROFILE_MARK, spec.name.encode() + b"\n")
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
    stem = f"gateway-{split_hosts(hostnames)[0][0] if split_hosts(hostnames)[0] else 'ip'}"
    out_cert = Path(out_cert or pki.folder / f"{stem}.pem")
    out_key = Path(out_key or pki.folder / f"{stem}-key.pem")
    write_issued(issued, out_cert, out_key, with_chain=True)
    return out_cert, out_key
