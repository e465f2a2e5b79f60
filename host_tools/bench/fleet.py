"""The fleet measurements of `make bench`: N devices power on together against the emulator's registration rate
limit (`--rate-limit R`, a group enrollment: one group key, per-device keys derived on the host).

The N devices are simulated by host_tools/bench/fleet_driver.py (the firmware's own protocol modules under CPython, one
TLS connection per device; its docstring says what is shared with the device and what is not). A calibration run
checks that driver against the real thing: K real firmware processes on the Unix port and K driver devices, each
against a fresh emulator with the same rate limit, compared on what the emulator itself recorded.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from host_tools.bench import device as dev
from host_tools.board.harness import EmulatorProcess
from host_tools.board.unix_port import REPO, device_command, device_env

WATCHDOG_S = 600  # the driver bounds itself by the registration deadline; this only catches a hang


def process_cpu_s(pid: int) -> float:
    """user + system CPU seconds of a running process (Linux /proc), for the emulator we started."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_fleet_emulator(state: Path, group_key: str, rate: float) -> EmulatorProcess:
    """An emulator with one group enrollment (no per-device entries) and the registration rate limit R."""
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    doc = {
        "id_scope": dev.ID_SCOPE,
        "trust_bundles": {"fleet-bundle": {"certificates": ["pki:trust-root"]}},
        "individual": [],
        "groups": [
            {"group_id": "bench-fleet", "group_key": group_key, "assigned_hub": dev.HUB, "trust_bundle": "fleet-bundle"}
        ],
    }
    enrollments = dev.write_private_json(state / "enrollments.json", doc)
    return EmulatorProcess(state, enrollments, ["--rate-limit", f"{rate:g}"])


def emulator_view(emulator: EmulatorProcess, prefix: str) -> dict:
    """What the emulator recorded for registration ids starting with `prefix`: the same oracle for the driver and
    for real devices. `attempts` in a record counts the register requests seen for that id."""
    attempts: dict[str, int] = {}
    assigned: set[str] = set()
    for record in emulator.registrations():
        registration_id = record.get("registration_id") or ""
        if not registration_id.startswith(prefix):
            continue
        attempts[registration_id] = max(attempts.get(registration_id, 0), int(record.get("attempts") or 0))
        if record.get("status") == "assigned":
            assigned.add(registration_id)
    return {"assigned": len(assigned), "attempts": attempts}


def run_driver(
    workdir: Path,
    snapshot: Path,
    emulator: EmulatorProcess,
    group_key: str,
    devices: int,
    prefix: str,
    name: str,
    on_progress=lambda fields: None,
) -> dict:
    """Runs host_tools/bench/fleet_driver.py as a child; returns its summary plus the emulator's CPU and records."""
    info = emulator.info
    spec = dev.write_private_json(
        workdir / f"{name}-spec.json",
        {
            "firmware_dir": str(snapshot),
            "devices": devices,
            "id_scope": dev.ID_SCOPE,
            "group_key": group_key,
            "registration_prefix": prefix,
            "dps_address": info["dps"]["host"],
            "dps_port": info["dps"]["port"],
            "dps_hostname": info["dps"]["hostname"],
            "dps_ca_file": info["pki"]["dps_root"],
            "progress_interval_s": 0.5,
        },
    )
    result_path = workdir / f"{name}-result.json"
    result_path.unlink(missing_ok=True)
    emulator_cpu_before = process_cpu_s(emulator.proc.pid)
    driver = subprocess.Popen(
        [sys.executable, "-m", "host_tools.bench.fleet_driver", str(spec), str(result_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    watchdog = threading.Timer(WATCHDOG_S, driver.kill)
    watchdog.start()
    tail: list[str] = []
    try:
        for line in driver.stdout:  # ends when the driver exits (or the watchdog kills it)
            if line.startswith("progress "):
                on_progress(dict(p.split("=", 1) for p in line.split()[1:] if "=" in p))
            else:
                tail = (tail + [line.rstrip()])[-20:]
        status = driver.wait(timeout=30)
    finally:
        watchdog.cancel()
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    emulator_cpu = process_cpu_s(emulator.proc.pid) - emulator_cpu_before
    if status != 0 or not result_path.exists():
        raise dev.MeasurementError(f"fleet driver exited with {status}: " + "\n".join(tail)[-600:])
    result = json.loads(result_path.read_text())
    result.pop("devices_detail", None)
    result["emulator_cpu_s"] = round(emulator_cpu, 3)
    result["emulator"] = emulator_view(emulator, prefix)
    return result


def run_real_devices(
    build_dir: Path, emulator: EmulatorProcess, group_key: str, devices: int, prefix: str, workdir: Path
) -> dict:
    """`devices` Unix-port processes, each its own flash folder with a key derived from the group key, all started
    at once on the registration-only entry (bench_register.py), reaped with wait4 for CPU and peak RSS."""
    from host_tools.bench.fleet_driver import device_key

    image = dev.DeviceImage(build_dir, emulator.info, key="", work_dir=workdir / "real-fleet")
    roots = []
    for index in range(1, devices + 1):
        registration_id = f"{prefix}{index:05d}"
        roots.append(
            image.fresh_device(
                registration_id,
                with_bench_scripts=True,
                registration_id=registration_id,
                symmetric_key=device_key(group_key, registration_id),
            )
        )
    outputs = [open(root / "bench-output.txt", "w+") for root in roots]
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            device_command(("provisioning.json",), script="bench_register.py"),
            cwd=root,
            env=device_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        for root, out in zip(roots, outputs)
    ]
    finished: dict[int, tuple[float, int, float, int]] = {}  # pid -> (seconds, status, cpu s, max rss KB)
    limit = started + WATCHDOG_S  # each device stops at its own registration deadline; this catches a hang
    try:
        while len(finished) < len(procs) and time.monotonic() < limit:  # polls, bounded by the deadline
            for proc in procs:
                if proc.pid in finished:
                    continue
                pid, wait_status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    proc.returncode = os.waitstatus_to_exitcode(wait_status)
                    finished[pid] = (
                        time.monotonic() - started,
                        proc.returncode,
                        usage.ru_utime + usage.ru_stime,
                        usage.ru_maxrss,
                    )
            time.sleep(0.01)
    finally:
        for proc in procs:
            if proc.pid not in finished:
                proc.kill()
                proc.wait()
        for out in outputs:
            out.close()
    ok = 0
    for root in roots:
        line = (dev.bench_lines((root / "bench-output.txt").read_text()).get("register") or [{}])[-1]
        ok += line.get("status") == "assigned"
    runs = list(finished.values())
    return {
        "devices": devices,
        "assigned": ok,
        "failures": devices - ok,
        "seconds": round(max((r[0] for r in runs), default=0.0), 3),
        "unfinished": devices - len(runs),
        "cpu_s_per_device_median": round(statistics.median(r[2] for r in runs), 4) if runs else None,
        "max_rss_mb": round(max((r[3] for r in runs), default=0) / 1024, 1),
        "emulator": emulator_view(emulator, prefix),
    }


def compare_attempts(view: dict) -> dict:
    attempts = list(view["attempts"].values())
    return {
        "median_attempts": statistics.median(attempts) if attempts else None,
        "max_attempts": max(attempts, default=0),
    }
