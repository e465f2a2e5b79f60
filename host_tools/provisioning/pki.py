"""`pki`: the lab PKI for the emulator and a lab IoT Edge gateway (emulator_pki.py), and an X.509
enrollment-group CA with device certificates (x509_group_ca.py).

The PKI's public names are re-exported here, as `host_tools.provisioning.pki`, for the many tests and tools that
use them: certificates.py (building blocks), pki_files.py (load, write, reuse), x509_group_ca.py (X.509 devices),
emulator_pki.py (the emulator's PKI and its profiles).

Keys are written unencrypted with mode 0600: this is test PKI, never use it for production devices.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import click
from cryptography.x509.oid import NameOID

from host_tools.provisioning.certificates import (  # noqa: F401 (re-exported)
    BACKDATE,
    INTERMEDIATE_DAYS,
    KEY_KINDS,
    ORGANIZATION,
    ROOT_DAYS,
    SERVER_DAYS,
    Issued,
    PkiError,
    is_self_signed,
    issued_by,
    key_kind,
    make_decoy_roots,
    make_intermediate,
    make_root,
    make_root_chain,
    make_server_cert,
    new_key,
)
from host_tools.provisioning.emulator_pki import (  # noqa: F401 (re-exported)
    DEFAULT_PROFILE,
    FILES,
    PROFILE_FILES,
    PROFILES,
    EmulatorPki,
    Profile,
    ensure_emulator_pki,
    folder_profile,
    reissue_gateway_cert,
    server_names,
    write_bundle_with_decoys,
)
from host_tools.provisioning.pki_files import (  # noqa: F401 (re-exported)
    RENEW_MARGIN,
    load_certificates,
    load_issued,
    write_bundle,
    write_issued,
)
from host_tools.provisioning.x509_group_ca import (  # noqa: F401 (re-exported)
    DEVICE_DAYS,
    KEY_FORMATS,
    KEY_TYPES,
    X509_FILES,
    X509GroupCa,
    ensure_x509_group_ca,
    issue_device,
    make_device_cert,
    new_device_key,
    private_key_bytes,
    write_device_files,
)

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
@click.option(
    "--issuance-ca",
    "issuance_ca",
    type=click.Path(file_okay=False, path_type=Path),
    help="Make (or reuse) a certificate-issuance policy CA for the emulator in this folder: ca.pem and ca-key.pem "
    "(EC P-384, key mode 0600).",
)
def pki_command(
    out_dir: Path | None,
    gateway_host: str | None,
    ips: tuple[str, ...],
    dps_host: str,
    x509_group_ca: bool,
    devices: tuple[str, ...],
    key_type: str,
    profile: str,
    issuance_ca: Path | None,
):
    """Write a demo trust root, edge CA and gateway server certificate (plus the emulator's DPS certificates); with
    --x509-group-ca / --device, an X.509 enrollment-group CA (root + intermediate) and device certificates; with
    --issuance-ca DIR, a certificate-issuance policy CA for the emulator's enrollment file.

    The folder can serve as the emulator's PKI folder (STATE_DIR/pki) and as test material for a lab IoT Edge
    gateway: edge-ca.pem / edge-ca-key.pem as its edge CA, trust-root.pem as its trust bundle."""
    from rich.console import Console

    if not gateway_host and not x509_group_ca and not devices and not issuance_ca:
        raise click.UsageError(
            "give --gateway-host (gateway PKI), --x509-group-ca or --device (X.509 devices), or --issuance-ca DIR"
        )
    if (gateway_host or x509_group_ca or devices) and out_dir is None:
        raise click.UsageError("--gateway-host, --x509-group-ca and --device need --out DIR")
    if issuance_ca:
        _issuance_ca_command(issuance_ca)
    if x509_group_ca or devices:
        _x509_command(out_dir, devices, key_type, Console(width=max(Console().width, 120)))
    if gateway_host:
        _gateway_pki_command(out_dir, gateway_host, ips, dps_host, profile)


def _issuance_ca_command(folder: Path) -> None:
    from host_tools.provisioning.issuance_ca import ensure_issuance_ca

    try:
        ca = ensure_issuance_ca(folder)
        cert = load_certificates(ca.certificate)[0]
    except (PkiError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    subject = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    click.echo(
        f"{ca.certificate}: issuance policy CA {subject!r}, EC P-384, expires {cert.not_valid_after_utc:%Y-%m-%d} ({ca.action})"
    )
    click.echo(f"{ca.key}: its private key (mode 0600, never shown) ({ca.action})")
    click.echo("enrollment file: " + json.dumps({"issuance_policies": {"default": ca.policy()}}))
    click.echo('and in an enrollment: "certificate_issuance": {"policy": "default"}')


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
