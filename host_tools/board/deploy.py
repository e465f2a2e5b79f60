"""Copy the device image to a board over its serial REPL with mpremote (`deploy`), only what changed.

The board hashes its own copies (sha256, in a few lines of MicroPython run through the raw REPL) and only files
whose hash differs are written, each to a temporary name and then renamed over the old one, so a board unplugged
mid-deploy keeps whole files (littlefs renames are atomic). Files under the build's own folders (azprov/,
lib/umqtt/) that the build no longer has are removed: a stale azprov/x.py would otherwise shadow azprov/x.mpy.

mpremote's Python API is used rather than its command line so one connection does the hashing, the copying and
the reset, and the copy can report progress.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import posixpath
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import click

from host_tools.board.build import DEFAULT_OUT, TARGET_FLAGS, UMQTT_SOURCE, BuildError, build_firmware

WRITE_CHUNK_BYTES = 1024  # per raw-REPL exec; the repr of a binary chunk is up to 4x this on the board
BOARD_PROVISIONING = "/provisioning.json"
PTY_READ_TIMEOUT_S = 1.0


class DeployError(RuntimeError):
    pass


@dataclass(frozen=True)
class DeployFile:
    dest: str  # absolute path on the board, e.g. "/azprov/app.mpy"
    data: bytes
    source: str  # where it came from, for messages
    secret: bool = False  # holds a key or password (provisioning.json, a private key): 0600 wherever the host writes it

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class SyncResult:
    dest: str
    size: int
    action: str  # "copied", "unchanged", "removed"


# --- what goes on the board --------------------------------------------------------------------------------------------


def build_files(build_dir: Path, include_umqtt: bool = True) -> list[DeployFile]:
    """The build folder's files (main.py, azprov/**, lib/umqtt/simple.mpy) as board files."""
    build_dir = Path(build_dir)
    if not build_dir.is_dir():
        raise DeployError(f"build folder not found: {build_dir} (run `python -m host_tools build`)")
    files = []
    for path in sorted(p for p in build_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(build_dir).as_posix()
        if rel.endswith(".tmp") or "__pycache__" in rel:
            continue
        if rel.startswith("lib/umqtt/") and not include_umqtt:
            continue
        files.append(DeployFile("/" + rel, path.read_bytes(), str(path)))
    if not any(f.dest == "/main.py" for f in files):
        raise DeployError(f"{build_dir}: no main.py in the build folder")
    return files


def provisioning_files(provisioning: Path) -> list[DeployFile]:
    """provisioning.json and the CA file it names, placed as on the board (docs/design.md).

    A dps_ca_file that is relative and inside the provisioning file's folder keeps its path and the file is copied
    byte for byte; any other is put in certs/ and the board's copy of the provisioning file names it there."""
    from host_tools.provisioning.validation import (
        ProvisioningFileError,
        validate_provisioning_file,
    )

    provisioning = Path(provisioning)
    try:
        config = validate_provisioning_file(provisioning)
    except ProvisioningFileError as exc:
        raise DeployError(str(exc)) from None
    text = provisioning.read_bytes()
    files = []
    rewritten = False
    # The DPS CA file, and with X.509 the device certificate and its private key, go to the board the same way.
    fields = ["dps_ca_file"] + (["certificate_file", "private_key_file"] if config.get("attestation") == "x509" else [])
    for field in fields:
        path = Path(config[field])
        path = path if path.is_absolute() else provisioning.parent / path
        name = PurePosixPath(config[field])
        if name.is_absolute() or ".." in name.parts:
            config[field] = f"certs/{path.name}"
            rewritten = True
            dest = "/certs/" + path.name
        else:
            dest = "/" + posixpath.normpath(name.as_posix())
        files.append(DeployFile(dest, path.read_bytes(), str(path), secret=field == "private_key_file"))
    if rewritten:
        text = (json.dumps(config, indent=2) + "\n").encode()
    return [DeployFile(BOARD_PROVISIONING, text, str(provisioning), secret=True)] + files


FROZEN_DIRS = ["/azprov", "/lib/umqtt"]  # what a custom firmware (boards/esp32/manifest.py) has frozen in


def plan_image(
    build_dir: Path,
    provisioning: Path | None = None,
    boot: Path | None = None,
    include_umqtt: bool = True,
    frozen: bool = False,
    app: Path | None = None,
) -> list[DeployFile]:
    """Every file the board should have. frozen: the firmware has azprov and umqtt built in, so only main.py.
    app: your application file, installed as /main.py instead of the firmware's (the board runs it at boot)."""
    files = build_files(build_dir, include_umqtt)
    if frozen:
        files = [f for f in files if f.dest == "/main.py"]
    if app is not None:
        if not Path(app).is_file():
            raise DeployError(f"application file not found: {app}")
        files = [DeployFile("/main.py", Path(app).read_bytes(), str(app)) if f.dest == "/main.py" else f for f in files]
    if provisioning is not None:
        files += provisioning_files(provisioning)
    if boot is not None:
        if not Path(boot).is_file():
            raise DeployError(f"boot file not found: {boot}")
        files.append(DeployFile("/boot.py", Path(boot).read_bytes(), str(boot)))
    return files


# --- does it fit a stock ESP32? -----------------------------------------------------------------------------------------

# GC heap an ESP32 (no PSRAM) running the official MicroPython image has free once Wi-Fi is up: the figure
# boards/esp32/README.md's memory budget uses.
ESP32_FREE_HEAP_BYTES = 102_400
BENCH_RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results.json"


@dataclass(frozen=True)
class MemoryFit:
    key: str  # the bench/results.json floor this deployment is judged by
    what: str  # the deployment in words
    floor_bytes: int | None  # None: not measured in that results file
    budget_bytes: int = ESP32_FREE_HEAP_BYTES
    measured_at: str | None = None

    @property
    def fits(self) -> bool | None:
        return None if self.floor_bytes is None else self.floor_bytes <= self.budget_bytes

    def message(self) -> str:
        if self.floor_bytes is None:
            return f"no measured heap floor for {self.what} ({self.key} missing from the bench results)"
        when = f", bench {self.measured_at}" if self.measured_at else ""
        if self.fits:
            return (
                f"{self.what}: needs a heap of {self.floor_bytes:,} B (measured on the 32-bit Unix port{when}); "
                f"a stock ESP32 has about {self.budget_bytes:,} B free after Wi-Fi, {self.budget_bytes - self.floor_bytes:,} B "
                "left for your application"
            )
        hint = (
            "a board with PSRAM, or the custom firmware with azprov frozen in (boards/esp32/README.md, --frozen)"
            if "frozen" not in self.key
            else "a board with PSRAM"
        )
        return (
            f"WARNING: {self.what} needs a heap of {self.floor_bytes:,} B (measured on the 32-bit Unix port{when}), "
            f"more than the about {self.budget_bytes:,} B a stock ESP32 has free after Wi-Fi: it will run out of "
            f"memory there; use {hint}"
        )


def memory_fit(frozen: bool, provisioning: Path | None = None, results: Path = BENCH_RESULTS) -> MemoryFit | None:
    """The measured heap floor of the deployment (frozen firmware or .mpy files; the X.509 flow or the symmetric-key
    one; certificate issuance) against a stock ESP32's free heap, from the bench's results file; None without one.
    Judged by the default application's flow with a 3-root bundle: a larger trust bundle needs more."""
    attestation, issuance = "symmetric_key", False
    if provisioning is not None and Path(provisioning).is_file():
        try:
            doc = json.loads(Path(provisioning).read_text())
        except ValueError:
            doc = {}
        attestation = doc.get("attestation") or attestation
        issuance = bool(doc.get("certificate_issuance"))
    runtime = "32bit_frozen" if frozen else "32bit_mpy"
    flow = "x509_" if attestation == "x509" else "issuance_" if issuance and frozen else ""
    key = f"heap_floor_{flow}{runtime}_bytes"
    what = "{} ({}{})".format(
        "azprov frozen into the firmware" if frozen else ".mpy files on a stock image",
        "X.509 device certificate" if attestation == "x509" else "symmetric key",
        ", certificate issuance" if issuance else "",
    )
    try:
        data = json.loads(Path(results).read_text())
    except (OSError, ValueError):
        return None
    floor = data.get(key)
    return MemoryFit(key, what, floor if isinstance(floor, int) else None, measured_at=data.get("generated_at"))


def owned_dirs(files: list[DeployFile]) -> list[str]:
    """Board folders that belong to the build, so files there that the build lacks are stale."""
    dirs = set()
    for f in files:
        parts = PurePosixPath(f.dest).parts  # ("/", "azprov", "x.mpy")
        if len(parts) > 2 and parts[1] == "azprov":
            dirs.add("/azprov")
        elif len(parts) > 3 and parts[1:3] == ("lib", "umqtt"):
            dirs.add("/lib/umqtt")
    return sorted(dirs)


# --- talking to the board -----------------------------------------------------------------------------------------------

# Run on the board: one "H path sha256" line per file asked about ("-" when missing), one "F path sha256" line per
# file found under the given folders. Names start with _az so nothing of the board's own is clobbered.
_BOARD_HASH_SCRIPT = """
import os, hashlib, binascii
def _azh(p):
    try:
        f = open(p, "rb")
    except OSError:
        return "-"
    h = hashlib.sha256()
    b = bytearray(1024)
    m = memoryview(b)
    while True:
        n = f.readinto(b)
        if not n:
            break
        h.update(m[:n])
    f.close()
    return binascii.hexlify(h.digest()).decode()
def _azw(d):
    try:
        entries = list(os.ilistdir(d))
    except OSError:
        return
    for e in entries:
        p = d + "/" + e[0]
        if e[1] == 0x4000:
            _azw(p)
        else:
            print("F", p, _azh(p))
for p in %(paths)r:
    print("H", p, _azh(p))
for d in %(dirs)r:
    _azw(d)
del _azh, _azw
"""

_BOARD_MKDIRS = """
import os
for d in %r:
    try:
        os.mkdir(d)
    except OSError:
        pass
"""


def check_port(port: str) -> None:
    if "://" in port:  # pyserial URLs (rfc2217://, socket://) are passed on as they are
        return
    if not Path(port).exists():
        raise DeployError(
            f"serial port {port} not found (is the board plugged in? "
            "`python -m serial.tools.list_ports` lists the ports)"
        )


@contextlib.contextmanager
def open_board(port: str, soft_reset: bool = True):
    """An mpremote SerialTransport in the raw REPL, with the board's program interrupted (and soft-reset)."""
    from mpremote.transport import TransportError
    from mpremote.transport_serial import SerialTransport

    check_port(port)
    try:
        transport = SerialTransport(port, baudrate=115200)
    except (TransportError, OSError) as exc:
        raise DeployError(f"cannot open {port}: {exc}") from None
    if transport.is_pty:
        # mpremote reads a pty with blocking one-byte reads, so its timeouts never fire there; a read timeout lets a
        # silent board (a hung test, a wrong device) end in an error instead of a hang.
        transport.serial.timeout = PTY_READ_TIMEOUT_S
    try:
        try:
            transport.enter_raw_repl(soft_reset=soft_reset)
        except TransportError as exc:
            raise DeployError(f"{port}: no MicroPython raw REPL ({exc}); is it running MicroPython?") from None
        yield transport
    finally:
        try:
            if transport.in_raw_repl:
                transport.exit_raw_repl()
        except OSError:
            pass
        transport.close()


def board_exec(transport, code: str, timeout: float = 30) -> str:
    from mpremote.transport import TransportError, TransportExecError

    try:
        out, err = transport.exec_raw(code, timeout=timeout)
    except TransportExecError as exc:  # pragma: no cover - exec_raw returns errors rather than raising
        raise DeployError(f"board error: {exc.error_output.strip()}") from None
    except TransportError as exc:
        raise DeployError(f"lost the board: {exc}") from None
    if err:
        raise DeployError(f"board error: {err.decode(errors='replace').strip().splitlines()[-1]}")
    return out.decode(errors="replace")


def board_hashes(transport, paths: list[str], dirs: list[str]) -> tuple[dict[str, str | None], dict[str, str]]:
    """({asked path: sha256 or None}, {path found under dirs: sha256})."""
    out = board_exec(transport, _BOARD_HASH_SCRIPT % {"paths": paths, "dirs": dirs})
    asked, found = {}, {}
    for line in out.splitlines():
        kind, _, rest = line.strip().partition(" ")
        path, _, digest = rest.rpartition(" ")
        if kind == "H":
            asked[path] = None if digest == "-" else digest
        elif kind == "F":
            found[path] = digest
    missing = [p for p in paths if p not in asked]
    if missing:
        raise DeployError(f"the board did not answer for {missing[0]}: {out[-200:]!r}")
    return asked, found


def sync_files(transport, files: list[DeployFile], prune_dirs: list[str] = (), progress=None) -> list[SyncResult]:
    """Make the board's files equal to `files`, writing only what differs; progress(dest, done, total) per chunk."""
    from mpremote.transport import TransportError

    asked, found = board_hashes(transport, [f.dest for f in files], list(prune_dirs))
    changed = [f for f in files if asked.get(f.dest) != f.sha256]
    wanted = {f.dest for f in files}
    stale = sorted(p for p in found if p not in wanted)

    folders = sorted({str(PurePosixPath(f.dest).parent) for f in changed} - {"/"}, key=len)
    parents = []
    for folder in folders:  # every ancestor, outermost first
        parts = PurePosixPath(folder).parts
        parents += ["/" + "/".join(parts[1 : i + 1]) for i in range(1, len(parts))]
    if parents:
        board_exec(transport, _BOARD_MKDIRS % list(dict.fromkeys(parents)))

    total = sum(len(f.data) for f in changed)
    done = 0
    for f in changed:
        tmp = f.dest + ".tmp"
        base = done

        def report(written, _size, dest=f.dest, base=base):
            if progress:
                progress(dest, base + written, total)

        try:
            transport.fs_writefile(tmp, f.data, chunk_size=WRITE_CHUNK_BYTES, progress_callback=report)
        except (TransportError, OSError) as exc:
            raise DeployError(f"writing {f.dest} on the board failed: {exc}") from None
        board_exec(transport, f"import os\nos.rename({tmp!r}, {f.dest!r})")
        done += len(f.data)
        if progress and not f.data:
            progress(f.dest, done, total)
    for path in stale:
        board_exec(transport, f"import os\nos.remove({path!r})")

    changed_set = {f.dest for f in changed}
    results = [SyncResult(f.dest, len(f.data), "copied" if f.dest in changed_set else "unchanged") for f in files]
    results += [SyncResult(p, 0, "removed") for p in stale]
    return results


def friendly_soft_reset(transport) -> None:
    """Ctrl-D at the friendly REPL: the board restarts and runs boot.py and main.py (a raw-REPL reset would not)."""
    if transport.in_raw_repl:
        transport.exit_raw_repl()
    transport.serial.write(b"\x04")
    transport.serial.flush()


def deploy_to_board(
    port: str, files: list[DeployFile], reset: bool = True, prune: bool = True, progress=None, frozen: bool = False
) -> list[SyncResult]:
    """Sync files to the board at port; prune stale build files (with frozen: everything under FROZEN_DIRS)."""
    prune_dirs = FROZEN_DIRS if frozen else owned_dirs(files) if prune else []
    with open_board(port) as transport:
        results = sync_files(transport, files, prune_dirs, progress)
        if reset:
            friendly_soft_reset(transport)
    return results


def results_table(results: list[SyncResult], title: str):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title))
    table.add_column("board file")
    table.add_column("bytes", justify="right")
    table.add_column("action")
    style = {"copied": "green", "unchanged": "dim", "removed": "yellow"}
    for r in results:
        table.add_row(escape(r.dest), f"{r.size:,}" if r.action != "removed" else "", r.action, style=style[r.action])
    return table


