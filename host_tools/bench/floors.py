"""Heap floors by runtime and flow: the smallest -X heapsize in which a flow succeeds, on each MicroPython runtime
(host_tools/board/runtimes.py), and the heap each firmware module keeps once imported there.

A floor is one entry of FLOORS: its results.json key, the runtime, the flow (PKI profile, trust bundle, extra
provisioning fields) and its target, if the issue set one. A new flow (the X.509 flow, the default application with
hub features) is a new Flow and one Floor line per runtime; report.py turns every target here into a verdict.
"""

from __future__ import annotations

import shutil
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from host_tools.bench import device as dev
from host_tools.board.harness import EmulatorProcess


@dataclass(frozen=True)
class Flow:
    """What the device does while its floor is measured (always the whole flow: DPS, bundle, gateway, telemetry)."""

    name: str
    pki_profile: str = "lab"  # host_tools/provisioning/emulator_pki.py PROFILES
    bundle_roots: int = dev.BUNDLE_CERTIFICATES  # trust bundle: decoy roots of the profile's kind, trust root last
    provisioning: dict = field(default_factory=dict, hash=False, compare=False)  # extra provisioning.json fields
    x509: bool = False  # an X.509 device (EC P-256 certificate + intermediate, group enrollment) instead of a key
    # main.py: the default application (telemetry + device twin, direct methods, C2D); bench_telemetry_only.py: the
    # same flow with none of the hub modules loaded (azprov.supervisor.main(hub_features=False))
    script: str = "main.py"
    # The host sends messages while the device runs (host_tools/bench/driven.py): the device runs until stopped.
    driven: bool = False


WHOLE_FLOW = Flow("whole flow, default application (twin, methods, C2D on), lab PKI (P-256), 3-root bundle")
TELEMETRY_ONLY = Flow(
    "telemetry-only flow (no twin, methods or C2D), lab PKI, 3-root bundle", script="bench_telemetry_only.py"
)
AZURE_FLOW = Flow("whole flow, Azure-shaped PKI (RSA), 3 RSA-4096 roots", pki_profile="azure")
X509_FLOW = Flow("whole flow, X.509 device certificate (EC P-256 + intermediate), lab PKI, 3-root bundle", x509=True)
BIG_BUNDLE = Flow("whole flow, Azure-shaped PKI, 10 RSA-4096 roots", pki_profile="azure", bundle_roots=10)
ISSUANCE_FLOW = Flow(
    "whole flow, symmetric onboarding with certificate issuance (device P-384 key + CSR), mutual TLS at the gateway "
    "with the issued certificate, lab PKI, 3-root bundle",
    provisioning={"certificate_issuance": True, "registration_id": dev.ISSUANCE_DEVICE_ID},
)
BIG_MESSAGES = Flow(
    "big messages: default application, a 40 KB C2D, a 30 KB desired patch and a 100 KB method payload while "
    "connected, then telemetry on the same connection, lab PKI, 3-root bundle",
    provisioning={"telemetry_count": 0, "telemetry_interval_s": 1},
    driven=True,
)


@dataclass(frozen=True)
class Floor:
    key: str  # results.json key (issue contract for the first four)
    runtime: str
    flow: Flow
    target_bytes: int | None = None
    # While the target is missed: the next lever (measured obstacles come from the run itself, report.obstacles).
    next_lever: str | None = None


# The next lever for a missed floor target (issue 19; what stands in the way is measured by each run).
MPY_LEVER = (
    "the firmware's bytecode is in RAM (.mpy) and each phase holds about 55 KB of it with the names it interns (the "
    "live heap by phase, above; the provision code is released before the hub code loads, and interned names are "
    "never freed): less code per phase (the hub and client modules, the supervisor's own loop), or a firmware "
    "image that runs .mpy in place (azprov frozen in, or a ROMFS partition)"
)
FROZEN_LEVER = (
    "heap fragmentation before the DPS connection: just below the floor the DPS TLS context cannot place one 537-byte "
    "CA certificate with about 12 KB free, the live heap (about 26 KB at DPS connected) being small objects in every "
    "region: fewer resident functions, classes and module globals before provisioning, a smaller configuration object"
)
BUNDLE_LEVER = (
    "heap fragmentation after provisioning: just below the floor the gateway's TLS context cannot join one 1,454-byte "
    "RSA-4096 root from the stored PEM with about 23 KB free: one DER buffer made before the connection and reused for "
    "every root (MicroPython's load_verify_locations takes bytes only, so it costs a copy per root today)"
)

