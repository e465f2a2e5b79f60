"""Write MicroPython firmware to an ESP32 with esptool (`flash`): erase the flash, then write the image.

`esptool_commands()` is the whole decision (which esptool arguments, in which order) as a pure function, so it can be
tested without hardware; the command only checks its inputs, prints the commands and runs them, streaming esptool's
own progress output.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

# Where MicroPython's ESP32 firmware images (bootloader + partition table + app, as published on micropython.org)
# start: the address of the second-stage bootloader, which differs between chip families.
FIRMWARE_OFFSETS: dict[str, int] = {
    "esp32": 0x1000,
    "esp32s2": 0x1000,
    "esp32s3": 0x0,
    "esp32c2": 0x0,
    "esp32c3": 0x0,
    "esp32c6": 0x0,
    "esp32h2": 0x0,
    "esp32p4": 0x2000,
    "esp8266": 0x0,
}
DEFAULT_BAUD = 460800


class FlashError(ValueError):
    pass


def esptool_commands(
    port: str, chip: str, firmware: Path | str, baud: int = DEFAULT_BAUD, erase: bool = True
) -> list[list[str]]:
    """The esptool argument lists (without the `esptool` program itself) that flash `firmware`, in order."""
    chip = chip.lower()
    if chip not in FIRMWARE_OFFSETS:
        raise FlashError(f"unknown chip {chip!r}; known chips: {', '.join(FIRMWARE_OFFSETS)}")
    if not port:
        raise FlashError("no serial port given (--port, e.g. /dev/ttyUSB0)")
    if baud <= 0:
        raise FlashError(f"baud rate {baud}: must be positive")
    commands = []
    if erase:
        commands.append(["--chip", chip, "--port", port, "erase-flash"])
    commands.append(
        ["--chip", chip, "--port", port, "--baud", str(baud), "write-flash", hex(FIRMWARE_OFFSETS[chip]), str(firmware)]
    )
    return commands


def check_firmware(firmware: Path) -> None:
    """The image exists and is not empty (checked for --dry-run too: the commands printed must be runnable)."""
    firmware = Path(firmware)
    if not firmware.is_file():
        raise FlashError(f"firmware file not found: {firmware} (download it from https://micropython.org/download/)")
    if firmware.stat().st_size == 0:
        raise FlashError(f"firmware file is empty: {firmware}")


def check_inputs(port: str, firmware: Path) -> None:
    if not port:
        raise FlashError("no serial port given (--port, e.g. /dev/ttyUSB0)")
    if "://" not in port and not Path(port).exists():
        raise FlashError(
            f"serial port {port} not found (is the board plugged in? "
            "`python -m serial.tools.list_ports` lists the ports)"
        )
    check_firmware(firmware)


def run_esptool(args: list[str]) -> int:
    """Run esptool with its output going straight to the console (its progress bars included)."""
    return subprocess.call([sys.executable, "-m", "esptool", *args])


@click.command("flash")
@click.option("--port", default="", help="Serial port of the board, e.g. /dev/ttyUSB0.")
@click.option("--chip", default="esp32", show_default=True, help=f"One of: {', '.join(FIRMWARE_OFFSETS)}.")
@click.option(
    "--firmware",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="MicroPython firmware image (.bin) for the chip.",
)
@click.option("--baud", type=int, default=DEFAULT_BAUD, show_default=True, help="Baud rate while writing.")
@click.option("--no-erase", is_flag=True, help="Write without erasing first (keeps the file system).")
@click.option("--dry-run", is_flag=True, help="Print the esptool commands without running them.")
def flash(port, chip, firmware, baud, no_erase, dry_run):
    """Erase an ESP32's flash and write MicroPython firmware at the chip's offset."""
    try:
        commands = esptool_commands(port, chip, firmware, baud, erase=not no_erase)
        if dry_run:
            check_firmware(firmware)  # the board need not be plugged in, but the image must be there
        else:
            check_inputs(port, firmware)
    except FlashError as exc:
        raise click.ClickException(str(exc)) from None
    for step, args in enumerate(commands, 1):
        click.echo(f"[{step}/{len(commands)}] esptool {' '.join(args)}")
        if dry_run:
            continue
        status = run_esptool(args)
        if status != 0:
            action = next(a for a in args if a.endswith("-flash"))
            raise click.ClickException(
                f"esptool {action} failed (exit status {status}); hold BOOT while it "
                "connects if the board does not enter its bootloader by itself"
            )
    if not dry_run:
        click.echo(f"flashed {firmware} to {chip} on {port}; next: python -m host_tools deploy --port {port}")
