"""`make bench` (`python -m host_tools bench`): every measurement in one go on this machine.

1. build    one .mpy build of a snapshot of firmware/ (every later figure describes this build); per-module sizes
2. heap     the smallest -X heapsize the whole flow succeeds in (binary search, a fresh device folder per probe),
            the peak heap at the default size, live heap per step and per module (the wheel)
3. cached   a second boot of the same device: DPS connections and flash writes
4. floors   the heap floor of each entry of host_tools/bench/floors.py FLOORS: the 32-bit frozen build (the ESP32
            proxy), the 32-bit .mpy build and the wheel, lab and Azure-shaped PKI, 10-root bundle; import cost of
            each module on each runtime
5. cpu      firmware registration on the native 32-bit frozen binary (no CPython launcher) vs the official
            azure-iot-device SDK, interleaved pairs, CPU from wait4
6. csr      key generation + CSR for certificate issuance (azprov.csr) on the 32-bit frozen binary, median of
            several runs, with an ESP32 estimate (an assumed slowdown factor, not a measurement)
7. fleet    N devices against the emulator's rate limit (host_tools/bench/fleet_driver.py)

`--only STEP` runs some of them (the build always runs); `--floor KEY` measures only those FLOORS entries (and not
the import cost and TLS heap that the floors step otherwise adds).

Prints one table (figure, target, met/missed), writes OUT/results.json and OUT/chart.png. Exit status 1 only when
a measurement could not be taken; a missed target is a result, not an error. No key or token is printed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import traceback
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from host_tools.bench import cpu, fleet, floors
from host_tools.bench import device as dev
from host_tools.bench.chart import draw_chart
from host_tools.bench.report import (
    import_cost_table,
    module_table,
    obstacles,
    obstacles_table,
    results_table,
    targets,
)
from host_tools.board.harness import EmulatorProcess
from host_tools.board.unix_port import REPO, UMQTT_SOURCE, micropython_binary

FIRMWARE_DIR = REPO / "firmware"
DEFAULT_OUT = REPO / "bench"
DEFAULT_WORKDIR = REPO / "run" / "bench"

# Full run and --quick run; an option given on the command line wins over both.
DEFAULTS = {
    "full": {
        "fleet_devices": 1000,
        "rate": 20.0,
        "pairs": 7,
        "heap_step": 1024,
        "check_devices": 24,
        "check_rate": 1.0,
        "csr_runs": 11,
        # Each floor is searched against this many PKIs (new keys and certificates, so answers of slightly other
        # sizes) and the largest is kept: where fragmentation decides, one PKI's floor can be several KB lower.
        "floor_pkis": 3,
    },
    "quick": {
        "fleet_devices": 20,
        "rate": 10.0,
        "pairs": 1,
        "heap_step": 8192,
        "check_devices": 3,
        # Quick: fast enough that a handful of devices is not throttled (a throttled device waits out a retry spread
        # over its registration budget, up to a minute: the full run measures that).
        "check_rate": 5.0,
        "csr_runs": 3,
        "floor_pkis": 1,
    },
}
# --only: the steps after the build, by name.
STEPS = ("heap", "cpu", "floors", "csr", "fleet", "fleet-check")
HEAP_SEARCH_START = 24 * 1024  # the first probe: the target itself
# CPU per registration is measured on a native binary built from source: the wheel's `micropython` is a CPython
# launcher hosting the interpreter, whose start-up is no device cost. The 32-bit frozen build is the ESP32 proxy.
CPU_RUNTIME = "unix32-frozen"


# ------------------------------------------------------------------------------------------------ steps


def snapshot_firmware(workdir: Path) -> Path:
    """A copy of firmware/ as it is now: others may edit it during the run, the bench measures one version."""
    snapshot = workdir / "firmware"
    shutil.rmtree(snapshot, ignore_errors=True)
    shutil.copytree(FIRMWARE_DIR, snapshot, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return snapshot


def firmware_identity(snapshot: Path) -> dict:
    """Which firmware was measured: the commit, whether firmware/ had uncommitted edits, and a hash of the
    snapshot's files (the same hash means the same firmware, whatever git says)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in snapshot.rglob("*.py")):
        digest.update(path.relative_to(snapshot).as_posix().encode() + b"\0" + path.read_bytes())

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "commit": git("rev-parse", "--short", "HEAD") or None,
        "uncommitted_changes": bool(git("status", "--porcelain", "--", "firmware")),
        "sources_sha256": digest.hexdigest()[:16],
    }


