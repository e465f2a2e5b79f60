"""The soak: one device process on the Unix port runs the supervisor as a board (azprov/supervisor.py) against the emulator for
thousands of messages with time compressed: 5 s SAS tokens on a device clock running `time_scale` times fast (the
stand-in `time` module), telemetry back to back, and the emulator dropping the device's connection every second
(its control port's drop_connection, at whatever moment the device is in).
Free heap after gc.collect() is sampled every 100 messages (the firmware's `heap_sample` line).

    python -m tests.soak                       # the full soak (`make soak`): 10,000 messages, 500 renewals, 200 drops
    python -m tests.soak --messages 600 ...    # shorter

It runs until every target is reached, then the soak stops the device (SIGINT). Pass: every message the device
finished acknowledged (sequence numbers contiguous, each in the gateway's record; a message cut by a drop was sent
again until acknowledged), the targets reached, no registration after the first, no leak (mean free heap of the last
10 % of samples within 1 KB of the first 10 %) and no growth (modules loaded constant). Figures go to
build/reliability/soak.json; tests/test_soak.py runs a short version in `make test`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from host_tools.board import runtimes
from host_tools.board.harness import EmulatorProcess, parse_device_line
from host_tools.board.unix_port import stage_device_root
from tests.helpers import enrollment_doc, individual, new_key, provisioning_for
from tests.runloop_board import Board, install_standins

REPO = Path(__file__).resolve().parents[1]
LEAK_LIMIT_BYTES = 1024


@dataclass
class Targets:
    messages: int = 10_000
    renewals: int = 500
    drops: int = 200
    drop_interval_s: float = 1.0  # the emulator drops the device's connection this often (its control port)
    time_scale: int = 12  # device wall clock speed-up: a 5 s token (renewed at 4 s) every 0.33 s of real time
    heapsize: str | None = "256K"


@dataclass
class SoakResult:
    runtime: str
    targets: dict
    seconds: float = 0.0
    acknowledged: int = 0
    recorded: int = 0
    duplicates_recorded: int = 0
    missing: int = 0
    renewals: int = 0
    drops: int = 0
    drops_injected: int = 0
    gateway_connections: int = 0
    registrations: int = 0
    heap_samples: list = field(default_factory=list)
    heap_first_mean: float = 0.0
    heap_last_mean: float = 0.0
    heap_min: int = 0
    heap_max: int = 0
    modules: list = field(default_factory=list)
    retries_by_reason: dict = field(default_factory=dict)
    exit_status: int | None = None
    running_at_end: bool = False
    failures: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


class _Dropper:
    """Drops the device's gateway connection every `interval` seconds through the emulator's control port."""

    def __init__(self, state_dir: Path, device_id: str, interval: float):
        from host_tools.emulator.control import ServiceClient

        self.service = ServiceClient.from_state_dir(state_dir)
        self.device_id, self.interval = device_id, interval
        self.dropped = 0
        self.attempts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        # Between connections (a renewal, a reconnect) there is nothing to drop: try again shortly.
        wait = self.interval
        while not self._stop.wait(wait):
            try:
                dropped = self.service.drop_connection(self.device_id) is True
            except Exception:  # the emulator busy or stopping: the next attempt will tell
                dropped = False
            self.attempts += 1
            if dropped:
                self.dropped += 1
            wait = self.interval if dropped else 0.05

    def __enter__(self):
        if self.interval:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=15)

    def __exit__(self, *exc) -> None:
        self.stop()


class _Counts:
    """Running totals from the device's output, read incrementally."""

    def __init__(self):
        self.seen = 0
        self.acked = self.renewals = self.heap_free = 0

    def update(self, board: Board) -> None:
        with board._lock:
            lines = board.lines[self.seen :]
        self.seen += len(lines)
        for line in lines:
            if " telemetry_acknowledged " in line:
                self.acked += 1
            elif " gateway_token_renewed " in line:
                self.renewals += 1
            elif " heap_sample " in line:
                self.heap_free = int(parse_device_line(line)[2]["free"])

    def reached(self, targets: Targets, drops: int) -> bool:
        return self.acked >= targets.messages and self.renewals >= targets.renewals and drops >= targets.drops


