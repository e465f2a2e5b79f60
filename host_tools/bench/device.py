"""The device-side measurements of `make bench`, on the MicroPython Unix port against the emulator: the smallest
heap the whole flow runs in, the heap it uses and a boot with a cached assignment (the CPU comparison with the
official Azure SDK is in cpu.py).

Every device run gets a fresh folder laid out like a board's flash (docs/design.md), copied from ONE build made at
the start of the bench, so every figure of a run describes the same firmware even while firmware/ is being edited.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from host_tools.board import runtimes
from host_tools.board.harness import parse_device_line
from host_tools.board.unix_port import device_command, device_env, micropython_binary
from host_tools.secret_files import copy_secret, write_secret

ASSETS_DIR = Path(__file__).resolve().with_name("assets")
SDK_CHILD = Path(__file__).resolve().with_name("sdk_child.py")
ID_SCOPE = "0ne0BENCH01"  # 0ne + 8 letters or digits, as the device checks
HUB = "bench-hub.azure-devices.net"
DEVICE_ID = "bench-device"
X509_DEVICE_ID = "bench-x509-device"  # the X.509 flow's device (EC P-256 certificate + intermediate)
ISSUANCE_DEVICE_ID = "bench-issuance-device"  # the issuance flow's device: symmetric onboarding, an issued certificate
BIG_MESSAGES_GROUP = "bench-big-messages"  # a symmetric group: each big-messages probe is a new device (twin, queue)
DPS_CA_NAME = "certs/dps-root.pem"
# The flow under test stores a trust bundle of this many certificates: decoy roots first, the gateway's root last.
BUNDLE_CERTIFICATES = 3
DEVICE_TIMEOUT_S = 90  # one device run; the firmware's own registration deadline is shorter
SDK_TIMEOUT_S = 90
BENCH_LINE = "azprov-bench"


class MeasurementError(RuntimeError):
    """A figure could not be taken (as opposed to a figure that misses its target)."""


def new_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def redact(text: str, secrets_: list[str]) -> str:
    """Output shown to people goes through this: no key, no token, whatever printed it."""
    for secret in secrets_:
        if secret:
            text = text.replace(secret, "<redacted>")
    return re.sub(r"SharedAccessSignature [^\s\"']+", "SharedAccessSignature <redacted>", text)


def bench_lines(output: str) -> dict[str, list[dict[str, str]]]:
    """`azprov-bench NAME k=v ...` lines printed by the bench scripts, by NAME."""
    found: dict[str, list[dict[str, str]]] = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == BENCH_LINE:
            found.setdefault(parts[1], []).append(dict(p.split("=", 1) for p in parts[2:] if "=" in p))
    return found


def device_events(output: str) -> list[tuple[str, str, dict[str, str]]]:
    return [parsed for parsed in map(parse_device_line, output.splitlines()) if parsed]


def last_event(events, name: str) -> dict[str, str] | None:
    found = [fields for _, event, fields in events if event == name]
    return found[-1] if found else None


def failure_reason(output: str, events) -> str:
    """One line saying why a run failed: the firmware's classified error or the interpreter's last words."""
    failed = last_event(events, "failed")
    if failed:
        return f"{failed.get('kind')}: {failed.get('message', '')}".strip()
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    if not lines:
        return "no output"
    # A MemoryError's traceback: its innermost frame says which line of which module ran out.
    frames = [line for line in lines if line.startswith('File "')]
    where = f" (at {frames[-1]})" if frames else ""
    return lines[-1][:200] + where


# ------------------------------------------------------------------------------------------------ set-up


def bench_enrollments(
    decoy_bundle: Path, key: str, x509_ca: Path | None = None, issuance_policy: dict | None = None
) -> dict:
    """One individual enrollment whose trust bundle holds BUNDLE_CERTIFICATES certificates; with `x509_ca`, also an
    X.509 enrollment group on that CA (for X509_DEVICE_ID, with the same bundle); with `issuance_policy`, also
    ISSUANCE_DEVICE_ID (same key, certificates issued under that policy) and the symmetric group BIG_MESSAGES_GROUP
    (group key `key`), all with the same bundle."""
    groups = []
    individual = [
        {
            "registration_id": DEVICE_ID,
            "symmetric_key": key,
            "device_id": DEVICE_ID,
            "assigned_hub": HUB,
            "trust_bundle": "bench-bundle",
        }
    ]
    document = {
        "id_scope": ID_SCOPE,
        "trust_bundles": {"bench-bundle": {"certificates": [str(decoy_bundle), "pki:trust-root"]}},
    }
    if issuance_policy is not None:
        document["issuance_policies"] = {"bench-issuance": issuance_policy}
        individual.append(
            dict(
                individual[0],
                registration_id=ISSUANCE_DEVICE_ID,
                device_id=ISSUANCE_DEVICE_ID,
                certificate_issuance={"policy": "bench-issuance"},
            )
        )
        groups.append(
            {"group_id": BIG_MESSAGES_GROUP, "group_key": key, "assigned_hub": HUB, "trust_bundle": "bench-bundle"}
        )
    if x509_ca is not None:
        groups.append(
            {
                "group_id": "bench-x509",
                "ca_certificate": str(x509_ca),
                "assigned_hub": HUB,
                "trust_bundle": "bench-bundle",
            }
        )
    return dict(document, individual=individual, groups=groups)


def write_private_json(path: Path, doc: dict) -> Path:
    # Enrollment files and specs hold keys: owner-only, like the emulator writes its own.
    return write_secret(path, json.dumps(doc, indent=2))


@dataclass
class DeviceImage:
    """What every bench device folder is made of: one build, the emulator's endpoints and the device's key."""

    build_dir: Path
    emulator_info: dict
    key: str
    work_dir: Path
    _count: int = 0
    runtime: str | None = None  # host_tools/board/runtimes.py name; None: the wheel
    extra_provisioning: dict = field(default_factory=dict)
    # The X.509 flow: (certificate chain file, key file) of X509_DEVICE_ID; None: the symmetric-key device.
    x509_files: tuple[Path, Path] | None = None

    def provisioning(self, **changes) -> dict:
        info = self.emulator_info
        doc = {
            "dps_host": info["dps"]["hostname"],
            "dps_port": info["dps"]["port"],
            "id_scope": ID_SCOPE,
            "registration_id": DEVICE_ID,
            "symmetric_key": self.key,
            "dps_ca_file": DPS_CA_NAME,
            "gateway_host": info["gateway"]["hostname"],
            "gateway_port": info["gateway"]["port"],
        }
        if self.x509_files is not None:
            del doc["symmetric_key"]
            doc.update(
                registration_id=X509_DEVICE_ID,
                attestation="x509",
                certificate_file="certs/device.pem",
                private_key_file="certs/device-key.pem",
            )
        doc.update(self.extra_provisioning)
        doc.update(changes)
        return doc

    def fresh_device(self, label: str, with_bench_scripts: bool = False, **provisioning) -> Path:
        """A new flash folder: the build, the DPS CA file, provisioning.json (and the bench scripts if asked)."""
        self._count += 1
        root = self.work_dir / "devices" / f"{self._count:03d}-{label}"
        shutil.rmtree(root, ignore_errors=True)
        if runtimes.get(self.runtime).frozen:  # the firmware and umqtt are in the binary: main.py only
            root.mkdir(parents=True)
            shutil.copy2(self.build_dir / "main.py", root / "main.py")
        else:
            shutil.copytree(self.build_dir, root)
        (root / "certs").mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.emulator_info["pki"]["dps_root"], root / DPS_CA_NAME)
        if self.x509_files is not None:
            shutil.copy2(self.x509_files[0], root / "certs" / "device.pem")
            copy_secret(self.x509_files[1], root / "certs" / "device-key.pem")
        write_private_json(root / "provisioning.json", self.provisioning(**provisioning))
        if with_bench_scripts:
            for script in sorted(ASSETS_DIR.glob("*.py")):
                shutil.copy2(script, root / script.name)
        return root


def default_heap_bytes(runtime: str | None = None) -> int:
    """The GC heap a runtime has without -X heapsize."""
    proc = subprocess.run(
        [micropython_binary(runtime), "-c", "import gc; gc.collect(); print(gc.mem_alloc() + gc.mem_free())"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return int(proc.stdout.strip())


def run_in_device(
    root: Path,
    script: str = "main.py",
    args=(),
    heapsize: int | None = None,
    timeout_s: float = DEVICE_TIMEOUT_S,
    runtime: str | None = None,
) -> tuple[int, str]:
    """Runs a script in a device folder on the Unix port (`runtime`: default the wheel); (status, stdout+stderr)."""
    try:
        proc = subprocess.run(
            device_command(args, heapsize, script, runtime),
            cwd=root,
            env=device_env(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired as exc:
        partial = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return -1, partial + f"\n(bench: killed after {timeout_s:.0f} s)"
    return proc.returncode, proc.stdout + proc.stderr


def flow_succeeded(status: int, events) -> bool:
    return status == 0 and last_event(events, "telemetry_acknowledged") is not None


# ------------------------------------------------------------------------------------------------ heap floor


@dataclass
class HeapProbe:
    heap_bytes: int
    ok: bool
    reason: str
    seconds: float


@dataclass
class HeapFloor:
    floor_bytes: int
    step_bytes: int
    probes: list[HeapProbe] = field(default_factory=list)
    confirmed: bool = False
    last_failure: HeapProbe | None = None  # the largest failing heap: where the flow ran out
    failure_step: str | None = None  # the last step reached at that heap (debug-logging rerun)


def find_heap_floor(
    image: DeviceImage,
    start_bytes: int,
    ceiling_bytes: int,
    step_bytes: int,
    on_probe=lambda probe: None,
    script: str = "main.py",
    runner=None,
) -> HeapFloor:
    """The smallest -X heapsize (a multiple of step_bytes) at which the whole flow succeeds, by binary search.

    Each probe is a fresh device folder against the running emulator. Upward doubling from `start_bytes` finds a
    heap that works (bounded by `ceiling_bytes`); the search then halves the gap between the largest failure and
    the smallest success. Success is not strictly monotonic in heap size (fragmentation), so the floor is probed
    a second time; if it fails then, the next step up that works twice is taken.

    `runner` (default run_flow) runs one probe: a flow the host drives while the device runs (the big messages) brings
    its own (host_tools/bench/driven.py)."""
    probes: list[HeapProbe] = []
    runner = runner or run_flow

    def probe(heap: int) -> bool:
        started = time.monotonic()
        ok, reason, _ = runner(image, f"heap-{heap}", heap, script)
        result = HeapProbe(heap, ok, reason, time.monotonic() - started)
        probes.append(result)
        on_probe(result)
        return ok

    def rounded(value: int) -> int:
        return max(step_bytes, (value + step_bytes - 1) // step_bytes * step_bytes)

    failing = 0  # largest heap known to fail (0: none tried yet; a heap of 0 cannot run anything)
    working = rounded(start_bytes)
    while not probe(working):
        failing = working
        if working >= ceiling_bytes:
            raise MeasurementError(
                f"the flow does not succeed even with a {ceiling_bytes}-byte heap: {probes[-1].reason}"
            )
        working = min(rounded(working * 2), rounded(ceiling_bytes))
    while working - failing > step_bytes:  # at most log2(ceiling / step) probes
        middle = rounded((failing + working) // 2)
        if middle >= working:
            middle = working - step_bytes
        if probe(middle):
            working = middle
        else:
            failing = middle
    confirmed = probe(working)
    retries = 0
    while not confirmed and retries < 4:  # bounded walk up past a non-monotonic spot
        retries += 1
        working += step_bytes
        confirmed = probe(working) and probe(working)
    failures = [p for p in probes if not p.ok and p.heap_bytes < working]
    last_failure = max(failures, key=lambda p: p.heap_bytes) if failures else None
    failure_step = None
    if last_failure is not None:
        failure_step = last_step_before_failure(image, last_failure.heap_bytes, script, runner)
    return HeapFloor(working, step_bytes, probes, confirmed, last_failure, failure_step)


def run_flow(image: DeviceImage, label: str, heap: int | None, script: str = "main.py", **provisioning):
    """One run of the flow in a fresh device folder (removed afterwards): (succeeded, "ok" or why not, events)."""
    root = image.fresh_device(label, with_bench_scripts=script != "main.py", **provisioning)
    status, output = run_in_device(root, script=script, heapsize=heap, runtime=image.runtime)
    events = device_events(output)
    shutil.rmtree(root, ignore_errors=True)
    ok = flow_succeeded(status, events)
    return ok, "ok" if ok else failure_reason(output, events), events


def last_step_before_failure(image: DeviceImage, heap: int, script: str = "main.py", runner=None) -> str | None:
    """Where the flow ran out of heap: the last event a debug-logging rerun printed before failing (debug lines
    allocate too, so this rerun may stop a little earlier than the probe did)."""
    ok, _, events = (runner or run_flow)(image, f"heap-{heap}-debug", heap, script, log_level="debug")
    before = [event for _, event, _ in events if event != "failed"]
    if ok or not before:
        return None
    return before[-1]


# ------------------------------------------------------------------------------------------------ heap use


@dataclass
class HeapUse:
    heap_total_bytes: int
    peak_bytes: int  # high-water mark of the GC heap during the flow (live + not yet collected)
    baseline_bytes: int  # heap in use before the firmware is imported (interpreter + bench wrapper)
    collections: int
    auto_collections: int
    mem_peak_counter_bytes: int
    certificates: int
    cached_boot: dict[str, int]
    steps: list[dict] = field(default_factory=list)  # live heap at each debug step
    live_peak_bytes: int = 0
    qstr_info: str = ""
    modules: dict[str, int] = field(default_factory=dict)  # heap each module keeps once imported


def _heap_report(output: str, what: str) -> dict[str, str]:
    reports = bench_lines(output).get("heap")
    if not reports:
        raise MeasurementError(f"{what}: the bench wrapper printed no heap report")
    return reports[-1]


def measure_heap_use(image: DeviceImage, module_names: list[str], secrets_: list[str]) -> HeapUse:
    """Peak heap of the whole flow at the default heap size, then a second boot of the same device (cached
    assignment, unchanged bundle), then live heap per step (a separate device, log_level debug) and per module."""
    root = image.fresh_device("heap-peak", with_bench_scripts=True)
    status, output = run_in_device(root, "bench_flow.py", ("provisioning.json", "peak"))
    events = device_events(output)
    if not flow_succeeded(status, events):
        raise MeasurementError(
            "flow at the default heap size failed: " + redact(failure_reason(output, events), secrets_)
        )
    stored = last_event(events, "trust_bundle_stored") or {}
    certificates = int(stored.get("certificates", 0))
    if certificates != BUNDLE_CERTIFICATES:
        raise MeasurementError(f"the device stored {certificates} certificates, not {BUNDLE_CERTIFICATES}")
    report = _heap_report(output, "peak run")

    # Second boot of the same flash folder, through the real entry point.
    status, second = run_in_device(root, "main.py")
    second_events = device_events(second)
    done = last_event(second_events, "done")
    if status != 0 or done is None:
        raise MeasurementError("cached boot failed: " + redact(failure_reason(second, second_events), secrets_))
    cached = {
        "dps_connections": int(done["dps_connections"]),
        "flash_writes": int(done["flash_writes"]),
        "used_cached_assignment": int(last_event(second_events, "using_cached_assignment") is not None),
    }

    use = HeapUse(
        heap_total_bytes=int(report["heap_total"]),
        peak_bytes=int(report["peak_alloc"]),
        baseline_bytes=int(report["baseline_alloc"]),
        collections=int(report["collections"]),
        auto_collections=int(report["auto_collections"]),
        mem_peak_counter_bytes=int(report["mem_peak_counter"]),
        certificates=certificates,
        cached_boot=cached,
    )

    steps_root = image.fresh_device("heap-steps", with_bench_scripts=True, log_level="debug")
    status, output = run_in_device(steps_root, "bench_flow.py", ("provisioning.json", "steps"))
    events = device_events(output)
    if flow_succeeded(status, events):
        steps_report = _heap_report(output, "steps run")
        total = int(steps_report["heap_total"])
        use.live_peak_bytes = int(steps_report["live_peak"])
        use.steps = [
            {"event": event, "live_bytes": total - int(fields["heap_free"])}
            for _, event, fields in events
            if "heap_free" in fields
        ]
        use.qstr_info = next((line.strip() for line in output.splitlines() if line.startswith("qstr pool")), "")

    imports_root = image.fresh_device("heap-imports", with_bench_scripts=True)
    status, output = run_in_device(imports_root, "bench_flow.py", ("provisioning.json", "imports", *module_names))
    if status == 0:
        use.modules = {line["module"]: int(line["bytes"]) for line in bench_lines(output).get("import", [])}
    return use
