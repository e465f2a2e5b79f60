"""Local DPS + IoT Edge gateway emulator (CPython, asyncio, ssl): an independent protocol oracle for azprov.

Python API (see docs/emulator.md):

    from host_tools.emulator import Emulator, demo_enrollments
    with Emulator(state_dir, demo_enrollments()) as emu:
        ...  # emu.dps_port, emu.gateway_port, emu.pki, emu.telemetry(), emu.registrations(), emu.stats

Importing this package is cheap; the server modules load on first use of `Emulator`/`EmulatorServer`.

server.py         runs both endpoints (`EmulatorServer`, `Emulator` in a thread); cli.py the `emulator` command
connection.py     what both endpoints share: TCP, the TLS handshake, MQTT sessions, topic queries
client_tls.py     TLS that asks every client for a certificate (judged later by x509_auth.py)
dps.py            the DPS endpoint: CONNECT, register, poll, answers
dps_auth.py       who a DPS client is: SAS token or X.509 certificate matched to an enrollment
dps_result.py     the registration result (registrationState) and the assignment the gateway checks
trust_bundle.py   the `trustBundle` object of a result
issuance.py       certificate issuance (api-version 2025-07-01-preview): policies, CSR checks, the issued chain
gateway.py        the IoT Edge gateway endpoint; hub.py the IoT Hub service side (twins, methods, C2D)
control.py        using a running emulator as the IoT Hub service would be used
limits.py         IoT Hub's size limits (C2D, twin sections, methods, telemetry) and the control port's bounds
enrollments.py    what an enrollment file means: its schema, the enrollments, every check of a document
enrollment_file.py  the file on disk: read safely, load, re-read while running, write, demo enrollments
faults.py         the fault catalogue; context.py state shared by the endpoints; records.py what is recorded
sas.py            SAS tokens (verify, sign); x509_auth.py judging a client's X.509 certificate
mqtt_codec.py     sans-IO MQTT 3.1.1 codec; rawclient.py and testing.py: clients and helpers for tests
"""

from host_tools.emulator.enrollment_file import (  # noqa: F401
    demo_enrollments,
    load_enrollments,
    new_symmetric_key,
    write_demo_enrollments,
    write_enrollments,
)
from host_tools.emulator.enrollments import DEFAULT_HUB, DEFAULT_ID_SCOPE, EnrollmentError  # noqa: F401
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