FLOORS = (
    # Issue 19 (fits the stock ESP32 image with .mpy files): the .mpy targets leave an application room in the
    # ~100 KB a stock ESP32 has free after Wi-Fi; the frozen ones are the custom image's.
    Floor("heap_floor_32bit_frozen_bytes", "unix32-frozen", WHOLE_FLOW, 28 * 1024, FROZEN_LEVER),
    Floor("heap_floor_32bit_mpy_bytes", "unix32", WHOLE_FLOW, 60 * 1024, MPY_LEVER),
    Floor("heap_floor_wheel_mpy_bytes", "wheel", WHOLE_FLOW),
    Floor("heap_floor_x509_32bit_frozen_bytes", "unix32-frozen", X509_FLOW, 32 * 1024, FROZEN_LEVER),
    Floor("heap_floor_x509_32bit_mpy_bytes", "unix32", X509_FLOW, 64 * 1024, MPY_LEVER),
    Floor("heap_floor_x509_wheel_mpy_bytes", "wheel", X509_FLOW),
    # beside the three above (the default application, every hub feature on): the telemetry-only flow
    Floor("heap_floor_telemetry_only_32bit_frozen_bytes", "unix32-frozen", TELEMETRY_ONLY),
    Floor("heap_floor_telemetry_only_32bit_mpy_bytes", "unix32", TELEMETRY_ONLY, 48 * 1024, MPY_LEVER),
    Floor("heap_floor_telemetry_only_wheel_mpy_bytes", "wheel", TELEMETRY_ONLY),
    Floor("heap_floor_big_bundle_32bit_frozen_bytes", "unix32-frozen", BIG_BUNDLE, 40 * 1024, BUNDLE_LEVER),
    Floor("heap_floor_big_bundle_32bit_mpy_bytes", "unix32", BIG_BUNDLE),
    Floor("heap_floor_azure_32bit_frozen_bytes", "unix32-frozen", AZURE_FLOW),
    Floor("heap_floor_azure_32bit_mpy_bytes", "unix32", AZURE_FLOW),
    Floor("heap_floor_azure_wheel_mpy_bytes", "wheel", AZURE_FLOW),
    Floor("heap_floor_issuance_32bit_frozen_bytes", "unix32-frozen", ISSUANCE_FLOW, 40 * 1024, FROZEN_LEVER),
    Floor("heap_floor_big_messages_32bit_frozen_bytes", "unix32-frozen", BIG_MESSAGES, 40 * 1024, FROZEN_LEVER),
)
# Runtimes whose per-module import cost is measured (results["import_cost_bytes"][runtime][module]).
IMPORT_RUNTIMES = ("unix32-frozen", "unix32", "wheel")


class FlowEmulators:
    """One emulator per (PKI profile, bundle size), started on first use, all stopped with the stack. `label` tells
    apart the sets of emulators a bench run makes to measure each floor with more than one PKI."""

    def __init__(self, stack: ExitStack, workdir: Path, key: str, label: str = ""):
        self._stack = stack
        self._workdir = workdir
        self._key = key
        self._label = label
        self._started: dict[tuple[str, int], dict] = {}

    def info(self, flow: Flow) -> dict:
        from host_tools.provisioning import pki
        from host_tools.provisioning.issuance_ca import ensure_issuance_ca

        group = (flow.pki_profile, flow.bundle_roots)
        if group not in self._started:
            state = self._workdir / f"floor-emulator{self._label}-{flow.pki_profile}-{flow.bundle_roots}"
            shutil.rmtree(state, ignore_errors=True)
            state.mkdir(parents=True)
            profile = pki.PROFILES[flow.pki_profile]
            pki.ensure_emulator_pki(state / "pki", profile=flow.pki_profile)
            decoys = pki.write_bundle(
                state / "decoy-roots.pem",
                pki.make_decoy_roots(flow.bundle_roots - 1, label="public root", kind=profile.root),
            )
            # Every emulator also enrolls an X.509 group CA, with one device certificate for the X.509 flow.
            group_ca = pki.ensure_x509_group_ca(state / "x509-ca")
            x509_files = pki.issue_device(group_ca, dev.X509_DEVICE_ID, state / "x509-ca")
            # ... and an issuance policy (the issuance flow's device) and the big-messages group.
            policy = ensure_issuance_ca(state / "issuance-ca").policy(validity_days=30)
            enrollments = dev.write_private_json(
                state / "enrollments.json",
                dev.bench_enrollments(decoys, self._key, x509_ca=group_ca.root, issuance_policy=policy),
            )
            emulator = self._stack.enter_context(EmulatorProcess(state, enrollments, ["--fault", "retry_after=0"]))
            self._started[group] = dict(emulator.info, x509_device=[str(p) for p in x509_files])
        return self._started[group]