@click.command("deploy")
@click.option("--port", required=True, help="Serial port of the board, e.g. /dev/ttyUSB0 (or a virtual board's pty).")
@click.option(
    "--provisioning",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Provisioning file to install as /provisioning.json (its CA file goes along).",
)
@click.option(
    "--build",
    "build_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Build folder to copy [default: build firmware/ into build/mpy first].",
)
@click.option(
    "--target",
    type=click.Choice(sorted(TARGET_FLAGS)),
    default="esp32",
    show_default=True,
    help="Target when building (without --build).",
)
@click.option(
    "--boot",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also install this file as /boot.py (e.g. boards/esp32/boot.py).",
)
@click.option(
    "--app",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Your application (a .py file using azprov), installed as /main.py instead of the firmware's main.py.",
)
@click.option("--no-umqtt", is_flag=True, help="Skip lib/umqtt (firmware that has umqtt.simple frozen in).")
@click.option(
    "--frozen",
    is_flag=True,
    help="The firmware has azprov and umqtt frozen in (boards/esp32/manifest.py): "
    "copy main.py only and remove /azprov and /lib/umqtt from the board.",
)
@click.option("--no-prune", is_flag=True, help="Keep board files under azprov/ that the build does not have.")
@click.option("--no-reset", is_flag=True, help="Do not soft-reset the board afterwards.")
@click.option(
    "--bench-results",
    type=click.Path(dir_okay=False, path_type=Path),
    default=BENCH_RESULTS,
    show_default=True,
    help="Measured heap floors the deployment is checked against (a stock ESP32 has about 100 KB free).",
)
def deploy(port, provisioning, build_dir, target, boot, app, no_umqtt, frozen, no_prune, no_reset, bench_results):
    """Copy the build (and a provisioning file) to a board, only what changed, then soft-reset it."""
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    console = Console()
    if target.startswith("esp32"):
        fit = memory_fit(frozen, provisioning, bench_results)
        if fit is not None:
            # Before anything is copied: a deployment that cannot fit is worth a second look, not a failure.
            Console(stderr=True, highlight=False).print(
                ("[yellow]" if fit.fits is False else "") + escape(fit.message()) + ("[/]" if fit.fits is False else "")
            )
    try:
        check_port(port)
        if build_dir is None:
            build_dir = DEFAULT_OUT
            build_firmware(build_dir, target=target, umqtt_source=None if no_umqtt else UMQTT_SOURCE)
        files = plan_image(build_dir, provisioning, boot, include_umqtt=not no_umqtt, frozen=frozen, app=app)
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task(f"checking {port}", total=None)

            def progress(dest, done, total):
                bar.update(task, description=f"copying {dest}", completed=done, total=total)

            results = deploy_to_board(
                port, files, reset=not no_reset, prune=not no_prune, progress=progress, frozen=frozen
            )
    except (DeployError, BuildError) as exc:
        raise click.ClickException(str(exc)) from None
    console.print(results_table(results, f"deploy to {port}"))
    copied = [r for r in results if r.action == "copied"]
    removed = [r for r in results if r.action == "removed"]
    console.print(
        f"{len(copied)} copied ({sum(r.size for r in copied):,} bytes), "
        f"{len(results) - len(copied) - len(removed)} unchanged, {len(removed)} removed"
        + ("" if no_reset else "; board soft-reset (main.py runs)")
    )
