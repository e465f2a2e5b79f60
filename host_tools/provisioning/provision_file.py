"""Write and validate provisioning files (`provision-file create|validate|show`); `fleet.py` makes many at once.

A device gets its own symmetric key. For a group enrollment that key is derived here, on the host, from the group
key and the registration id; the group key itself never reaches a file or the console. Keys are never printed.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from host_tools.provisioning.device_keys import decode_key
from host_tools.provisioning.validation import (
    ProvisioningFileError,
    is_fleet_index,
    read_provisioning_document,
    redacted,
    refuse_constant,
    resolve_ca_file,
    unknown_fields,
    validate_provisioning_file,
)
from host_tools.provisioning.writing import GLOBAL_DPS_HOST, DeviceSettings, create_provisioning_file
from host_tools.provisioning.x509_identity import create_x509_provisioning_file, plan_identity

GROUP_KEY_FILE_LIMIT = 4096  # a DPS group key is 88 characters


def read_group_key(group_key: str | None, group_key_file: Path | None) -> str | None:
    if group_key is not None and group_key_file is not None:
        raise click.ClickException("give --group-key or --group-key-file, not both")
    if group_key_file is not None:
        from host_tools.provisioning.device_rules import RuleError, read_bounded

        try:
            data = read_bounded(group_key_file, GROUP_KEY_FILE_LIMIT, "group key file")
        except RuleError as exc:
            raise click.ClickException(str(exc)) from None
        try:
            text = data.decode("ascii").strip()
        except UnicodeDecodeError:
            raise click.ClickException(f"{group_key_file}: group key file is not base64 text") from None
        try:
            decode_key(text, "group key")
        except ProvisioningFileError as exc:
            raise click.ClickException(f"{group_key_file}: {exc}") from None
        return text
    if group_key is not None:
        try:
            decode_key(group_key, "group key")
        except ProvisioningFileError as exc:
            raise click.ClickException(f"--group-key: {exc}") from None
    return group_key


def x509_options(func):
    """Options of `provision-file create` and `fleet` for X.509 devices."""
    options = [
        click.option(
            "--attestation",
            type=click.Choice(["symmetric_key", "x509"]),
            default="symmetric_key",
            show_default=True,
            help="How the device proves who it is.",
        ),
        click.option(
            "--certificate-file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="x509: the device certificate, then its intermediates (PEM or DER); copied to certs/.",
        ),
        click.option(
            "--private-key-file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="x509: its unencrypted private key (PEM or DER); copied to certs/ with mode 0600, never shown.",
        ),
        click.option(
            "--group-ca",
            type=click.Path(dir_okay=False, path_type=Path),
            help="x509: issue a new device certificate from this enrollment-group CA certificate (e.g. from `pki`).",
        ),
        click.option(
            "--group-ca-key", type=click.Path(dir_okay=False, path_type=Path), help="x509: the group CA's key."
        ),
        click.option(
            "--key-type",
            type=click.Choice(["ec", "rsa"]),
            default="ec",
            show_default=True,
            help="x509: key of a new device certificate (EC P-256 or RSA 2048).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def settings_options(func):
    """Options shared by `provision-file create` and `fleet`."""
    options = [
        click.option("--id-scope", required=True, help="DPS ID scope (0ne...)."),
        click.option("--dps-host", default=GLOBAL_DPS_HOST, show_default=True, help="DPS host name."),
        click.option("--dps-port", type=int, default=8883, show_default=True),
        click.option(
            "--ca-file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="PEM CA file for the DPS server [default: the public DPS roots from certifi].",
        ),
        click.option("--payload", help='Registration payload as JSON, e.g. \'{"model": "thermo-1"}\'.'),
        click.option("--gateway-host", help="Edge gateway host for telemetry."),
        click.option("--gateway-port", type=int, default=8883, show_default=True),
        click.option("--storage-dir", default="azprov_state", show_default=True),
        click.option(
            "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True
        ),
        click.option(
            "--sas-ttl", "sas_ttl_s", type=int, default=3600, show_default=True, help="SAS token lifetime (seconds)."
        ),
        click.option("--force-reprovision", is_flag=True, help="Register again at every boot."),
        click.option(
            "--certificate-issuance",
            is_flag=True,
            help="Ask DPS for an operational certificate (a CSR in the registration; DPS preview api-version "
            "2025-07-01-preview) and use it with the gateway.",
        ),
        click.option("--wifi-ssid", help="Wi-Fi network for ESP32 boards."),
        click.option(
            "--wifi-password", envvar="AZPROV_WIFI_PASSWORD", help="Wi-Fi password [env AZPROV_WIFI_PASSWORD]."
        ),
        click.option(
            "--group-key",
            envvar="AZPROV_GROUP_KEY",
            help="Group enrollment key (base64) [env AZPROV_GROUP_KEY]; never written out.",
        ),
        click.option(
            "--group-key-file",
            type=click.Path(path_type=Path),
            help="File holding the group enrollment key.",
        ),
        click.option("--force", is_flag=True, help="Replace existing files."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def settings_from_options(
    id_scope,
    dps_host,
    dps_port,
    payload,
    gateway_host,
    gateway_port,
    storage_dir,
    log_level,
    sas_ttl_s,
    force_reprovision,
    wifi_ssid,
    wifi_password,
    certificate_issuance=False,
) -> DeviceSettings:
    parsed_payload = None
    if wifi_password is not None and not wifi_ssid:
        raise click.ClickException("--wifi-password needs --wifi-ssid (the network it is the password of)")
    if payload is not None:
        try:
            parsed_payload = json.loads(payload, strict=False, parse_constant=refuse_constant)
        except json.JSONDecodeError as exc:
            raise click.ClickException(f"--payload is not valid JSON: {exc.msg}") from None
        except RecursionError:
            raise click.ClickException("--payload is nested too deeply") from None
        except ValueError as exc:
            raise click.ClickException(f"--payload is not valid JSON: {exc}") from None
    return DeviceSettings(
        id_scope=id_scope,
        dps_host=dps_host,
        dps_port=dps_port,
        payload=parsed_payload,
        gateway_host=gateway_host,
        gateway_port=gateway_port,
        storage_dir=storage_dir,
        log_level=log_level,
        sas_ttl_s=sas_ttl_s,
        force_reprovision=force_reprovision,
        wifi_ssid=wifi_ssid,
        wifi_password=wifi_password,
        certificate_issuance=certificate_issuance,
    )


def _summary_table(path: Path, config: dict, key_source: str):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(str(path)), show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for name, value in redacted(config).items():
        if name == "symmetric_key":
            value = f"<hidden: {key_source}>"
        table.add_row(name, escape(json.dumps(value) if not isinstance(value, str) else value))
    return table


@click.group("provision-file")
def provision_file():
    """Write, check and show provisioning files."""


@provision_file.command("create")
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("provisioning.json"),
    show_default=True,
    help="Provisioning file to write (the CA file goes beside it).",
)
@click.option("--registration-id", required=True, help="The device's registration id.")
@click.option(
    "--symmetric-key",
    envvar="AZPROV_SYMMETRIC_KEY",
    help="Individual enrollment key (base64) [env AZPROV_SYMMETRIC_KEY].",
)
@x509_options
@settings_options
def create(
    out,
    registration_id,
    symmetric_key,
    group_key,
    group_key_file,
    ca_file,
    force,
    attestation,
    certificate_file,
    private_key_file,
    group_ca,
    group_ca_key,
    key_type,
    **settings,
):
    """Write a provisioning file from an individual key, or from a group key and a registration id; with
    --attestation x509 from the device's certificate and key files, or with a new device certificate issued by an
    enrollment-group CA (--group-ca, --group-ca-key)."""
    from rich.console import Console

    if attestation == "x509":
        if symmetric_key is not None or group_key is not None or group_key_file is not None:
            raise click.ClickException("--attestation x509 takes no symmetric key or group key")
        try:
            identity = plan_identity(
                registration_id, certificate_file, private_key_file, group_ca, group_ca_key, key_type
            )
            config = create_x509_provisioning_file(
                out,
                settings_from_options(**settings),
                registration_id,
                identity,
                ca_file=ca_file,
                overwrite=force,
                group_ca=group_ca,
            )
        except ProvisioningFileError as exc:
            raise click.ClickException(str(exc)) from None
        Console(width=max(Console().width, 100)).print(_summary_table(out, config, ""))
        click.echo(
            f"wrote {out}, {out.parent / identity.cert_name}, {out.parent / identity.key_name} (mode 0600) "
            f"and {resolve_ca_file(out, config)}"
        )
        return
    if certificate_file or private_key_file or group_ca or group_ca_key:
        raise click.ClickException("certificate and CA options need --attestation x509")
    group_key = read_group_key(group_key, group_key_file)
    if (symmetric_key is None) == (group_key is None):
        raise click.ClickException("give exactly one of --symmetric-key or --group-key/--group-key-file")
    try:
        config = create_provisioning_file(
            out,
            settings_from_options(**settings),
            registration_id,
            symmetric_key=symmetric_key,
            group_key=group_key,
            ca_file=ca_file,
            overwrite=force,
        )
    except ProvisioningFileError as exc:
        raise click.ClickException(str(exc)) from None
    Console(width=max(Console().width, 100)).print(
        _summary_table(out, config, "derived from the group key" if group_key else "individual key")
    )
    click.echo(f"wrote {out} and {resolve_ca_file(out, config)}")


@provision_file.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--no-ca-check", is_flag=True, help="Do not check that the CA file exists and holds certificates.")
@click.option(
    "--group-ca",
    type=click.Path(dir_okay=False, path_type=Path),
    help="X.509: the enrollment group's CA certificate; the device's chain must reach it.",
)
def validate(files, no_ca_check, group_ca):
    """Check provisioning files against the schema (every problem names the file and the field)."""
    failures = []
    for path in files:
        try:
            _, document = read_provisioning_document(path)
        except ProvisioningFileError:
            document = None
        if is_fleet_index(document):
            click.echo(f"{path}: fleet index (written by `fleet`), skipped")
            continue
        try:
            config = validate_provisioning_file(path, check_ca=not no_ca_check, group_ca=group_ca)
        except ProvisioningFileError as exc:
            failures.append(str(exc))
            continue
        extra = unknown_fields(config)
        note = f" (unknown fields, ignored by the device: {', '.join(extra)})" if extra else ""
        click.echo(f"{path}: ok{note}")
    if failures:
        raise click.ClickException("\n".join(failures))


@provision_file.command("show")
@click.argument("file", type=click.Path(path_type=Path))
def show(file):
    """Print a provisioning file with its secrets hidden (FILE, or a flash folder holding provisioning.json), and the
    operational certificate the device stored after certificate issuance, if any (never its key)."""
    from rich.console import Console

    from host_tools.provisioning.stored_identity import read_stored_identity, storage_folder

    if file.is_dir():
        file = file / "provisioning.json"
    try:
        config = validate_provisioning_file(file, check_ca=False)
    except ProvisioningFileError as exc:
        raise click.ClickException(str(exc)) from None
    console = Console(width=max(Console().width, 100))
    console.print(_summary_table(file, config, "set"))
    identity = read_stored_identity(storage_folder(file, config))
    if identity is not None:
        console.print(_identity_table(identity))


def _identity_table(identity):
    """One row per field of each stored certificate (leaf first); the key file only as present or absent."""
    from rich.markup import escape
    from rich.table import Table

    from host_tools.provisioning.stored_identity import IDENTITY_KEY, validity_words

    table = Table(title=escape(f"operational certificate {identity.certificate_file}"), show_header=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value")
    if identity.problem:
        table.add_row("problem", escape(identity.problem))
    for index, cert in enumerate(identity.certificates, 1):
        what = "device" if index == 1 else "issuer"
        table.add_row(f"{index} ({what}) subject", escape(cert.subject.rfc4514_string()))
        table.add_row("issuer", escape(cert.issuer.rfc4514_string()))
        table.add_row("serial", format(cert.serial_number, "X"))
        table.add_row("valid from", f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S}Z")
        table.add_row("valid until", f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z ({validity_words(cert)})")
    table.add_row(IDENTITY_KEY, ("present" if identity.key_present else "absent") + " (never shown)")
    return table
