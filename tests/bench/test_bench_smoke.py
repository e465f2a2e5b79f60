"""`make bench` end to end in --quick mode (tiny fleet, one CPU pair, coarse heap search): every figure is
measured and written as a number, the chart is a PNG, and no key reaches the output. The heap floor search runs at
a 64 KiB resolution and the fleet check with two devices (this test asks for numbers, not fine ones); `make bench`
runs the full measurement.

Not a performance test: no figure is compared with its target here (timed assertions are not tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# The figures the issue asks for, each a number in results.json.
REQUIRED_NUMBERS = (
    "heap_floor_bytes",
    "heap_peak_bytes",
    "mpy_total_bytes",
    "provision_cpu_ratio_vs_sdk",
    "provision_cpu_ratio_min",
    "provision_cpu_ratio_max",
    "provision_wall_ms",
    "cached_boot_dps_connections",
    "cached_boot_flash_writes",
    "fleet_devices",
    "fleet_failures",
    "fleet_seconds",
    "fleet_ideal_seconds",
    "fleet_max_attempts",
    "fleet_rate_limit",
    "fleet_peak_attempts_per_s",
    "fleet_retry_peak_to_rate",
    # Issue 11: floors on the runtimes built from source (results.json contract names).
    "heap_floor_32bit_frozen_bytes",
    "heap_floor_32bit_mpy_bytes",
    "heap_floor_wheel_mpy_bytes",
    "heap_floor_telemetry_only_32bit_frozen_bytes",
    "heap_floor_telemetry_only_32bit_mpy_bytes",
    "heap_floor_telemetry_only_wheel_mpy_bytes",
    "heap_floor_big_bundle_32bit_frozen_bytes",
    # Issue 9: the X.509 flow beside the symmetric-key one.
    "heap_floor_x509_32bit_frozen_bytes",
    "heap_floor_x509_wheel_mpy_bytes",
    # Issue 19: the X.509 flow from .mpy files on a stock image.
    "heap_floor_x509_32bit_mpy_bytes",
    # Certificate issuance and messages up to IoT Hub's limits, on the ESP32 proxy.
    "csr_keygen_seconds_32bit_frozen",
    "csr_keygen_esp32_estimate_seconds_low",
    "csr_keygen_esp32_estimate_seconds_high",
    "heap_floor_issuance_32bit_frozen_bytes",
    "heap_floor_big_messages_32bit_frozen_bytes",
)

pytestmark = [pytest.mark.timeout(400), pytest.mark.slow]  # the timeout: a hang guard only


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _keys_in(folder: Path) -> list[str]:
    """Every symmetric or group key the bench handed to its emulators, and the body lines of every private key it
    made for X.509 devices."""
    keys = []
    for path in folder.rglob("enrollments.json"):
        doc = json.loads(path.read_text())
        keys += [e["symmetric_key"] for e in doc.get("individual", []) if "symmetric_key" in e]
        keys += [g["group_key"] for g in doc.get("groups", []) if "group_key" in g]
    for path in folder.rglob("x509-ca/*-key.pem"):
        keys += [line for line in path.read_text().splitlines() if line and not line.startswith("-----")]
    return keys


def test_quick_bench_writes_every_figure(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "host_tools",
            "bench",
            "--quick",
            "--fleet-devices",
            "12",
            "--heap-step",
            "65536",
            "--check-devices",
            "2",
            "--out",
            str(out),
            "--workdir",
            str(work),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=390,
    )

    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    results = json.loads((out / "results.json").read_text())
    assert results["errors"] == {}
    missing = [key for key in REQUIRED_NUMBERS if not _is_number(results.get(key))]
    assert not missing, f"not numbers: {missing}"
    assert results["fleet_devices"] == 12 and results["quick"] is True
    histogram = results["fleet_attempts_histogram"]
    assert histogram and all(key.isdigit() and _is_number(count) for key, count in histogram.items())
    assert sum(histogram.values()) == results["fleet_devices"]
    assert all(_is_number(n) for n in results["fleet_attempts_per_second"])
    assert all(_is_number(v) for v in results["mpy_modules"].values())
    assert results["trust_bundle_certificates"] == 3
    assert set(results["targets"]) >= {
        "heap_floor_bytes",
        "mpy_total_bytes",
        "provision_cpu_ratio_vs_sdk",
        "fleet_failures",
        "fleet_seconds",
        "csr_keygen_seconds_32bit_frozen",
    }
    assert results["csr_keygen_runtime"] == "unix32-frozen" and results["csr_keygen_runs"] == 3
    # The big messages met a fate each (handled, or read past as too large) and the device stayed connected.
    fates = results["heap_floors"]["heap_floor_big_messages_32bit_frozen_bytes"]["message_fates_at_floor"]
    assert set(fates) == {"c2d", "desired", "method"}
    # Every entry of the floors table measured, on the runtime it names; import cost and TLS heap per runtime.
    from host_tools.bench.floors import FLOORS, IMPORT_RUNTIMES

    assert set(results["heap_floors"]) == {f.key for f in FLOORS}
    for floor in FLOORS:
        assert results["heap_floors"][floor.key]["runtime"] == floor.runtime
        assert _is_number(results[floor.key])
    assert set(results["targets"]) >= {f.key for f in FLOORS if f.target_bytes}
    assert results["heap_floors"]["heap_floor_big_bundle_32bit_frozen_bytes"]["flow"].startswith("whole flow")
    for runtime in IMPORT_RUNTIMES:
        assert results["import_cost_bytes"][runtime]["azprov.dps"] > 0
        assert results["tls_heap_bytes"][runtime]["bundle10_gateway"]["certificates"] == 10
    # Frozen code stays in the binary: importing the firmware costs less heap there than from .mpy files.
    assert results["import_cost_total_bytes"]["unix32-frozen"] < results["import_cost_total_bytes"]["unix32"]
    assert results["provision_cpu_runtime"] == "unix32-frozen"
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "met" in proc.stdout or "missed" in proc.stdout  # the table was printed

    keys = set(_keys_in(work))
    assert keys  # the single device's key and the fleets' group keys
    for key in keys:
        assert key not in output
    assert "SharedAccessSignature" not in output and "sig=" not in output
