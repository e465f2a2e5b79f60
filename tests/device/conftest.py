"""Lets pytest run the device-side test modules under CPython too (the same files run on the MicroPython Unix
port through tests/test_device_suite.py and on boards through `host_tools test-device`)."""

import sys
import time
import types
from pathlib import Path

import pytest

_FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"
if str(_FIRMWARE) not in sys.path:
    sys.path.insert(0, str(_FIRMWARE))
sys.path.insert(0, str(Path(__file__).resolve().parent))

if not hasattr(time, "ticks_ms"):
    # MicroPython's millisecond ticks, for modules that time waits (watchdog, link).
    time.ticks_ms = lambda: int(time.monotonic() * 1000)
    time.ticks_add = lambda ticks, delta: ticks + delta
    time.ticks_diff = lambda end, start: end - start
    time.sleep_ms = lambda ms: time.sleep(ms / 1000)

if "micropython" not in sys.modules:
    # MicroPython's compile-time constant marker; a plain value in CPython.
    sys.modules["micropython"] = types.SimpleNamespace(const=lambda value: value)


@pytest.fixture(autouse=True)
def _in_temporary_directory(tmp_path, monkeypatch):
    # The device tests write relative paths, as a device writes to its flash root.
    monkeypatch.chdir(tmp_path)
