"""The board's console (`monitor`): mpremote's REPL terminal, or a plain serial terminal (pyserial miniterm).

mpremote's terminal knows MicroPython (Ctrl-] or Ctrl-X leaves, it passes Ctrl-C/Ctrl-D to the board and does not
reset it); miniterm shows a board's raw output at any baud rate, e.g. the ROM bootloader's at 115200.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click


def monitor_command(port: str, miniterm: bool = False, baud: int = 115200, capture: Path | None = None) -> list[str]:
    """The console program's argument list."""
    if miniterm:
        return [sys.executable, "-m", "serial.tools.miniterm", "--raw", "--eol", "LF", port, str(baud)]
    cmd = [sys.executable, "-m", "mpremote", "connect", port, "repl"]
    if capture:
        cmd += ["--capture", str(capture)]
    return cmd


@click.command("monitor")
@click.option("--port", required=True, help="Serial port of the board (or a virtual board's pty).")
@click.option("--miniterm", is_flag=True, help="Use pyserial's miniterm instead of mpremote (Ctrl-] quits).")
@click.option("--baud", type=int, default=115200, show_default=True, help="Baud rate (miniterm only).")
@click.option(
    "--capture",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also save the session to this file (mpremote only).",
)
def monitor(port, miniterm, baud, capture):
    """Open the board's console (Ctrl-] or Ctrl-X to leave)."""
    if "://" not in port and not Path(port).exists():
        raise click.ClickException(
            f"serial port {port} not found (is the board plugged in? "
            "`python -m serial.tools.list_ports` lists the ports)"
        )
    if capture and miniterm:
        raise click.ClickException("--capture works with the mpremote console only")
    if not sys.stdin.isatty():
        # mpremote's terminal needs one (it ends in a traceback about termios otherwise)
        raise click.ClickException(
            f"monitor needs a terminal and stdin is not one; to collect the board's output without one, use "
            f"`python -m mpremote connect {port} exec ...` or run the device tests (`test-device --port {port}`)"
        )
    click.echo("console on %s; Ctrl-] %s" % (port, "quits" if miniterm else "or Ctrl-X quits"), err=True)
    status = subprocess.call(monitor_command(port, miniterm, baud, capture))
    if status != 0:
        raise click.ClickException(f"the console exited with status {status}")