def import_order(snapshot: Path) -> list[str]:
    """Firmware modules with each one after the modules it imports, so that the heap a module keeps once imported
    is charged to it and not to the first module that happened to pull it in. umqtt.simple last."""
    sources = {}
    for path in sorted((snapshot / "azprov").glob("*.py")):
        name = "azprov" if path.stem == "__init__" else f"azprov.{path.stem}"
        text = path.read_text()
        deps = set(re.findall(r"(?:from|import) (azprov\.\w+)", text))
        for names in re.findall(r"from azprov import ([\w ,]+)", text):  # `from azprov import a, b as c`
            deps |= {f"azprov.{part.split()[0]}" for part in names.split(",") if part.strip()}
        sources[name] = deps - {name}
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order or name in visiting or name not in sources:
            return
        visiting.add(name)
        for dep in sorted(sources[name]):
            visit(dep)
        visiting.discard(name)
        order.append(name)

    visit("azprov")
    for name in sorted(sources):
        visit(name)
    return order + ["umqtt.simple"]


def micropython_version() -> str:
    proc = subprocess.run(
        [micropython_binary(), "-c", "import sys; print(sys.version)"], capture_output=True, text=True, timeout=30
    )
    return proc.stdout.strip()


class BenchRun:
    def __init__(
        self,
        console: Console,
        progress: Progress,
        workdir: Path,
        settings: dict,
        quick: bool,
        floor_keys: tuple[str, ...] = (),
    ):
        self.floor_keys = floor_keys  # --floor: only these FLOORS entries, no import cost or TLS heap
        self.console = console
        self.progress = progress
        self.workdir = workdir
        self.settings = settings
        self.quick = quick
        self.results: dict = {}
        self.errors: dict[str, str] = {}
        self.secrets: list[str] = []
        self.build_rows = []
        self.snapshot: Path | None = None
        self.heap_probes: list[dict] = []
        self.cpu_pairs: list[dict] = []

    def step(self, name: str, function) -> None:
        task = self.progress.add_task(name, total=None)
        started = time.monotonic()
        try:
            function(task)
            self.progress.update(task, description=f"[green]{name}: done[/] ({time.monotonic() - started:.1f} s)")
        except Exception as exc:  # a measurement that could not be taken: recorded, the others still run
            message = dev.redact(f"{type(exc).__name__}: {exc}", self.secrets)
            self.errors[name] = message
            self.progress.update(task, description=f"[red]{escape(name)}: failed[/] {escape(message[:120])}")
            if not isinstance(exc, dev.MeasurementError):
                self.console.print(escape(dev.redact(traceback.format_exc(), self.secrets)))
        finally:
            self.progress.update(task, total=1, completed=1)

    # -- 1. build
    def build(self, task) -> None:
        from host_tools.board.build import build_firmware

        self.snapshot = snapshot_firmware(self.workdir)
        self.results["firmware"] = firmware_identity(self.snapshot)
        self.progress.update(task, description="build: mpy-cross on a snapshot of firmware/")
        self.build_rows = build_firmware(
            out=self.workdir / "mpy", target="unix", firmware_dir=self.snapshot, umqtt_source=UMQTT_SOURCE
        )
        firmware_mpy = [
            row for row in self.build_rows if row.output.suffix == ".mpy" and row.source.is_relative_to(self.snapshot)
        ]
        if not firmware_mpy:
            raise dev.MeasurementError("the build produced no firmware .mpy file")
        self.results["mpy_total_bytes"] = sum(row.output_bytes for row in firmware_mpy)
        self.results["mpy_modules"] = {row.name: row.output_bytes for row in firmware_mpy}
        self.results["mpy_source_total_bytes"] = sum(row.source_bytes for row in firmware_mpy)
        self.results["mpy_files"] = len(firmware_mpy)

    # -- 2, 3, 4: one emulator for every single-device measurement
    def device_measurements(self, stack: ExitStack) -> dev.DeviceImage | None:
        if not self.build_rows:
            self.errors["device measurements"] = "skipped: no build"
            return None
        from host_tools.provisioning import pki

        state = self.workdir / "device-emulator"
        shutil.rmtree(state, ignore_errors=True)
        state.mkdir(parents=True)
        key = dev.new_key()
        self.secrets.append(key)
        decoys = pki.write_bundle(state / "decoy-roots.pem", pki.make_decoy_roots(dev.BUNDLE_CERTIFICATES - 1))
        enrollments = dev.write_private_json(state / "enrollments.json", dev.bench_enrollments(decoys, key))
        # retry_after=0: the 202 -> poll wait is the service's choice, not the firmware's cost.
        emulator = stack.enter_context(EmulatorProcess(state, enrollments, ["--fault", "retry_after=0"]))
        return dev.DeviceImage(self.workdir / "mpy", emulator.info, key, self.workdir)

    def heap_floor(self, image: dev.DeviceImage, task) -> None:
        step = self.settings["heap_step"]

        def shown(probe: dev.HeapProbe) -> None:
            self.progress.update(
                task,
                description=f"heap floor: {probe.heap_bytes:,} B -> "
                f"{'ok' if probe.ok else 'fails'} ({len(self.heap_probes) + 1} probes)",
            )
            self.heap_probes.append(
                {
                    "heap_bytes": probe.heap_bytes,
                    "ok": probe.ok,
                    "reason": dev.redact(probe.reason, self.secrets),
                    "seconds": round(probe.seconds, 3),
                }
            )

        ceiling = self.default_heap_bytes()
        floor = dev.find_heap_floor(image, HEAP_SEARCH_START, ceiling, step, on_probe=shown)
        self.results.update(
            {
                "heap_floor_bytes": floor.floor_bytes,
                "heap_floor_step_bytes": floor.step_bytes,
                "heap_floor_probes": len(floor.probes),
                "heap_floor_confirmed": int(floor.confirmed),
                "heap_floor_failure_below": (
                    dev.redact(floor.last_failure.reason, self.secrets) if floor.last_failure else None
                ),
                "heap_floor_failure_heap_bytes": floor.last_failure.heap_bytes if floor.last_failure else None,
                "heap_floor_failure_after_step": floor.failure_step,
            }
        )

    def default_heap_bytes(self) -> int:
        proc = subprocess.run(
            [micropython_binary(), "-c", "import gc; gc.collect(); print(gc.mem_alloc() + gc.mem_free())"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return int(proc.stdout.strip())

    def heap_use(self, image: dev.DeviceImage, task) -> None:
        self.progress.update(task, description="heap use: peak run, cached boot, per step, per module")
        use = dev.measure_heap_use(image, import_order(self.snapshot), self.secrets)
        self.results.update(
            {
                "heap_peak_bytes": use.peak_bytes,
                "heap_default_size_bytes": use.heap_total_bytes,
                "heap_baseline_bytes": use.baseline_bytes,
                "heap_peak_collections": use.collections,
                "heap_peak_auto_collections": use.auto_collections,
                "heap_mem_peak_counter_bytes": use.mem_peak_counter_bytes,
                "heap_live_peak_bytes": use.live_peak_bytes,
                "heap_steps": use.steps,
                "heap_qstr_info": use.qstr_info,
                "heap_modules": use.modules,
                "heap_modules_total_bytes": sum(use.modules.values()),
                "trust_bundle_certificates": use.certificates,
                "cached_boot_dps_connections": use.cached_boot["dps_connections"],
                "cached_boot_flash_writes": use.cached_boot["flash_writes"],
                "cached_boot_used_cached_assignment": use.cached_boot["used_cached_assignment"],
            }
        )
        if use.auto_collections:
            raise dev.MeasurementError("the heap filled up during the peak run, so its peak is not the flow's")

    def floors(self, stack: ExitStack, task) -> None:
        """Every entry of floors.FLOORS, then the import cost of each module on each runtime."""
        if not self.build_rows:
            raise dev.MeasurementError("skipped: no build")
        key = dev.new_key()
        self.secrets.append(key)
        pkis = self.settings["floor_pkis"]
        emulator_sets = [floors.FlowEmulators(stack, self.workdir, key, f"-pki{n}" if n else "") for n in range(pkis)]
        emulators = emulator_sets[0]
        measured: dict[str, dict] = {}
        failed: list[str] = []
        chosen = [f for f in floors.FLOORS if not self.floor_keys or f.key in self.floor_keys]
        for index, floor in enumerate(chosen):
            entries = []
            for pki_index, pki_emulators in enumerate(emulator_sets):
                label = (
                    f"floors {index + 1}/{len(chosen)}, PKI {pki_index + 1}/{pkis}: {floor.runtime}, {floor.flow.name}"
                )
                self.progress.update(task, description=label)

                def shown(probe: dev.HeapProbe, label=label) -> None:
                    self.progress.update(
                        task, description=f"{label}: {probe.heap_bytes:,} B {'ok' if probe.ok else 'fails'}"
                    )

                try:
                    info = pki_emulators.info(floor.flow)
                    image = floors.image_for(self.workdir / "mpy", info, key, self.workdir, floor.runtime, floor.flow)
                    entries.append(floors.measure_floor(image, floor, self.settings["heap_step"], shown))
                except Exception as exc:  # one entry that cannot be measured does not stop the others
                    failed.append(f"{floor.key}: {dev.redact(f'{type(exc).__name__}: {exc}', self.secrets)}")
                    break
            if len(entries) < pkis:
                continue
            entry = max(entries, key=lambda e: e["floor_bytes"])  # the worst PKI: a floor every one of them met
            entry["floor_bytes_by_pki"] = [e["floor_bytes"] for e in entries]
            if entry["failure_below"]:
                entry["failure_below"] = dev.redact(entry["failure_below"], self.secrets)
            measured[floor.key] = entry
            self.results[floor.key] = entry["floor_bytes"]
        self.results["heap_floors"] = measured
        if self.floor_keys:
            if failed:
                raise dev.MeasurementError("; ".join(failed))
            return
        costs: dict[str, dict[str, int]] = {}
        lab = emulators.info(floors.WHOLE_FLOW)
        for runtime in floors.IMPORT_RUNTIMES:
            self.progress.update(task, description=f"floors: import cost of each module on {runtime}")
            image = floors.image_for(self.workdir / "mpy", lab, key, self.workdir, runtime, floors.WHOLE_FLOW)
            costs[runtime] = floors.import_costs(image, import_order(self.snapshot))
        self.results["import_cost_bytes"] = costs
        self.results["import_cost_total_bytes"] = {name: sum(c.values()) for name, c in costs.items()}
        # What TLS itself holds in each runtime's GC heap: the lab DPS connection (one P-256 root) and the gateway
        # connection trusting the 10-root RSA-4096 bundle (the trust root signs the gateway).
        big = emulators.info(floors.BIG_BUNDLE)
        bundle_file = str(Path(big["pki"]["trust_root"]).parent.parent / "decoy-roots.pem")
        tls: dict[str, dict] = {}
        for runtime in floors.IMPORT_RUNTIMES:
            self.progress.update(task, description=f"floors: TLS heap on {runtime}")
            image = floors.image_for(self.workdir / "mpy", lab, key, self.workdir, runtime, floors.WHOLE_FLOW)
            tls[runtime] = {"lab_dps": floors.tls_costs(image, lab, "dps", lab["pki"]["dps_root"])}
            both = image.work_dir / f"bundle10-{runtime}.pem"
            both.write_text(Path(bundle_file).read_text() + Path(big["pki"]["trust_root"]).read_text())
            image = floors.image_for(self.workdir / "mpy", big, key, self.workdir, runtime, floors.BIG_BUNDLE)
            tls[runtime]["bundle10_gateway"] = floors.tls_costs(image, big, "gateway", str(both))
        self.results["tls_heap_bytes"] = tls
        if failed:
            raise dev.MeasurementError("; ".join(failed))

    def cpu(self, image: dev.DeviceImage, task) -> None:
        pairs = self.settings["pairs"]
        image = dev.DeviceImage(image.build_dir, image.emulator_info, image.key, self.workdir, runtime=CPU_RUNTIME)
        self.progress.update(task, total=pairs, completed=0, description="cpu: firmware vs azure-iot-device SDK")

        def shown(index: int, pair: cpu.CpuPair) -> None:
            self.cpu_pairs.append(dict(asdict(pair), ratio=pair.ratio))
            self.progress.update(
                task, completed=index + 1, description=f"cpu: pair {index + 1}: SDK/firmware {pair.ratio:.1f}x"
            )

        comparison = cpu.compare_cpu_with_sdk(image, pairs, self.secrets, on_pair=shown)
        self.results.update(comparison.summary())
        self.results["provision_cpu_runtime"] = CPU_RUNTIME

    # -- 6. csr
    def csr_keygen(self, task) -> None:
        runs = self.settings["csr_runs"]
        self.progress.update(task, description=f"csr: {runs} P-384 key generations + CSRs on {CPU_RUNTIME}")
        self.results.update(cpu.csr_keygen(self.workdir, CPU_RUNTIME, runs))

    # -- 7. fleet
    def fleet(self, task) -> None:
        if self.snapshot is None:
            raise dev.MeasurementError("skipped: no firmware snapshot")
        devices, rate = self.settings["fleet_devices"], self.settings["rate"]
        group_key = dev.new_key()
        self.secrets.append(group_key)
        self.progress.update(
            task, total=devices, completed=0, description=f"fleet: {devices} devices at {rate:g} registrations/s"
        )

        def shown(fields: dict) -> None:
            self.progress.update(
                task,
                completed=int(fields["done"]),
                description=(
                    f"fleet: {fields['done']}/{devices} done, {fields['failed']} failed, "
                    f"{fields['attempts']} register attempts, {fields['elapsed_s']} s"
                ),
            )

        with fleet.start_fleet_emulator(self.workdir / "fleet-emulator", group_key, rate) as emulator:
            result = fleet.run_driver(
                self.workdir, self.snapshot, emulator, group_key, devices, "bench-fleet-", "fleet", on_progress=shown
            )
        retries = result["retry_attempts_per_second"]
        seconds = result["seconds"]
        self.results.update(
            {
                "fleet_devices": result["devices"],
                "fleet_failures": result["failures"],
                "fleet_failure_kinds": result["failure_kinds"],
                "fleet_seconds": seconds,
                "fleet_rate_limit": rate,
                "fleet_ideal_seconds": round(devices / rate, 3),
                "fleet_median_assignment_s": result["median_assignment_s"],
                "fleet_max_attempts": result["max_attempts"],
                "fleet_attempts_histogram": result["attempts_histogram"],
                "fleet_register_attempts": result["register_attempts"],
                "fleet_throttled_answers": result["throttled_answers"],
                "fleet_retries_scheduled": result["retries_scheduled"],
                "fleet_attempts_per_second": result["attempts_per_second"],
                "fleet_retry_attempts_per_second": retries,
                "fleet_peak_attempts_per_s": max(result["attempts_per_second"], default=0),
                "fleet_peak_retries_per_s": max(retries, default=0),
                "fleet_retry_peak_to_rate": round(max(retries, default=0) / rate, 3),
                "fleet_emulator_assigned": result["emulator"]["assigned"],
                "fleet_driver_cpu_s": result["driver_cpu_s"],
                "fleet_emulator_cpu_s": result["emulator_cpu_s"],
                # Share of one core while the fleet ran: near 1.0 would mean CPU-bound rather than rate-bound.
                "fleet_driver_cpu_share": round(result["driver_cpu_s"] / seconds, 3) if seconds else None,
                "fleet_emulator_cpu_share": round(result["emulator_cpu_s"] / seconds, 3) if seconds else None,
                "fleet_shell_constants": result["shell_constants"],
            }
        )
        if result["emulator"]["assigned"] != result["assigned"]:
            raise dev.MeasurementError(
                f"the driver counted {result['assigned']} assigned devices, the emulator "
                f"recorded {result['emulator']['assigned']}"
            )

    def fleet_check(self, task) -> None:
        """K real firmware processes and K driver devices, each against a fresh emulator at the same rate."""
        if self.snapshot is None or not self.build_rows:
            raise dev.MeasurementError("skipped: no build")
        devices, rate = self.settings["check_devices"], self.settings["check_rate"]
        group_key = dev.new_key()
        self.secrets.append(group_key)
        self.progress.update(task, description=f"fleet check: {devices} real Unix-port devices at {rate:g}/s")
        with fleet.start_fleet_emulator(self.workdir / "check-emulator-real", group_key, rate) as emulator:
            real = fleet.run_real_devices(
                self.workdir / "mpy", emulator, group_key, devices, "bench-check-", self.workdir
            )
        self.progress.update(task, description=f"fleet check: {devices} driver devices at {rate:g}/s")
        with fleet.start_fleet_emulator(self.workdir / "check-emulator-driver", group_key, rate) as emulator:
            driver = fleet.run_driver(
                self.workdir, self.snapshot, emulator, group_key, devices, "bench-check-", "check"
            )
        real_attempts = fleet.compare_attempts(real["emulator"])
        driver_attempts = fleet.compare_attempts(driver["emulator"])
        self.results.update(
            {
                "fleet_check_devices": devices,
                "fleet_check_rate_limit": rate,
                "fleet_check_real_failures": devices - real["emulator"]["assigned"],
                "fleet_check_driver_failures": devices - driver["emulator"]["assigned"],
                "fleet_check_real_median_attempts": real_attempts["median_attempts"],
                "fleet_check_driver_median_attempts": driver_attempts["median_attempts"],
                "fleet_check_real_max_attempts": real_attempts["max_attempts"],
                "fleet_check_driver_max_attempts": driver_attempts["max_attempts"],
                "fleet_check_real_seconds": real["seconds"],
                "fleet_check_driver_seconds": driver["seconds"],
                "fleet_check_real_unfinished": real["unfinished"],
                "fleet_check_real_max_rss_mb": real["max_rss_mb"],
                "fleet_check_real_cpu_s_per_device": real["cpu_s_per_device_median"],
                "fleet_check_driver_cpu_s_per_device": round(driver["driver_cpu_s"] / devices, 4),
            }
        )
        if real["unfinished"]:
            raise dev.MeasurementError(f"{real['unfinished']} real devices did not finish")


def machine_info() -> dict:
    info = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    try:
        info["micropython"] = micropython_version()
    except (OSError, subprocess.SubprocessError):
        info["micropython"] = None
    try:
        info["azure_iot_device"] = importlib.metadata.version("azure-iot-device")
    except importlib.metadata.PackageNotFoundError:
        info["azure_iot_device"] = None
    return info


@click.command("bench")
@click.option(
    "--quick",
    is_flag=True,
    help="Seconds, not minutes: tiny fleet, one CPU pair, coarse heap search "
    "(for the smoke test; the figures are not comparable).",
)
@click.option("--fleet-devices", type=click.IntRange(1, 5000), help="Devices in the fleet run [1000; quick 20].")
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    help="The emulator's registration rate limit R, per second [20; quick 10].",
)
@click.option("--pairs", type=click.IntRange(1, 50), help="Interleaved firmware/SDK CPU pairs [7; quick 1].")
@click.option(
    "--check-devices",
    type=click.IntRange(1, 200),
    help="Real Unix-port devices (and as many driver devices) in the driver check [24; quick 3].",
)
@click.option(
    "--heap-step",
    type=click.IntRange(256, 1 << 20),
    help="Resolution of the heap floor search in bytes [1024; quick 8192].",
)
@click.option(
    "--pkis",
    "floor_pkis",
    type=click.IntRange(1, 10),
    help="PKIs each heap floor is searched against; the largest floor is kept [3; quick 1].",
)
@click.option(
    "--csr-runs",
    type=click.IntRange(1, 100),
    help="Key generation + CSR runs whose median is taken [11; quick 3].",
)
@click.option(
    "--only",
    "only",
    multiple=True,
    type=click.Choice(STEPS),
    help="Run only this step (repeatable; the build always runs). Default: every step.",
)
@click.option(
    "--floor",
    "floor_keys",
    multiple=True,
    type=click.Choice([f.key for f in floors.FLOORS]),
    help="Measure only this heap floor (repeatable; implies --only floors unless --only is given; "
    "skips the import cost and TLS heap).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_OUT,
    show_default=True,
    help="Where results.json and chart.png go.",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_WORKDIR,
    show_default=True,
    help="Scratch folder: build, device folders, emulator state (holds test keys).",
)
def bench(
    quick: bool,
    fleet_devices,
    rate,
    pairs,
    check_devices,
    heap_step,
    csr_runs,
    floor_pkis,
    only,
    floor_keys,
    out: Path,
    workdir: Path,
):
    """Heap, footprint, CPU and fleet measurements: one table, bench/results.json, bench/chart.png."""
    settings = dict(DEFAULTS["quick" if quick else "full"])
    steps = set(only or (("floors",) if floor_keys else STEPS))
    for name, value in (
        ("fleet_devices", fleet_devices),
        ("rate", rate),
        ("pairs", pairs),
        ("check_devices", check_devices),
        ("heap_step", heap_step),
        ("csr_runs", csr_runs),
        ("floor_pkis", floor_pkis),
    ):
        if value is not None:
            settings[name] = value
    # Not a terminal (make bench in CI, a log file): wide enough that the table keeps one line per figure.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    generated_at = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    console.print(
        f"[bold]azprov bench[/] {'(quick) ' if quick else ''}- {settings['fleet_devices']} fleet "
        f"devices at R = {settings['rate']:g}/s, {settings['pairs']} CPU pairs, heap step "
        f"{settings['heap_step']} B; scratch in {escape(str(workdir))}"
    )

    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    run = BenchRun(console, progress, workdir, settings, quick, tuple(floor_keys))
    with progress, ExitStack() as stack:
        run.step("build", run.build)
        image = None
        if steps & {"heap", "cpu"}:
            try:
                image = run.device_measurements(stack)
            except Exception as exc:
                run.errors["device emulator"] = dev.redact(f"{type(exc).__name__}: {exc}", run.secrets)
        if image is not None and "heap" in steps:
            run.step("heap floor", lambda task: run.heap_floor(image, task))
            run.step("heap use + cached boot", lambda task: run.heap_use(image, task))
        if image is not None and "cpu" in steps:
            run.step("cpu vs sdk", lambda task: run.cpu(image, task))
        stack.close()  # the single-device emulator is done before the others start
        if "floors" in steps:
            with ExitStack() as floor_stack:
                run.step("heap floors by runtime", lambda task: run.floors(floor_stack, task))
        if "csr" in steps:
            run.step("csr keygen", run.csr_keygen)
        if "fleet" in steps:
            run.step("fleet", run.fleet)
        if "fleet-check" in steps:
            run.step("fleet check", run.fleet_check)

    results = dict(run.results)
    results.update(
        {
            "generated_at": generated_at,
            "quick": quick,
            "settings": settings,
            "steps": sorted(steps),  # a partial run (--only, --floor) says which steps it took
            "machine": machine_info(),
            "bench_seconds": round(time.monotonic() - started, 1),
            "heap_floor_search": run.heap_probes,
            "cpu_pairs": run.cpu_pairs,
            "errors": run.errors,
        }
    )
    results["targets"] = {t.key: {"op": t.op, "limit": t.limit, "met": t.met(results)} for t in targets(results)}
    results["target_obstacles"] = obstacles(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    try:
        draw_chart(results, out / "chart.png")
    except Exception as exc:  # the chart is a view of the results; they are already written
        run.errors["chart"] = f"{type(exc).__name__}: {exc}"
        (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")

    if run.build_rows:
        console.print(module_table(results, run.build_rows))
    if results.get("heap_steps"):
        steps = Table(title="live GC heap at each debug step (after a collection), log_level debug")
        steps.add_column("step")
        steps.add_column("live bytes", justify="right")
        for item in results["heap_steps"]:
            steps.add_row(escape(item["event"]), f"{item['live_bytes']:,}")
        console.print(steps)
    if results.get("import_cost_bytes"):
        console.print(import_cost_table(results))
    console.print(results_table(results))
    if results["target_obstacles"]:
        console.print(obstacles_table(results))
    if results.get("heap_floor_failure_below"):
        console.print(
            f"at {results['heap_floor_failure_heap_bytes']:,} B (the largest heap that failed) the flow "
            f"stopped after step {escape(str(results.get('heap_floor_failure_after_step')))} with: "
            f"{escape(results['heap_floor_failure_below'])}"
        )
    console.print(
        f"results: {escape(str(out / 'results.json'))}; chart: {escape(str(out / 'chart.png'))}; "
        f"{results['bench_seconds']:.0f} s"
    )
    for name, message in run.errors.items():
        console.print(f"[red]not measured[/] {escape(name)}: {escape(message)}")
    sys.exit(1 if run.errors else 0)