def run_soak(targets: Targets, runtime: str = "unix32-frozen", workdir: Path | None = None, out=sys.stderr):
    """Runs one soak and returns its SoakResult (figures and failures)."""
    result = SoakResult(runtime, asdict(targets))
    runtimes.get(runtime).binary()  # built before the clock starts
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="azprov-soak-")))
        key = new_key()
        doc = enrollment_doc([individual("soak-dev", key)])
        doc["faults"] = {"retry_after": 0}
        state = workdir / "emulator"
        state.mkdir(parents=True, exist_ok=True)
        (state / "enrollments.json").write_text(json.dumps(doc))
        emu = stack.enter_context(EmulatorProcess(state, state / "enrollments.json"))
        root = workdir / "device"
        provisioning = provisioning_for(
            emu,
            "soak-dev",
            key,
            run_loop=True,
            telemetry_count=0,  # for ever: the soak stops the device once every target is reached
            telemetry_interval_s=0,
            sas_ttl_s=5,
            retry_base_ms=20,
            retry_max_s=1,
            reset_after_failures=0,
            # The gateway here drops the connection on purpose, not because the device moved: the soak measures one
            # registration's lifetime, so failures in a row never send it back to DPS.
            max_gateway_failures=0,
            watchdog_timeout_s=60,
        )
        stage_device_root(
            root,
            provisioning,
            use_mpy=True,
            ca_files={"certs/dps-root.pem": Path(emu.info["pki"]["dps_root"])},
            runtime=runtime,
        )
        install_standins(root)
        board = Board(root, heapsize=targets.heapsize)
        board.control(time_scale=targets.time_scale)
        start = time.monotonic()
        print(
            f"soak on {runtime}: {targets.messages} messages, time x{targets.time_scale}, "
            f"connection dropped by the gateway every {targets.drop_interval_s} s",
            file=out,
            flush=True,
        )
        dropper = _Dropper(state, "soak-dev", targets.drop_interval_s)
        counts = _Counts()
        with board, dropper:
            last = start
            while board.status is None:
                counts.update(board)
                if counts.reached(targets, dropper.dropped):
                    break
                if time.monotonic() - last >= 10:
                    last = time.monotonic()
                    print(
                        f"  {last - start:6.0f} s  acknowledged {counts.acked:>6,}  renewals {counts.renewals:>5,}"
                        f"  drops {dropper.dropped:>4,}  free heap {counts.heap_free:>7,} B",
                        file=out,
                        flush=True,
                    )
                time.sleep(0.5)
            result.running_at_end = board.status is None
            dropper.stop()
            board.stop()  # SIGINT: the message in flight, if any, is neither acknowledged nor counted
        result.seconds = round(time.monotonic() - start, 1)
        result.drops_injected = dropper.dropped
        result.exit_status = board.status
        _judge(result, board, emu, targets)
    return result


