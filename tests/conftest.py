"""Shared fixtures: the emulator as a child process (as users start it) and devices on the MicroPython Unix port,
each in a folder that plays its flash."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from host_tools.board.harness import EmulatorProcess
from host_tools.board.unix_port import stage_device_root
from tests.helpers import Device, provisioning_for


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


@pytest.fixture
def device(tmp_path):
    """Creates a device (flash folder with the firmware, CA file and provisioning file) for an emulator."""
    counter = iter(range(1000))

    def make(emu: EmulatorProcess, registration_id: str, key: str, use_mpy: bool = False, **extra) -> Device:
        root = tmp_path / f"device-{next(counter)}"
        doc = provisioning_for(emu, registration_id, key, **extra)
        stage_device_root(
            root, doc, use_mpy=use_mpy, ca_files={"certs/dps-root.pem": Path(emu.info["pki"]["dps_root"])}
        )
        return Device(root, doc)

    return make


@pytest.fixture
def provisioning(tmp_path) -> Path:
    """A valid provisioning file with its CA file (certs/dps-root.pem beside it)."""
    from host_tools.provisioning.provision_file import DeviceSettings, create_provisioning_file
    from tests.host_helpers import DEVICE_KEY

    path = tmp_path / "prov" / "provisioning.json"
    create_provisioning_file(path, DeviceSettings(id_scope="0ne00AAAAAA"), "sensor-001", symmetric_key=DEVICE_KEY)
    return path