def image_for(build_dir: Path, info: dict, key: str, workdir: Path, runtime: str, flow: Flow) -> dev.DeviceImage:
    x509_files = tuple(Path(p) for p in info["x509_device"]) if flow.x509 else None
    return dev.DeviceImage(
        build_dir,
        info,
        key,
        workdir,
        runtime=runtime,
        extra_provisioning=dict(flow.provisioning),
        x509_files=x509_files,
    )


def measure_floor(image: dev.DeviceImage, floor: Floor, step_bytes: int, on_probe) -> dict:
    """The floor of one entry, with what stopped the flow just below it."""
    from host_tools.bench.driven import BigMessages

    ceiling = dev.default_heap_bytes(floor.runtime)
    runner = BigMessages(image.emulator_info, image.key) if floor.flow.driven else None
    found = dev.find_heap_floor(
        image, 16 * 1024, ceiling, step_bytes, on_probe=on_probe, script=floor.flow.script, runner=runner
    )
    entry = {
        "runtime": floor.runtime,
        "flow": floor.flow.name,
        "floor_bytes": found.floor_bytes,
        "step_bytes": found.step_bytes,
        "probes": len(found.probes),
        "confirmed": found.confirmed,
        "target_bytes": floor.target_bytes,
        "failure_below": found.last_failure.reason if found.last_failure else None,
        "failure_after_step": found.failure_step,
    }
    if runner is not None:  # what the device did with each message at its floor (handled, or read past)
        entry["message_fates_at_floor"] = runner.fates.get(found.floor_bytes)
    else:
        entry["live_bytes_by_phase"] = live_by_phase(image, floor.flow)
    return entry


# The events that open each phase of the flow: the heap live then is what the phase starts from (code, names and
# state it holds before its own data arrives).
PHASE_EVENTS = ("config_loaded", "dps_connected", "registered", "gateway_verified", "hub_ready", "done")


def live_by_phase(image: dev.DeviceImage, flow: Flow) -> dict[str, int]:
    """Live heap (right after a collection) at each phase's first event, from one debug-logging run of the flow at
    the runtime's default heap, and the interned-name pool at the end (never freed: see docs/performance.md)."""
    root = image.fresh_device(f"phases-{image.runtime}", with_bench_scripts=True, log_level="debug")
    status, output = dev.run_in_device(root, "bench_flow.py", ("provisioning.json", "steps"), runtime=image.runtime)
    shutil.rmtree(root, ignore_errors=True)
    events = dev.device_events(output)
    report = (dev.bench_lines(output).get("heap") or [None])[-1]
    if status != 0 or report is None:
        return {}
    total = int(report["heap_total"])
    live = {}
    for _, event, fields in events:
        if event in PHASE_EVENTS and event not in live and "heap_free" in fields:
            live[event] = total - int(fields["heap_free"])
    pool = next((line for line in output.splitlines() if line.startswith("qstr pool")), "")
    if "n_total_bytes=" in pool:
        live["qstr_pool"] = int(pool.split("n_total_bytes=")[1].split()[0])
    return live


def import_costs(image: dev.DeviceImage, module_names: list[str]) -> dict[str, int]:
    """Heap each module keeps once imported on the image's runtime (frozen: its code stays in the binary)."""
    root = image.fresh_device(f"imports-{image.runtime}", with_bench_scripts=True)
    status, output = dev.run_in_device(
        root, "bench_flow.py", ("provisioning.json", "imports", *module_names), runtime=image.runtime
    )
    if status != 0:
        raise dev.MeasurementError(f"imports on {image.runtime} failed: {output.strip()[-200:]}")
    return {line["module"]: int(line["bytes"]) for line in dev.bench_lines(output).get("import", [])}


def tls_costs(image: dev.DeviceImage, info: dict, endpoint: str, ca_file: str) -> dict[str, int]:
    """Heap a TLS context trusting `ca_file` keeps and what one verified connection to `endpoint` adds."""
    root = image.fresh_device(f"tls-{image.runtime}-{endpoint}", with_bench_scripts=True)
    target = info[endpoint]
    args = ("provisioning.json", "tls", target["host"], target["port"], target["hostname"], ca_file)
    status, output = dev.run_in_device(root, "bench_flow.py", args, runtime=image.runtime)
    line = (dev.bench_lines(output).get("tls") or [None])[-1]
    if status != 0 or line is None:
        raise dev.MeasurementError(f"TLS cost on {image.runtime} failed: {output.strip()[-200:]}")
    return {name: int(value) for name, value in line.items()}
