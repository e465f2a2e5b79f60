"""Helpers shared by the tests: enrollment documents, devices on the Unix port and their parsed output."""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from host_tools.board.harness import EmulatorProcess, parse_device_line
from host_tools.board.unix_port import run_device

ID_SCOPE = "0ne00TEST01"
HUB = "test-hub.azure-devices.net"


def new_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def individual(registration_id: str, key: str, **extra) -> dict:
    entry = {
        "registration_id": registration_id,
        "symmetric_key": key,
        "device_id": registration_id,
        "assigned_hub": HUB,
        "trust_bundle": "bundle",
    }
    entry.update(extra)
    return entry


def enrollment_doc(individuals=(), groups=(), bundle=("pki:trust-root",), **bundles) -> dict:
    trust_bundles = {"bundle": {"certificates": list(bundle)}}
    trust_bundles.update({name: {"certificates": list(certs)} for name, certs in bundles.items()})
    return {
        "id_scope": ID_SCOPE,
        "trust_bundles": trust_bundles,
        "individual": list(individuals),
        "groups": list(groups),
    }


@dataclass
class DeviceResult:
    status: int
    output: str
    events: list[tuple[str, str, dict]] = field(default_factory=list)

    def event(self, name: str) -> dict | None:
        for _, event, fields in self.events:
            if event == name:
                return fields
        return None

    def all(self, name: str) -> list[dict]:
        return [fields for _, event, fields in self.events if event == name]

    def gateway_retries(self) -> list[dict]:
        """The supervisor's retries after a gateway failure (`retry_scheduled` at the connect or serve step)."""
        return [r for r in self.all("retry_scheduled") if r["step"] in ("connect", "serve")]

    @property
    def error(self) -> dict | None:
        return self.event("failed")


def parse_result(proc: subprocess.CompletedProcess) -> DeviceResult:
    output = proc.stdout + proc.stderr
    events = [p for p in map(parse_device_line, output.splitlines()) if p]
    return DeviceResult(proc.returncode, output, events)


class Device:
    """One device on the Unix port: its flash folder, provisioning file and runs."""

    def __init__(self, root: Path, provisioning: dict, runtime: str | None = None):
        self.root = root
        self.provisioning = provisioning
        self.runtime = runtime  # host_tools/board/runtimes.py name; None: the default (the wheel)

    def write_provisioning(self, **changes) -> None:
        self.provisioning.update(changes)
        (self.root / "provisioning.json").write_text(json.dumps(self.provisioning, indent=2))

    def run(self, timeout: float = 120, heapsize=None) -> DeviceResult:
        return parse_result(run_device(self.root, timeout=timeout, heapsize=heapsize, runtime=self.runtime))

    def run_telemetry_only(self, timeout: float = 120) -> DeviceResult:
        """The flow without the hub features, for a plain MQTT broker (Mosquitto): it serves no twin, so the default
        application's twin GET after connecting would wait for an answer that never comes."""
        (self.root / "telemetry_only.py").write_text(
            "import sys\nfrom azprov.supervisor import main\nsys.exit(main('provisioning.json', hub_features=False))\n"
        )
        return parse_result(run_device(self.root, timeout=timeout, script="telemetry_only.py", runtime=self.runtime))

    @property
    def storage(self) -> Path:
        return self.root / "azprov_state"


def provisioning_for(emu: EmulatorProcess, registration_id: str, key: str, **extra) -> dict:
    doc = {
        "dps_host": emu.info["dps"]["hostname"],
        "dps_port": emu.info["dps"]["port"],
        "id_scope": ID_SCOPE,
        "registration_id": registration_id,
        "symmetric_key": key,
        "dps_ca_file": "certs/dps-root.pem",
        "gateway_host": emu.info["gateway"]["hostname"],
        "gateway_port": emu.info["gateway"]["port"],
        "registration_timeout_s": 60,
    }
    doc.update(extra)
    return doc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def assert_no_secret(text: str, *secrets_: str) -> None:
    for secret in secrets_:
        assert secret not in text, "a secret appeared in the output"
    assert "SharedAccessSignature" not in text
    assert "sig=" not in text
    assert "PRIVATE KEY-----" not in text, "a PEM private key appeared in the output"
