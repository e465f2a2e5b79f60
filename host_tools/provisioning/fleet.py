"""`fleet`: provisioning files for many devices of one group enrollment, each with its own key derived on the host
from the group key (which never reaches a file or the console), plus a `fleet.json` index."""

from __future__ import annotations

import json
from pathlib import Path

import click

from host_tools.provisioning.provision_file import (
    ProvisioningFileError,
    decode_key,
    derive_device_key,
    place_ca_file,
    read_group_key,
    settings_from_options,
    settings_options,
    write_provisioning_file,
)


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
@click.option("--count", type=click.IntRange(min=1), required=True, help="How many devices.")
@click.option("--pattern", default="sensor-{n:04d}", show_default=True, help="Registration id pattern, {n} = number.")
@click.option("--start", type=int, default=1, show_default=True, help="First number.")
@settings_options
def fleet(out_dir, count, pattern, start, group_key, group_key_file, ca_file, force, **settings):
    """Make provisioning files for COUNT devices of one group enrollment."""
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    group_key = read_group_key(group_key, group_key_file)
    if group_key is None:
        raise click.ClickException(
            "a fleet needs the group enrollment key: --group-key, AZPROV_GROUP_KEY or --group-key-file"
        )
    device_settings = settings_from_options(**settings)
    try:
        decode_key(group_key, "group key")
        ids = registration_ids(pattern, count, start)
        out_dir.mkdir(parents=True, exist_ok=True)
        ca_name = place_ca_file(out_dir, ca_file)
    except ProvisioningFileError as exc:
        raise click.ClickException(str(exc)) from None

    written = []
    console = Console()
    with Progress(
        TextColumn("provisioning files"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task("fleet", total=len(ids))
        for registration_id in ids:
            path = out_dir / f"{registration_id}.json"
            config = device_settings.config(registration_id, derive_device_key(group_key, registration_id), ca_name)
            try:
                write_provisioning_file(path, config, overwrite=force)
            except ProvisioningFileError as exc:
                raise click.ClickException(str(exc)) from None
            written.append((registration_id, path))
            progress.advance(task)

    index = {
        "id_scope": device_settings.id_scope,
        "dps_host": device_settings.dps_host,
        "dps_ca_file": ca_name,
        "devices": [{"registration_id": r, "file": p.name} for r, p in written],
    }
    (out_dir / "fleet.json").write_text(json.dumps(index, indent=2) + "\n")

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
    click.echo(f"{len(written)} provisioning files, CA file {out_dir / ca_name}, index {out_dir / 'fleet.json'}")
