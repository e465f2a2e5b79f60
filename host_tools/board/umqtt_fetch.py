"""Provide `umqtt.simple` for the MicroPython Unix port.

The ecosystem's own way is `mip` from the MicroPython package index; where that index cannot be reached the pinned
PyPI release 1.3.4 is used. That release is an sdist pip refuses to install, so it is downloaded, unpacked by pip's
failed build into our own temporary folder, and its `umqtt/simple.py` is accepted only with the known sha256.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import click

PYPI_RELEASE = "micropython-umqtt.simple==1.3.4"
PYPI_SIMPLE_SHA256 = "8555d2f654deb8eb0d724f79b0811a78cc94029d070f3d96bbd74288653d63a5"
MIP_TIMEOUT_S = 20


class FetchError(RuntimeError):
    pass


def _micropython():
    exe = Path(sys.executable).with_name("micropython")
    return str(exe) if exe.exists() else shutil.which("micropython")


def try_mip(dest: Path) -> bool:
    mp = _micropython()
    if not mp:
        return False
    try:
        proc = subprocess.run(
            [mp, "-m", "mip", "install", "--target", str(dest), "umqtt.simple"],
            capture_output=True,
            text=True,
            timeout=MIP_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return False
    installed = (dest / "umqtt" / "simple.py").exists() or (dest / "umqtt" / "simple.mpy").exists()
    return proc.returncode == 0 and installed


def fetch_pypi(dest: Path) -> Path:
    with tempfile.TemporaryDirectory(prefix="umqtt-") as tmp:
        env = dict(os.environ, TMPDIR=tmp)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-clean",
                "--no-binary",
                ":all:",
                "--disable-pip-version-check",
                "-d",
                str(Path(tmp) / "dl"),
                PYPI_RELEASE,
            ],
            capture_output=True,
            text=True,
            env=env,
        )  # exits non-zero by design: the sdist has no build script
        found = sorted(Path(tmp).rglob("umqtt/simple.py"))
        if not found:
            raise FetchError(f"{PYPI_RELEASE}: no umqtt/simple.py in the downloaded sdist")
        data = found[0].read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != PYPI_SIMPLE_SHA256:
            raise FetchError(f"{PYPI_RELEASE}: umqtt/simple.py sha256 {digest} != pinned {PYPI_SIMPLE_SHA256}")
        target = dest / "umqtt" / "simple.py"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp_target = target.with_suffix(".tmp")
        tmp_target.write_bytes(data)
        os.replace(tmp_target, target)
        return target


@click.command("fetch-umqtt")
@click.option(
    "--dest",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("build/lib"),
    show_default=True,
    help="Folder that receives umqtt/simple.py.",
)
@click.option("--no-mip", is_flag=True, help="Skip the MicroPython package index and use the pinned PyPI release.")
def fetch_umqtt(dest: Path, no_mip: bool):
    """Fetch umqtt.simple for the Unix port (mip where reachable, else the pinned PyPI release)."""
    dest.mkdir(parents=True, exist_ok=True)
    if not no_mip and try_mip(dest):
        click.echo(f"umqtt.simple installed with mip into {dest}")
        return
    try:
        target = fetch_pypi(dest)
    except FetchError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"umqtt.simple 1.3.4 from PyPI (sha256 verified) -> {target}")