def _judge(result: SoakResult, board: Board, emu, targets: Targets) -> None:
    events = [p for p in map(parse_device_line, board.lines) if p]
    acked = [int(f["sequence"]) for _, e, f in events if e == "telemetry_acknowledged"]
    result.acknowledged = len(acked)
    result.renewals = sum(1 for _, e, _f in events if e == "gateway_token_renewed")
    retries = [f for _, e, f in events if e == "retry_scheduled"]
    for r in retries:
        result.retries_by_reason[f"{r['step']}/{r['reason']}"] = (
            result.retries_by_reason.get(f"{r['step']}/{r['reason']}", 0) + 1
        )
    result.drops = sum(1 for r in retries if r["step"] in ("serve", "connect") and r["reason"] == "network")
    samples = [f for _, e, f in events if e == "heap_sample"]
    if samples:
        result.gateway_connections = int(samples[-1]["connections"])
    result.heap_samples = [int(s["free"]) for s in samples]
    result.modules = sorted({int(s["modules"]) for s in samples})
    recorded = [json.loads(r["payload"])["sequence"] for r in emu.telemetry() if r["device_id"] == "soak-dev"]
    result.recorded = len(recorded)
    result.duplicates_recorded = len(recorded) - len(set(recorded))
    result.missing = len(set(acked) - set(recorded))
    result.registrations = len([r for r in emu.registrations() if r.get("status") == "assigned"])
    fail = result.failures
    if board.resets:
        fail.append(f"board restarted: {board.resets}")
    if not result.running_at_end:
        fail.append(f"the device stopped by itself (status {result.exit_status}) before the targets were reached")
    if acked != list(range(len(acked))):
        fail.append("the device did not acknowledge every sequence number once, in order")
    if result.acknowledged < targets.messages:
        fail.append(f"{result.acknowledged} messages acknowledged < {targets.messages}")
    if result.missing:
        fail.append(f"{result.missing} messages missing from the gateway's record")
    if result.renewals < targets.renewals:
        fail.append(f"{result.renewals} token renewals < {targets.renewals}")
    if result.drops_injected < targets.drops:
        fail.append(f"{result.drops_injected} dropped connections < {targets.drops}")
    if result.registrations != 1:
        fail.append(f"{result.registrations} registrations (expected 1)")
    if len(result.heap_samples) < 10:
        fail.append(f"only {len(result.heap_samples)} heap samples")
    else:
        tenth = max(1, len(result.heap_samples) // 10)
        result.heap_first_mean = round(statistics.mean(result.heap_samples[:tenth]), 1)
        result.heap_last_mean = round(statistics.mean(result.heap_samples[-tenth:]), 1)
        result.heap_min, result.heap_max = min(result.heap_samples), max(result.heap_samples)
        if result.heap_first_mean - result.heap_last_mean > LEAK_LIMIT_BYTES:
            fail.append(f"free heap fell from {result.heap_first_mean:.0f} to {result.heap_last_mean:.0f} bytes (leak)")
    # Modules loaded on first need (the retry policy at the first failure) may add to the count once, early; a count
    # still changing over the second half of the run is modules piling up.
    late = {int(s["modules"]) for s in samples[len(samples) // 2 :]}
    if len(late) > 1:
        fail.append(f"modules loaded grew in the second half of the run: {sorted(late)}")


def table(result: SoakResult) -> str:
    rows = [
        ("runtime", result.runtime),
        ("run time", f"{result.seconds:,.0f} s"),
        ("messages acknowledged (device) / recorded (gateway)", f"{result.acknowledged:,} / {result.recorded:,}"),
        ("missing / recorded twice", f"{result.missing} / {result.duplicates_recorded}"),
        ("token renewals", f"{result.renewals:,}"),
        ("connections dropped by the gateway / failures they caused", f"{result.drops_injected:,} / {result.drops:,}"),
        ("gateway connections (at the last heap sample)", f"{result.gateway_connections:,}"),
        ("DPS registrations", f"{result.registrations}"),
        ("heap samples (free after gc.collect())", f"{len(result.heap_samples)}"),
        ("free heap: first 10 % / last 10 % (mean)", f"{result.heap_first_mean:,.0f} / {result.heap_last_mean:,.0f} B"),
        ("free heap: min / max", f"{result.heap_min:,} / {result.heap_max:,} B"),
        ("modules loaded", ", ".join(map(str, result.modules))),
        ("retries by step/reason", ", ".join(f"{k} {v}" for k, v in sorted(result.retries_by_reason.items()))),
        ("verdict", "PASS" if result.passed else "FAIL: " + "; ".join(result.failures)),
    ]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"| {name.ljust(width)} | {value} |" for name, value in rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__.split("\n\n")[0])
    defaults = Targets()
    parser.add_argument("--messages", type=int, default=defaults.messages)
    parser.add_argument("--renewals", type=int, default=defaults.renewals)
    parser.add_argument("--drops", type=int, default=defaults.drops)
    parser.add_argument("--drop-interval", type=float, default=defaults.drop_interval_s)
    parser.add_argument("--time-scale", type=int, default=defaults.time_scale)
    parser.add_argument("--heapsize", default=defaults.heapsize)
    parser.add_argument("--runtime", default="unix32-frozen", choices=sorted(runtimes.RUNTIMES))
    parser.add_argument("--out", type=Path, default=REPO / "build" / "reliability" / "soak.json")
    args = parser.parse_args(argv)
    targets = Targets(args.messages, args.renewals, args.drops, args.drop_interval, args.time_scale, args.heapsize)
    result = run_soak(targets, args.runtime)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(asdict(result) | {"passed": result.passed}, indent=2) + "\n")
    print(table(result))
    print(f"figures: {args.out}")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
