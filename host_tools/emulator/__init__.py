"""Local DPS + IoT Edge gateway emulator (CPython, asyncio, ssl): an independent protocol oracle for azprov.

Python API (see docs/emulator.md):

    from host_tools.emulator import Emulator, demo_enrollments
    with Emulator(state_dir, demo_enrollments()) as emu:
        ...  # emu.dps_port, emu.gateway_port, emu.pki, emu.telemetry(), emu.registrations(), emu.stats

Importing this package is cheap; the server modules load on first use of `Emulator`/`EmulatorServer`.
"""

from host_tools.emulator.enrollments import (  # noqa: F401
    DEFAULT_HUB,
    DEFAULT_ID_SCOPE,
    EnrollmentError,
    demo_enrollments,
    load_enrollments,
    new_symmetric_key,
    write_demo_enrollments,
    write_enrollments,
)
from host_tools.emulator.faults import CATALOGUE as FAULTS  # noqa: F401
from host_tools.emulator.sas import derive_device_key, generate_sas_token  # noqa: F401

__all__ = [
    "Emulator",
    "EmulatorServer",
    "EmulatorError",
    "EnrollmentError",
    "DEFAULT_HUB",
    "DEFAULT_ID_SCOPE",
    "FAULTS",
    "demo_enrollments",
    "write_demo_enrollments",
    "write_enrollments",
    "load_enrollments",
    "new_symmetric_key",
    "derive_device_key",
    "generate_sas_token",
]


def __getattr__(name):
    if name in ("Emulator", "EmulatorServer", "EmulatorError"):
        from host_tools.emulator import server

        return getattr(server, name)
    raise AttributeError(name)
