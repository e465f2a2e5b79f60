"""`fleet`: provisioning files for many devices of one group enrollment, each with its own key derived on the host
from the group key (which never reaches a file or the console), plus a `fleet.json` index."""

from __future__ import annotations

import json
from pathlib import Path

import click

from host_tools.provisioning.device_keys import decode_key, derive_device_key
from host_tools.provisioning.provision_file import read_group_key, settings_from_options, settings_options, x509_options
from host_tools.provisioning.validation import ProvisioningFileError, check_config, file_text
from host_tools.provisioning.writing import (
    as_file_error,
    check_writable,
    plan_ca_file,
    refuse_existing,
    write_atomic,
    write_private,
)
from host_tools.provisioning.x509_identity import judge_planned_identity, plan_identity, write_identity, x509_config

MAX_COUNT = 100_000  # a fleet file each; more is a job for a database, not a folder


def registration_ids(pattern: str, count: int, start: int = 1) -> list[str]:
    """Registration ids from a pattern with {n}, e.g. 'sensor-{n:04d}'; all must differ."""
    try:
        ids = [pattern.format(n=n) for n in range(start, start + count)]
    except (KeyError, IndexError, ValueError) as exc:
        raise ProvisioningFileError(f"--pattern {pattern!r}: cannot be filled in with n ({exc})") from None
    if len(set(ids)) != len(ids):
        raise ProvisioningFileError(f"--pattern {pattern!r}: gives the same registration id twice (use {{n}})")
    return ids


@click.command("fleet")
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("fleet"),
    show_default=True,
    help="Folder that receives one <registration id>.json per device and the shared CA file.",
)
@click.option(
    "--count", type=click.IntRange(min=1, max=MAX_COUNT), required=True, help=f"How many devices (up to {MAX_COUNT})."
)
@click.option("--pattern", default="sensor-{n:04d}", show_default=True, help="Registration id pattern, {n} = number.")
@click.option("--start", type=int, default=1, show_default=True, help="First number.")
@x509_options
@settings_options
def fleet(
    out_dir,
    count,
    pattern,
    start,
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
    """Make provisioning files for COUNT devices of one group enrollment (symmetric key: each device's key derived
    from the group key; x509: each device a new certificate and key from the group CA, in certs/)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    x509 = attestation == "x509"
    if x509:
        if group_key is not None or group_key_file is not None or certificate_file or private_key_file:
            raise click.ClickException("a fleet with --attestation x509 takes --group-ca and --group-ca-key only")
        if group_ca is None or group_ca_key is None:
            raise click.ClickException("a fleet with --attestation x509 needs --group-ca and --group-ca-key")
        group_key = None
    else:
        group_key = read_group_key(group_key, group_key_file)
        if group_key is None:
            raise click.ClickException(
                "a fleet needs the group enrollment key: --group-key, AZPROV_GROUP_KEY or --group-key-file"
            )
    device_settings = settings_from_options(**settings)
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        if not x509:
            decode_key(group_key, "group key")
        ids = registration_ids(pattern, count, start)
        index_path = out_dir / "fleet.json"
        # Everything is checked before the first file is written: what exists, the CA file, every device's file.
        if out_dir.exists() and not out_dir.is_dir():
            raise ProvisioningFileError(f"{out_dir}: is not a folder")
        refuse_existing(index_path, force)
        plan = plan_ca_file(out_dir, ca_file, force)
        files = []
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("checking", total=len(ids))
            for registration_id in ids:
                path = out_dir / f"{registration_id}.json"
                refuse_existing(path, force)
                identity = None
                if x509:
                    identity = plan_identity(
                        registration_id, group_ca=group_ca, group_ca_key=group_ca_key, key_type=key_type
                    )
                    for name in (identity.cert_name, identity.key_name):
                        refuse_existing(out_dir / name, force)
                    config = x509_config(
                        device_settings, registration_id, plan.name, identity.cert_name, identity.key_name
                    )
                else:
                    config = device_settings.config(
                        registration_id, derive_device_key(group_key, registration_id), plan.name
                    )
                problems = check_config(config, str(path))
                if problems:
                    raise ProvisioningFileError("\n".join(problems))
                if identity is not None:
                    judge_planned_identity(config, identity, str(path))
                files.append((registration_id, path, file_text(config), identity))
                progress.advance(task)
        check_writable(out_dir)
        index = {
            "id_scope": device_settings.id_scope,
            "dps_host": device_settings.dps_host,
            "dps_ca_file": plan.name,
            "devices": [{"registration_id": r, "file": p.name} for r, p, _, _ in files],
        }
        if plan.content is not None:
            as_file_error(plan.target, lambda: write_atomic(plan.target, plan.content, 0o644))
        written = []
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("provisioning files", total=len(files))
            for registration_id, path, text, identity in files:
                if identity is not None:
                    write_identity(out_dir, identity)
                as_file_error(path, lambda: write_private(path, text))  # noqa: B023 (called at once)
                written.append((registration_id, path))
                progress.advance(task)
        data = (json.dumps(index, indent=2) + "\n").encode()
        as_file_error(index_path, lambda: write_atomic(index_path, data, 0o644))
    except ProvisioningFileError as exc:
        raise click.ClickException(str(exc)) from None

    console = Console(width=max(Console().width, 100))
    table = Table(title=f"fleet of {len(written)} in {out_dir}")
    table.add_column("#", justify="right")
    table.add_column("registration id")
    table.add_column("file")
    shown = list(enumerate(written, 1))
    if len(shown) > 20:  # a long fleet: head and tail are enough to check the pattern
        shown = shown[:10] + [None] + shown[-5:]
    for row in shown:
        if row is None:
            table.add_row("…", "…", "…")
        else:
            number, (registration_id, path) = row
            table.add_row(str(number), escape(registration_id), escape(path.name))
    console.print(table)
    click.echo(f"{len(written)} provisioning files, CA file {out_dir / plan.name}, index {index_path}")
