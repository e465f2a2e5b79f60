"""Shared helpers of the host-tool tests (fixtures are in conftest.py)."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
MPREMOTE = [PYTHON, "-m", "mpremote"]
# A public test vector (Azure IoT SDK docs): group key, registration id and the derived device key.
GROUP_KEY = "NMgJDvdKTxjLi+xBxxkDDEwDJxEvOE5u8BiT0mVgPeg="
VECTOR_REGISTRATION_ID = "sign this message"
VECTOR_DERIVED_KEY = "8NJRMT83CcplGrAGaUVIUM/md5914KpWVNngSVoF9/M="
DEVICE_KEY = base64.b64encode(bytes(range(32))).decode()
# The reliability tests (bad input in bulk, power cuts) run a sample of their cases in `make test` and every case in
# `make reliability`, which sets AZPROV_FULL=1.
FULL_RUNS = os.environ.get("AZPROV_FULL", "") == "1"


def mpremote(port: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """The real mpremote command line against a port."""
    return subprocess.run([*MPREMOTE, "connect", port, *args], capture_output=True, text=True, timeout=timeout)


def run_cli(*args: str, timeout: float = 60, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    """`python -m host_tools ARGS` as a user runs it."""
    return subprocess.run([PYTHON, "-m", "host_tools", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)
