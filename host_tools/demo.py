"""`make run`: the whole product on this machine. Starts the DPS + gateway emulator, runs the firmware on the
MicroPython Unix port with a freshly generated provisioning file and an empty flash folder, follows each step the
device logs, and checks the emulator's own record of the telemetry it acknowledged. Exit status 0 only if every
step happened."""

from __future__ import annotations

import base64
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from host_tools.board.harness import EmulatorProcess, parse_device_line
from host_tools.board.unix_port import REPO, stage_device_root, start_device
from host_tools.emulator.enrollment_file import write_enrollments as write_enrollment_file

DEMO_DIR = REPO / "run" / "demo"
REGISTRATION_ID = "demo-device-001"
ID_SCOPE = "0ne00DEMO01"
HUB = "demo-hub.azure-devices.net"

# Device log events that make up the demo, in order, with what a person is told when each one appears.
STEPS = (
    ("config_loaded", "provisioning file loaded"),
    ("dps_connected", "DPS connected (TLS verified)"),
    ("registered", "registered"),
    ("trust_bundle_stored", "trust bundle stored"),
    ("gateway_verified", "gateway certificate verified"),
    ("telemetry_acknowledged", "telemetry acknowledged"),
)


def write_enrollments(path: Path, device_key: str) -> None:
    """An enrollment file for the emulator: one individual enrollment linked to the emulator's trust root."""
    doc = {
        "id_scope": ID_SCOPE,
        "trust_bundles": {"demo-bundle": {"certificates": ["pki:trust-root"]}},
        "individual": [
            {
                "registration_id": REGISTRATION_ID,
                "symmetric_key": device_key,
                "device_id": REGISTRATION_ID,
                "assigned_hub": HUB,
                "trust_bundle": "demo-bundle",
                "payload": {"welcome": "azprov demo"},
            }
        ],
        "groups": [],
    }
    write_enrollment_file(path, doc)  # it holds the device key: owner-only


def provisioning_document(info: dict, device_key: str, ca_name: str) -> dict:
    return {
        "dps_host": info["dps"]["hostname"],
        "dps_port": info["dps"]["port"],
        "id_scope": ID_SCOPE,
        "registration_id": REGISTRATION_ID,
        "symmetric_key": device_key,
        "dps_ca_file": ca_name,
        "payload": {"model": "azprov-demo", "firmware": "0.1.0"},
        "gateway_host": info["gateway"]["hostname"],
        "gateway_port": info["gateway"]["port"],
        "log_level": "info",
    }


@click.command("demo")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEMO_DIR,
    show_default=True,
    help="Where the emulator's state and the device's flash folder go.",
)
@click.option("--source", is_flag=True, help="Run the firmware from .py sources instead of the .mpy build.")
@click.option("--timeout", type=float, default=180, show_default=True, help="Seconds the device may take.")
def demo(workdir: Path, source: bool, timeout: float):
    """Emulator + firmware on the Unix port, end to end, each step shown."""
    console = Console(highlight=False, soft_wrap=True)
    workdir = workdir.resolve()
    flash = workdir / "flash"
    shutil.rmtree(flash, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    device_key = base64.b64encode(secrets.token_bytes(32)).decode()
    enrollments = workdir / "enrollments.json"
    write_enrollments(enrollments, device_key)

    console.print("[bold]azprov demo[/]: DPS + edge gateway emulator and the firmware on the MicroPython Unix port")
    seen: dict[str, dict[str, str]] = {}
    certificates: list[dict[str, str]] = []
    with EmulatorProcess(workdir / "emulator", enrollments) as emulator:
        info = emulator.info
        console.print(
            f"  emulator: DPS on {info['dps']['host']}:{info['dps']['port']} "
            f"({info['dps']['hostname']}), gateway on {info['gateway']['host']}:{info['gateway']['port']}"
        )
        ca_name = "certs/dps-root.pem"
        stage_device_root(
            flash,
            provisioning_document(info, device_key, ca_name),
            use_mpy=not source,
            ca_files={ca_name: Path(info["pki"]["dps_root"])},
        )
        console.print(
            f"  device: flash folder {flash} ({'sources' if source else '.mpy build'}), "
            f"registration id {REGISTRATION_ID}, key not shown"
        )
        # The gateway's record outlives the emulator (run/demo is reused): only what follows this mark is this run's.
        mark = emulator.telemetry_mark()
        started = time.monotonic()
        proc = start_device(flash)
        labels = dict(STEPS)
        try:
            for line in proc.stdout:
                parsed = parse_device_line(line)
                if parsed is None:
                    console.print(f"  [dim]device: {line.rstrip()}[/]")
                    continue
                level, event, fields = parsed
                if event == "trust_bundle_cert":
                    certificates.append(fields)
                    console.print(f"      certificate sha256={fields.get('sha256')} subject={fields.get('subject')}")
                elif event in labels:
                    seen[event] = fields
                    shown = " ".join(f"{k}={v}" for k, v in fields.items())
                    console.print(f"  [green]OK[/] {labels[event]}: {shown}")
                elif level in ("ERROR", "WARNING"):
                    console.print(f"  [red]{level}[/] {line.strip()[len('azprov ' + level) + 1 :]}")
            status = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            status = -1
        elapsed = time.monotonic() - started
        records = [r for r in emulator.telemetry(since=mark) if r.get("device_id") == REGISTRATION_ID]

    table = Table(title="azprov demo result")
    table.add_column("step")
    table.add_column("result")
    ok = status == 0
    for event, label in STEPS:
        happened = event in seen
        ok &= happened
        table.add_row(label, "[green]done[/]" if happened else "[red]missing[/]")
    stored = int(seen.get("trust_bundle_stored", {}).get("certificates", "0") or 0)
    ok &= stored >= 1 and len(certificates) == stored
    table.add_row("certificates stored", str(stored))
    ok &= bool(records)
    table.add_row("telemetry recorded by the gateway", str(len(records)))
    table.add_row("device exit status", str(status))
    table.add_row("device wall time", f"{elapsed:.2f} s")
    console.print(table)
    if not ok:
        console.print(f"[red]demo failed[/]; emulator log: {workdir / 'emulator' / 'emulator.log'}")
        sys.exit(1)
    console.print("[green]every step happened[/]")
