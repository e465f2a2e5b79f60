"""Shared fixtures: the emulator as a child process (as users start it) and devices on the MicroPython Unix port,
each in a folder that plays its flash.

Every test that uses `device` (or asks for `runtime`) runs once per runtime in host_tools/board/runtimes.py TESTED:
the PyPI wheel and the 32-bit Unix port with the firmware frozen in (the ESP32 proxy), with ids `[wheel]` and
`[unix32-frozen]`. `@pytest.mark.runtimes("wheel")` on a test or module narrows that list, with a reason."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from host_tools.board import runtimes
from host_tools.board.harness import EmulatorProcess
from host_tools.board.unix_port import stage_device_root
from tests.helpers import Device, provisioning_for
from tests.parallel import (  # noqa: F401 (hooks for parallel runs: tests/parallel.py)
    pytest_collection_modifyitems,
    pytest_sessionstart,
    pytest_xdist_auto_num_workers,
    pytest_xdist_make_scheduler,
)


@pytest.fixture
def emulator(tmp_path):
    """Starts an emulator with an enrollment document; stops it at the end of the test."""
    stack = contextlib.ExitStack()

    def start(doc: dict, *extra_args: str, name: str = "emulator") -> EmulatorProcess:
        state = tmp_path / name
        state.mkdir(parents=True, exist_ok=True)
        enrollments = state / "enrollments.json"
        enrollments.write_text(json.dumps(doc, indent=2))
        return stack.enter_context(EmulatorProcess(state, enrollments, extra_args))

    with stack:
        yield start


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "runtimes(*names): run the test only on these MicroPython runtimes (default: runtimes.TESTED)"
    )


def pytest_generate_tests(metafunc):
    if "runtime" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("runtimes")
        names = list(marker.args) if marker else list(runtimes.TESTED)
        for name in names:
            runtimes.get(name)  # an unknown name fails at collection
        metafunc.parametrize("runtime", names, ids=names)


@pytest.fixture
def runtime(request) -> str:
    """The MicroPython runtime's name (host_tools/board/runtimes.py); parametrised by pytest_generate_tests."""
    return getattr(request, "param", runtimes.DEFAULT)


@pytest.fixture
def device(tmp_path, runtime):
    """Creates a device (flash folder with the firmware, CA file and provisioning file) for an emulator, on the
    test's runtime (`use_mpy` chooses .mpy or source on a runtime without the firmware frozen in)."""
    counter = iter(range(1000))
    runtimes.get(runtime).binary()  # built (or rebuilt after a firmware change) once, before the emulator starts

    def make(emu: EmulatorProcess, registration_id: str, key: str, use_mpy: bool = False, **extra) -> Device:
        root = tmp_path / f"device-{next(counter)}"
        doc = provisioning_for(emu, registration_id, key, **extra)
        stage_device_root(
            root,
            doc,
            use_mpy=use_mpy,
            ca_files={"certs/dps-root.pem": Path(emu.info["pki"]["dps_root"])},
            runtime=runtime,
        )
        return Device(root, doc, runtime=runtime)

    return make


@pytest.fixture
def provisioning(tmp_path) -> Path:
    """A valid provisioning file with its CA file (certs/dps-root.pem beside it)."""
    from host_tools.provisioning.writing import DeviceSettings, create_provisioning_file
    from tests.host_helpers import DEVICE_KEY

    path = tmp_path / "prov" / "provisioning.json"
    create_provisioning_file(path, DeviceSettings(id_scope="0ne00AAAAAA"), "sensor-001", symmetric_key=DEVICE_KEY)
    return path
