"""The provisioning file's CA file (dps_ca_file) end to end (issue 21, item 2), on the 32-bit build with the firmware
frozen in (the ESP32 proxy) at the heap an ESP32 has free once Wi-Fi is up (boards/esp32/README.md: 102,400 B).

A 50 MB CA file used to end in `out_of_memory` naming nothing, a DER file in "cannot be read", and `validate` took
files up to 64 KB while the device failed from about 31 KB. Now the device checks the size before reading, names
dps_ca_file, takes a single DER certificate, reads a PEM file line by line while the TLS context loads it (its
heap need does not grow with the file), and `validate` and the device share one limit (azprov.pem.MAX_CA_FILE_BYTES).
"""

from __future__ import annotations

import os
import re
import shutil
import ssl
from pathlib import Path

import certifi
import pytest

from host_tools.provisioning.device_rules import firmware
from tests.helpers import enrollment_doc, individual, new_key
from tests.host_helpers import run_cli

ESP32_HEAP = 102400  # boards/esp32/README.md, "Memory budget"
LIMIT = firmware().pem.MAX_CA_FILE_BYTES
FAST = ("--fault", "retry_after=0")
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\n.*?-----END CERTIFICATE-----\n", re.S)


def _ca_of_size(dps_root: bytes, size: int) -> bytes:
    """The emulator's DPS root, then public roots (certificates the TLS stack really parses) while they fit, then
    comment lines: exactly `size` bytes."""
    out = bytearray(dps_root)
    for block in _PEM.findall(Path(certifi.where()).read_bytes()):
        if len(out) + len(block) + 64 > size:
            break
        out += block
    while len(out) < size:
        out += b"#" * min(size - len(out) - 1, 63) + b"\n" if size - len(out) > 1 else b"\n"
    assert len(out) == size
    return bytes(out)


def _validate(dev):
    return run_cli("provision-file", "validate", str(dev.root / "provisioning.json"))


@pytest.mark.runtimes("unix32-frozen")  # the heap figure is the ESP32 proxy's; the wheel is 64-bit
def test_a_ca_file_at_the_limit_provisions_and_one_byte_more_is_refused_naming_the_field(emulator, device):
    key = new_key()
    emu = emulator(enrollment_doc([individual("ca-dev", key)]), *FAST)
    dev = device(emu, "ca-dev", key)
    ca = dev.root / "certs" / "dps-root.pem"
    dps_root = Path(emu.info["pki"]["dps_root"]).read_bytes()

    ca.write_bytes(_ca_of_size(dps_root, LIMIT))
    assert ca.read_bytes().count(b"-----BEGIN CERTIFICATE-----") > 30
    checked = _validate(dev)
    assert checked.returncode == 0, checked.stderr
    result = dev.run(timeout=120, heapsize=ESP32_HEAP)
    assert result.status == 0, result.output
    assert result.event("dps_connected") and (dev.storage / "state.json").exists(), result.output

    for size in (LIMIT + 1, 50 * 1024 * 1024):  # 50 MB: sparse, and never read
        shutil.rmtree(dev.storage, ignore_errors=True)  # registers again: the CA file is read
        if size > LIMIT + 1:
            os.truncate(ca, size)
        else:
            ca.write_bytes(_ca_of_size(dps_root, size))
        checked = _validate(dev)
        assert checked.returncode == 1, checked.stdout
        assert "dps_ca_file" in checked.stderr and f"larger than {LIMIT} bytes" in checked.stderr, checked.stderr
        result = dev.run(timeout=120, heapsize=ESP32_HEAP)
        assert result.status == 1 and result.error["kind"] == "configuration", result.output
        message = result.error["message"]
        assert message.startswith("dps_ca_file: ") and message.endswith(f"is larger than {LIMIT} bytes"), message
        assert not result.event("dps_connecting")


@pytest.mark.runtimes("unix32-frozen")
def test_a_der_ca_file_provisions_and_a_text_file_says_pem_is_expected(emulator, device):
    key = new_key()
    emu = emulator(enrollment_doc([individual("der-dev", key)]), *FAST)
    dev = device(emu, "der-dev", key)
    ca = dev.root / "certs" / "dps-root.pem"
    ca.write_bytes(ssl.PEM_cert_to_DER_cert(Path(emu.info["pki"]["dps_root"]).read_text()))
    checked = _validate(dev)
    assert checked.returncode == 0, checked.stderr
    result = dev.run(timeout=120, heapsize=ESP32_HEAP)
    assert result.status == 0, result.output

    shutil.rmtree(dev.storage)
    ca.write_bytes(b"not a certificate\n")
    assert _validate(dev).returncode == 1
    result = dev.run(timeout=120, heapsize=ESP32_HEAP)
    assert result.status == 1 and result.error["kind"] == "configuration", result.output
    assert result.error["message"] == (
        "dps_ca_file: no certificate found (a PEM file of certificates, or one DER certificate, is expected)"
    ), result.output
