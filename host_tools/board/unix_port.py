"""Run the firmware on the MicroPython Unix port, in a folder laid out exactly like a board's flash.

The device image (docs/design.md) is copied into `root`; `micropython main.py` then runs with that folder as its
current directory and `sys.path` = ['', '.frozen', 'lib'], as on an ESP32. `runtime` names the MicroPython binary
(host_tools/board/runtimes.py; default the PyPI wheel): on a frozen runtime the firmware and umqtt.simple are in the
binary, so the folder holds only main.py besides the provisioning file and certificates.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import click

from host_tools.board import runtimes
from host_tools.board.runtimes import RuntimeUnavailable
from host_tools.secret_files import copy_secret, secure_folder, write_secret

REPO = Path(__file__).resolve().parents[2]
FIRMWARE_DIR = REPO / "firmware"
UMQTT_SOURCE = REPO / "build" / "lib" / "umqtt" / "simple.py"
DEVICE_PATH = ":.frozen:lib"
# Names the frozen runtime a folder was staged for: without the firmware in it, no other binary can run it.
RUNTIME_MARK = ".azprov-runtime"


UnixPortError = RuntimeUnavailable


def micropython_binary(runtime: str | runtimes.Runtime | None = None) -> str:
    """The `micropython` executable of `runtime` (default: the PyPI wheel's)."""
    return runtimes.get(runtime).binary()


def _copy_tree(src: Path, dest: Path, suffixes: tuple[str, ...]) -> None:
    for path in sorted(src.rglob("*")):
        if path.is_file() and path.suffix in suffixes and "__pycache__" not in path.parts:
            target = dest / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def stage_device_root(
    root: Path,
    provisioning: Path | dict | None = None,
    use_mpy: bool = True,
    ca_files: dict[str, Path] | None = None,
    build_dir: Path | None = None,
    runtime: str | runtimes.Runtime | None = None,
) -> Path:
    """Lays out the device image in `root`: firmware (compiled .mpy or source), umqtt, the provisioning file and
    CA files. A dict `provisioning` is written as provisioning.json; a path is copied. Returns `root`.
    For a frozen `runtime` only main.py is copied: the firmware and umqtt are in the binary (`use_mpy` is moot)."""
    root = secure_folder(root)  # the flash holds secrets: a folder others cannot write to
    if runtimes.get(runtime).frozen:
        shutil.copy2(FIRMWARE_DIR / "main.py", root / "main.py")
        (root / RUNTIME_MARK).write_text(runtimes.get(runtime).name + "\n")  # run_device's default runtime here
    elif use_mpy:
        from host_tools.board.build import build_firmware

        build_dir = Path(build_dir or REPO / "build" / "mpy")
        # build/mpy is shared by every device staged from this checkout, in parallel test workers too: one process
        # at a time compiles into it and copies out of it.
        with runtimes.file_lock(build_dir.with_name(build_dir.name + ".lock")):
            build_firmware(out=build_dir, target="unix", firmware_dir=FIRMWARE_DIR, umqtt_source=UMQTT_SOURCE)
            _copy_tree(build_dir, root, (".mpy", ".py"))
    else:
        _copy_tree(FIRMWARE_DIR, root, (".py",))
        if not UMQTT_SOURCE.exists():
            raise UnixPortError(f"{UMQTT_SOURCE} is missing (run `make setup`)")
        (root / "lib" / "umqtt").mkdir(parents=True, exist_ok=True)
        shutil.copy2(UMQTT_SOURCE, root / "lib" / "umqtt" / "simple.py")
    for name, source in (ca_files or {}).items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    # provisioning.json holds the device key and the Wi-Fi password: owner-only, like provision-file writes it.
    if isinstance(provisioning, dict):
        write_secret(root / "provisioning.json", json.dumps(provisioning, indent=2) + "\n")
    elif provisioning is not None:
        copy_secret(provisioning, root / "provisioning.json")
    return root


def staged_runtime(root: Path) -> str | None:
    """The frozen runtime `root` was staged for, or None (a folder with the firmware in it runs anywhere)."""
    mark = Path(root) / RUNTIME_MARK
    return mark.read_text().strip() if mark.is_file() else None


def device_command(
    args=(), heapsize: str | int | None = None, script: str = "main.py", runtime: str | runtimes.Runtime | None = None
) -> list[str]:
    command = [micropython_binary(runtime)]
    if heapsize is not None:
        command += ["-X", f"heapsize={heapsize}"]
    return command + [script, *map(str, args)]


def device_env(extra: dict | None = None) -> dict:
    env = dict(os.environ, MICROPYPATH=DEVICE_PATH)
    env.update(extra or {})
    return env


def run_device(
    root: Path,
    args=(),
    timeout: float = 120,
    heapsize: str | int | None = None,
    script: str = "main.py",
    runtime: str | runtimes.Runtime | None = None,
) -> subprocess.CompletedProcess:
    """Runs `micropython main.py` in `root` and returns the completed process (text output). `runtime` defaults to
    the one the folder was staged for."""
    return subprocess.run(
        device_command(args, heapsize, script, runtime or staged_runtime(root)),
        cwd=root,
        env=device_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_device(
    root: Path,
    args=(),
    heapsize: str | int | None = None,
    script: str = "main.py",
    runtime: str | runtimes.Runtime | None = None,
    **popen,
) -> subprocess.Popen:
    """Like run_device, but returns the running process (for output streamed line by line, or a kill mid-run)."""
    return subprocess.Popen(
        device_command(args, heapsize, script, runtime or staged_runtime(root)),
        cwd=root,
        env=device_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


@click.command("run-unix")
@click.option(
    "--provisioning",
    type=click.Path(path_type=Path),
    required=True,
    help="Provisioning file (JSON) for the device.",
)
@click.option(
    "--flash",
    "flash_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("run/flash"),
    show_default=True,
    help="Folder that plays the device's flash.",
)
@click.option(
    "--ca",
    "ca_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CA file to place in the flash under certs/ (repeatable).",
)
@click.option(
    "--app",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Your application (a .py file using azprov), run instead of the firmware's main.py (put in the flash "
    "folder as main.py, as `deploy --app` puts it on a board).",
)
@click.option("--source", is_flag=True, help="Run the .py sources instead of the compiled .mpy build.")
@click.option("--heapsize", help="MicroPython GC heap size, e.g. 24K.")
@click.option(
    "--runtime",
    type=click.Choice(sorted(runtimes.RUNTIMES)),
    default=runtimes.DEFAULT,
    show_default=True,
    help="MicroPython binary: the PyPI wheel or a Unix port built from source (`make runtimes`).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True, max=86400),
    default=300,
    show_default=True,
    help="Seconds the device may run (printing or not) before it is stopped.",
)
def run_unix(provisioning: Path, flash_dir: Path, ca_files, app, source: bool, heapsize, runtime: str, timeout: float):
    """Run the firmware on the MicroPython Unix port with a provisioning file and a flash folder."""
    from host_tools.board.deploy import DeployError, provisioning_files

    # The files a board would get (deploy's own list: provisioning.json and the CA and key files it names), checked
    # with the device's rules before anything is staged.
    try:
        files = provisioning_files(provisioning)
    except DeployError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"{exc.filename or provisioning}: cannot be read ({exc.strerror})") from None
    storage = json.loads(files[0].data).get("storage_dir") or "azprov_state"
    if PurePosixPath(storage).is_absolute():
        raise click.ClickException(
            f"{provisioning}: storage_dir: must be relative for run-unix (the flash folder is the device's root)"
        )
    if flash_dir.exists() and not flash_dir.is_dir():
        raise click.ClickException(f"{flash_dir}: is not a folder")
    cas = {f"certs/{path.name}": path for path in ca_files}
    try:
        stage_device_root(flash_dir, None, use_mpy=not source, ca_files=cas, runtime=runtime)
        if app is not None:
            (flash_dir / "main.py").write_bytes(app.read_bytes())
        for file in files:
            if file.dest.lstrip("/") in cas:  # a --ca file of the same name wins
                continue
            target = flash_dir / file.dest.lstrip("/")
            if file.secret:  # provisioning.json, the X.509 private key
                write_secret(target, file.data)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(file.data)
    except OSError as exc:
        raise click.ClickException(f"{exc.filename or flash_dir}: cannot be written ({exc.strerror})") from None
    proc = start_device(flash_dir, heapsize=heapsize, runtime=runtime)
    status = stream_until(proc, timeout, click.echo)
    if status is None:
        raise click.ClickException(f"the device did not finish within {timeout:g} s")
    sys.exit(status)


def stream_until(proc: subprocess.Popen, timeout: float, echo) -> int | None:
    """Echo the process's output lines as they come; its exit status, or None after killing it at `timeout` (the
    clock runs from the start, whether the device prints or not)."""
    import threading

    def pump():
        for line in proc.stdout:
            echo(line, nl=False)

    reader = threading.Thread(target=pump, name="run-unix-output", daemon=True)
    reader.start()
    try:
        status = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        reader.join(5)
        return None
    reader.join(5)
    return status
