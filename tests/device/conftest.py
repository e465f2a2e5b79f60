"""Lets pytest run the device-side test modules under CPython too (the same files run on the MicroPython Unix
port through tests/test_device_suite.py and on boards through `host_tools test-device`)."""

import sys
import types
from pathlib import Path

import pytest

_FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"
if str(_FIRMWARE) not in sys.path:
    sys.path.insert(0, str(_FIRMWARE))
sys.path.insert(0, str(Path(__file__).resolve().parent))

if "micropython" not in sys.modules:
    # MicroPython's compile-time constant marker; a plain value in CPython.
    sys.modules["micropython"] = types.SimpleNamespace(const=lambda value: value)


@pytest.fixture(autouse=True)
def _in_temporary_directory(tmp_path, monkeypatch):
    # The device tests write relative paths, as a device writes to its flash root.
    monkeypatch.chdir(tmp_path)
