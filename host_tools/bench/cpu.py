"""The CPU cost of one registration: the firmware on the MicroPython Unix port next to the official Azure SDK,
in interleaved pairs, each child's own CPU time taken from wait4."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from host_tools.bench.device import (
    DEVICE_ID,
    DEVICE_TIMEOUT_S,
    ID_SCOPE,
    SDK_CHILD,
    SDK_TIMEOUT_S,
    DeviceImage,
    MeasurementError,
    bench_lines,
    device_events,
    failure_reason,
    redact,
)
from host_tools.board.unix_port import device_command, device_env, micropython_binary


@dataclass
class ChildRun:
    status: int
    output: str
    cpu_s: float  # user + system of the child process, from wait4's rusage
    wall_s: float


def run_child_measured(
    command: list[str], cwd: Path, env: dict | None = None, stdin_text: str | None = None, timeout_s: float = 60
) -> ChildRun:
    """Runs a child process and returns its own CPU time (os.wait4 rusage: user + sys, threads included)."""
    with tempfile.TemporaryFile("w+") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            text=True,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
        )
        if stdin_text is not None:
            proc.stdin.write(stdin_text)
            proc.stdin.close()
        deadline = started + timeout_s
        while True:  # polls every few ms until the child ends or its time is up
            pid, wait_status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, wait_status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.002)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(wait_status)  # reaped here, so Popen must not wait again
        out.seek(0)
        return ChildRun(proc.returncode, out.read(), usage.ru_utime + usage.ru_stime, wall)


@dataclass
class CpuPair:
    firmware_cpu_s: float
    sdk_cpu_s: float
    firmware_wall_ms: float  # measured inside the device around the supervisor's steps up to provision
    firmware_process_wall_s: float
    sdk_process_wall_s: float
    order: str

    @property
    def ratio(self) -> float:
        return self.sdk_cpu_s / self.firmware_cpu_s


@dataclass
class CpuComparison:
    pairs: list[CpuPair]
    launcher_cpu_s: list[float]  # `micropython` running an empty program: the wheel's CPython host + start-up

    def summary(self) -> dict:
        ratios = [p.ratio for p in self.pairs]
        # The Unix-port wheel hosts MicroPython in a CPython process: its start-up is no device cost. This second
        # ratio takes each pair's launcher run off the firmware side (the SDK keeps its own interpreter start-up).
        own = [
            p.sdk_cpu_s / (p.firmware_cpu_s - launcher)
            for p, launcher in zip(self.pairs, self.launcher_cpu_s)
            if p.firmware_cpu_s > launcher
        ]
        return {
            "provision_cpu_ratio_excluding_launcher": statistics.median(own) if own else None,
            "provision_cpu_ratio_vs_sdk": statistics.median(ratios),
            "provision_cpu_ratio_min": min(ratios),
            "provision_cpu_ratio_max": max(ratios),
            "provision_cpu_pairs": len(self.pairs),
            "firmware_provision_cpu_s_median": statistics.median(p.firmware_cpu_s for p in self.pairs),
            "firmware_provision_cpu_s_min": min(p.firmware_cpu_s for p in self.pairs),
            "firmware_provision_cpu_s_max": max(p.firmware_cpu_s for p in self.pairs),
            "sdk_provision_cpu_s_median": statistics.median(p.sdk_cpu_s for p in self.pairs),
            "sdk_provision_cpu_s_min": min(p.sdk_cpu_s for p in self.pairs),
            "sdk_provision_cpu_s_max": max(p.sdk_cpu_s for p in self.pairs),
            "provision_wall_ms": statistics.median(p.firmware_wall_ms for p in self.pairs),
            "provision_wall_ms_min": min(p.firmware_wall_ms for p in self.pairs),
            "provision_wall_ms_max": max(p.firmware_wall_ms for p in self.pairs),
            "firmware_process_wall_s_median": statistics.median(p.firmware_process_wall_s for p in self.pairs),
            "sdk_process_wall_s_median": statistics.median(p.sdk_process_wall_s for p in self.pairs),
            "micropython_launcher_cpu_s_median": statistics.median(self.launcher_cpu_s),
        }


def compare_cpu_with_sdk(
    image: DeviceImage, pairs: int, secrets_: list[str], on_pair=lambda i, pair: None
) -> CpuComparison:
    """Interleaved pairs: the firmware's registration-only entry on the Unix port and the SDK's
    ProvisioningDeviceClient in a CPython child, same enrollment, same emulator; the order alternates per pair so
    a drift of the machine (frequency, cache, the emulator's own state) does not favour either side."""
    from host_tools.emulator.testing import ForwardingProxy

    info = image.emulator_info
    root = image.fresh_device("register-only", with_bench_scripts=True)  # no flash writes: one folder serves all
    firmware_command = device_command(("provisioning.json",), script="bench_register.py", runtime=image.runtime)
    launcher_command = [micropython_binary(image.runtime), "-c", "pass"]
    sdk_params = {
        "provisioning_host": info["dps"]["hostname"],
        "registration_id": DEVICE_ID,
        "id_scope": ID_SCOPE,
        "symmetric_key": image.key,
        "server_verification_cert": Path(info["pki"]["dps_root"]).read_text(),
    }
    results: list[CpuPair] = []
    launcher: list[float] = []
    with ForwardingProxy(info["dps"]["port"], target_host=info["dps"]["host"]) as proxy:
        sdk_input = json.dumps(dict(sdk_params, proxy_port=proxy.port))

        def firmware() -> tuple[ChildRun, float]:
            run = run_child_measured(firmware_command, root, env=device_env(), timeout_s=DEVICE_TIMEOUT_S)
            line = (bench_lines(run.output).get("register") or [{}])[-1]
            if run.status != 0 or line.get("status") != "assigned":
                raise MeasurementError(
                    "firmware registration failed: "
                    + redact(failure_reason(run.output, device_events(run.output)), secrets_)
                )
            return run, float(line["wall_ms"])

        def sdk() -> ChildRun:
            run = run_child_measured(
                [sys.executable, "-I", str(SDK_CHILD)], root, stdin_text=sdk_input, timeout_s=SDK_TIMEOUT_S
            )
            if run.status != 0 or '"assigned"' not in run.output:
                raise MeasurementError("SDK registration failed: " + redact(run.output.strip()[-400:], secrets_))
            return run

        for index in range(pairs):
            firmware_first = index % 2 == 0
            if firmware_first:
                fw_run, fw_wall_ms = firmware()
                sdk_run = sdk()
            else:
                sdk_run = sdk()
                fw_run, fw_wall_ms = firmware()
            launcher.append(run_child_measured(launcher_command, root, env=device_env(), timeout_s=30).cpu_s)
            pair = CpuPair(
                fw_run.cpu_s,
                sdk_run.cpu_s,
                fw_wall_ms,
                fw_run.wall_s,
                sdk_run.wall_s,
                "firmware, sdk" if firmware_first else "sdk, firmware",
            )
            results.append(pair)
            on_pair(index, pair)
    return CpuComparison(results, launcher)


# Certificate issuance's device-side cost (azprov.csr): key generation + CSR on the ESP32 proxy. The factor is the
# issue's estimate of how much slower an ESP32 (240 MHz Xtensa, software bignums) runs the same bytecode than this
# Unix port; it is an assumption, not a measurement: no board was measured.
ESP32_SLOWDOWN = (30, 100)


def csr_keygen(workdir: Path, runtime: str, runs: int) -> dict:
    """Wall time of `runs` key generations + CSRs (new_key, csr_der, private_key_der) in one MicroPython process on
    `runtime`, timed on the device with ticks_us (no process start-up in it): median, min, max in seconds, and the
    ESP32 estimate from ESP32_SLOWDOWN."""
    root = workdir / f"csr-keygen-{runtime}"
    root.mkdir(parents=True, exist_ok=True)
    script = root / "bench_flow.py"
    script.write_bytes((Path(__file__).resolve().with_name("assets") / "bench_flow.py").read_bytes())
    from host_tools.bench.device import run_in_device

    status, output = run_in_device(root, "bench_flow.py", ("-", "csr", runs), runtime=runtime, timeout_s=300)
    lines = bench_lines(output).get("csr", [])
    if status != 0 or len(lines) != runs:
        raise MeasurementError(f"key generation + CSR on {runtime} failed: {output.strip()[-200:]}")
    seconds = [int(line["us"]) / 1e6 for line in lines]
    median = statistics.median(seconds)
    low, high = ESP32_SLOWDOWN
    return {
        "csr_keygen_seconds_32bit_frozen": round(median, 4),
        "csr_keygen_seconds_min": round(min(seconds), 4),
        "csr_keygen_seconds_max": round(max(seconds), 4),
        "csr_keygen_runs": runs,
        "csr_keygen_runtime": runtime,
        "csr_bytes": int(lines[0]["csr_bytes"]),
        # An estimate, not a measurement: the median times the assumed slowdown range.
        "csr_keygen_esp32_estimate_seconds_low": round(median * low, 2),
        "csr_keygen_esp32_estimate_seconds_high": round(median * high, 2),
        "csr_keygen_esp32_factor_low": low,
        "csr_keygen_esp32_factor_high": high,
        "csr_keygen_esp32_estimate_factor": f"{low}-{high}x slower than the 32-bit Unix port (assumed, not measured)",
    }
