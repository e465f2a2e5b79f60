"""Runs the device-side test modules (tests/device/test_*.py) on the MicroPython Unix port, the same files and runner
`host_tools test-device` uses on a board, and reports each device test as its own pytest case, once per runtime
(tests/conftest.py): the PyPI wheel against the compiled .mpy firmware, and the 32-bit build with the firmware frozen
in. (pytest also runs those modules under CPython directly.)"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from host_tools.board.unix_port import device_env, micropython_binary, stage_device_root

DEVICE_TESTS = Path(__file__).resolve().parent / "device"
_TEST_NAME = re.compile(r"^def (test_\w+)\(", re.M)


def _cases():
    for module in sorted(DEVICE_TESTS.glob("test_*.py")):
        for name in _TEST_NAME.findall(module.read_text()):
            yield pytest.param(module.stem, name, id=f"{module.stem}::{name}")


@functools.cache
def _run_module(module: str, root: str, runtime: str) -> dict[str, str]:
    proc = subprocess.run(
        [micropython_binary(runtime), "-c", f"import runner; runner.run({module!r})"],
        cwd=root,
        env=device_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    outcomes = {}
    for line in proc.stdout.splitlines():
        verdict, _, rest = line.partition(" ")
        if verdict in ("PASS", "FAIL", "SKIP"):
            name, _, why = rest.partition(":")
            outcomes[name.strip()] = verdict + ((":" + why) if why else "")
        elif verdict == "ERROR":
            outcomes["__module__"] = line
    outcomes["__output__"] = proc.stdout + proc.stderr
    return outcomes


@pytest.fixture(scope="session")
def unix_boards(tmp_path_factory):
    """runtime name -> a flash folder with the firmware (unless frozen in) and the device tests, staged once."""
    boards: dict[str, str] = {}

    def board(runtime: str) -> str:
        if runtime not in boards:
            root = tmp_path_factory.mktemp(f"unix-board-{runtime}")
            stage_device_root(root, use_mpy=True, runtime=runtime)
            for path in DEVICE_TESTS.glob("*.py"):
                if path.name != "conftest.py":
                    shutil.copy2(path, root / path.name)
            boards[runtime] = str(root)
        return boards[runtime]

    return board


@pytest.mark.parametrize("module, name", list(_cases()))
def test_on_unix_port(unix_boards, runtime, module, name):
    outcomes = _run_module(module, unix_boards(runtime), runtime)
    assert "__module__" not in outcomes, outcomes["__output__"]
    assert outcomes.get(name) == "PASS", outcomes["__output__"]
