"""The bench's verdicts and tables: each figure beside its target (met / missed), and the per-module table."""

from __future__ import annotations

from dataclasses import dataclass

from rich.markup import escape
from rich.table import Table

FLEET_ATTEMPT_PEAK_LIMIT = 2.0  # a herd: retries arriving faster than this many times what DPS admits
FLEET_SECONDS_LIMIT = 1.5  # x the ideal N / R
CSR_KEYGEN_LIMIT_S = 0.5  # key generation + CSR on the 32-bit frozen build


@dataclass(frozen=True)
class Target:
    key: str
    op: str  # "<=", ">=", "=="
    limit: float
    text: str
    # The figure only means what it says when this other figure is 0 (a fleet whose devices gave up finishes
    # early: that is not speed).
    valid_when_zero: str | None = None

    def met(self, results: dict) -> bool | None:
        value = results.get(self.key)
        if not isinstance(value, (int, float)):
            return None
        if self.valid_when_zero and results.get(self.valid_when_zero) != 0:
            return False
        return {"<=": value <= self.limit, ">=": value >= self.limit, "==": value == self.limit}[self.op]


def targets(results: dict) -> list[Target]:
    """The issue's targets; the fleet ones depend on this run's N and R."""
    found = [
        Target("heap_floor_bytes", "<=", 24576, "<= 24,576 B"),
        Target("mpy_total_bytes", "<=", 16384, "<= 16,384 B"),
        Target("provision_cpu_ratio_vs_sdk", ">=", 10, ">= 10x"),
        Target("cached_boot_dps_connections", "==", 0, "0"),
        Target("cached_boot_flash_writes", "==", 0, "0"),
        Target("fleet_failures", "==", 0, "0"),
        Target("csr_keygen_seconds_32bit_frozen", "<=", CSR_KEYGEN_LIMIT_S, f"<= {CSR_KEYGEN_LIMIT_S:g} s"),
    ]
    from host_tools.bench.floors import FLOORS

    found += [Target(f.key, "<=", f.target_bytes, f"<= {f.target_bytes:,} B") for f in FLOORS if f.target_bytes]
    ideal = results.get("fleet_ideal_seconds")
    if isinstance(ideal, (int, float)):
        found.append(
            Target(
                "fleet_seconds",
                "<=",
                round(FLEET_SECONDS_LIMIT * ideal, 3),
                f"<= {FLEET_SECONDS_LIMIT:g} x N/R = {FLEET_SECONDS_LIMIT * ideal:,.1f} s, all assigned",
                valid_when_zero="fleet_failures",
            )
        )
    found.append(
        Target("fleet_retry_peak_to_rate", "<=", FLEET_ATTEMPT_PEAK_LIMIT, f"<= {FLEET_ATTEMPT_PEAK_LIMIT:g} x R")
    )
    return found


def _fmt(value) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def figure_rows(results: dict) -> list[tuple[str, str, str, bool | None]]:
    """(figure, value, target, met) for the table, in the order people read them."""
    by_key = {t.key: t for t in targets(results)}
    r = results

    def row(label: str, key: str, value_text: str | None = None):
        target = by_key.get(key)
        value = r.get(key)
        return (
            label,
            value_text if value_text is not None and value is not None else _fmt(value),
            target.text if target else "-",
            target.met(r) if target else None,
        )

    ratio_range = None
    if isinstance(r.get("provision_cpu_ratio_min"), (int, float)):
        ratio_range = (
            f"{r['provision_cpu_ratio_vs_sdk']:.2f}x (min {r['provision_cpu_ratio_min']:.2f}, "
            f"max {r['provision_cpu_ratio_max']:.2f}, {r['provision_cpu_pairs']} pairs)"
        )
    fw_cpu = sdk_cpu = None
    if isinstance(r.get("firmware_provision_cpu_s_median"), (int, float)):
        fw_cpu = (
            f"{r['firmware_provision_cpu_s_median'] * 1000:,.0f} ms "
            f"({r['firmware_provision_cpu_s_min'] * 1000:,.0f}-{r['firmware_provision_cpu_s_max'] * 1000:,.0f})"
        )
        sdk_cpu = (
            f"{r['sdk_provision_cpu_s_median'] * 1000:,.0f} ms "
            f"({r['sdk_provision_cpu_s_min'] * 1000:,.0f}-{r['sdk_provision_cpu_s_max'] * 1000:,.0f})"
        )
    peak_text = None
    if isinstance(r.get("fleet_peak_retries_per_s"), (int, float)):
        peak_text = (
            f"{r['fleet_retry_peak_to_rate']:.1f}x ({r['fleet_peak_retries_per_s']:,} retries/s vs "
            f"R = {r['fleet_rate_limit']:g}/s)"
        )
    check_failures = check_attempts = check_seconds = None
    if isinstance(r.get("fleet_check_driver_failures"), (int, float)):
        where = f"({r['fleet_check_devices']} each at R = {r['fleet_check_rate_limit']:g}/s)"
        check_failures = f"{r['fleet_check_real_failures']} vs {r['fleet_check_driver_failures']} {where}"
        check_attempts = (
            f"{_fmt(r['fleet_check_real_median_attempts'])} vs "
            f"{_fmt(r['fleet_check_driver_median_attempts'])} (max {r['fleet_check_real_max_attempts']}"
            f" vs {r['fleet_check_driver_max_attempts']})"
        )
        check_seconds = f"{r['fleet_check_real_seconds']:.1f} vs {r['fleet_check_driver_seconds']:.1f}"
    csr_text = esp32_text = None
    if isinstance(r.get("csr_keygen_seconds_32bit_frozen"), (int, float)):
        csr_text = (
            f"{r['csr_keygen_seconds_32bit_frozen'] * 1000:,.0f} ms ({r['csr_keygen_seconds_min'] * 1000:,.0f}-"
            f"{r['csr_keygen_seconds_max'] * 1000:,.0f}, {r['csr_keygen_runs']} runs)"
        )
        esp32_text = (
            f"ESTIMATE {r['csr_keygen_esp32_estimate_seconds_low']:,.1f}-"
            f"{r['csr_keygen_esp32_estimate_seconds_high']:,.1f} s ({r['csr_keygen_esp32_factor_low']}-"
            f"{r['csr_keygen_esp32_factor_high']}x unix32-frozen, assumed)"
        )
    from host_tools.bench.floors import FLOORS

    floor_rows = [row(f"heap floor, {f.runtime}: {f.flow.name}", f.key) for f in FLOORS]
    return [
        *floor_rows,
        row("heap floor: smallest -X heapsize for the whole flow (wheel, .mpy)", "heap_floor_bytes"),
        row("heap peak in use at the default heap size", "heap_peak_bytes"),
        row("live heap peak at the debug steps", "heap_live_peak_bytes"),
        row("firmware .mpy total (no umqtt, no main.py)", "mpy_total_bytes"),
        row("CPU ratio SDK / firmware, one registration", "provision_cpu_ratio_vs_sdk", ratio_range),
        row("  firmware CPU per registration (median, min-max)", "firmware_provision_cpu_s_median", fw_cpu),
        row("  SDK CPU per registration (median, min-max)", "sdk_provision_cpu_s_median", sdk_cpu),
        row(
            "  of which MicroPython launcher (empty program)",
            "micropython_launcher_cpu_s_median",
            f"{r['micropython_launcher_cpu_s_median'] * 1000:,.0f} ms"
            if isinstance(r.get("micropython_launcher_cpu_s_median"), (int, float))
            else None,
        ),
        row("  ratio without the launcher's CPU (median)", "provision_cpu_ratio_excluding_launcher"),
        row("firmware wall time per registration (median, ms)", "provision_wall_ms"),
        row("P-384 key generation + CSR, unix32-frozen (median, min-max)", "csr_keygen_seconds_32bit_frozen", csr_text),
        row("  on an ESP32: an estimate, not a measurement", "csr_keygen_esp32_estimate_seconds_low", esp32_text),
        row("cached boot: DPS connections", "cached_boot_dps_connections"),
        row("cached boot: flash writes", "cached_boot_flash_writes"),
        row("fleet: devices", "fleet_devices"),
        row("fleet: failures", "fleet_failures"),
        row("fleet: seconds until the last device finished", "fleet_seconds"),
        row("fleet: ideal seconds N / R", "fleet_ideal_seconds"),
        row("fleet: peak retry attempts per second vs R", "fleet_retry_peak_to_rate", peak_text),
        row("fleet: most register attempts by one device", "fleet_max_attempts"),
        row("fleet: emulator CPU share of one core", "fleet_emulator_cpu_share"),
        row("fleet: driver CPU share of one core", "fleet_driver_cpu_share"),
        row("driver check: failures, real devices vs driver", "fleet_check_real_failures", check_failures),
        row("driver check: median attempts, real vs driver", "fleet_check_real_median_attempts", check_attempts),
        row("driver check: seconds, real vs driver", "fleet_check_real_seconds", check_seconds),
        row("driver check: peak RSS of one real device process (MB)", "fleet_check_real_max_rss_mb"),
    ]


def results_table(results: dict) -> Table:
    table = Table(
        title=f"azprov bench {results.get('generated_at', '')}"
        + (" (QUICK mode: not comparable)" if results.get("quick") else "")
    )
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    table.add_column("result")
    for label, value, target, met in figure_rows(results):
        verdict = "-" if met is None else ("[green]met[/]" if met else "[red]missed[/]")
        table.add_row(escape(label), escape(value), escape(target), verdict)
    return table


def module_table(results: dict, rows) -> Table:
    table = Table(title="firmware modules: .mpy size and heap kept once imported")
    table.add_column("module")
    table.add_column("source B", justify="right")
    table.add_column(".mpy B", justify="right")
    table.add_column("heap once imported B", justify="right")
    heap = results.get("heap_modules") or {}
    for row in rows:
        module = row.name.removesuffix(".mpy").removesuffix(".py").replace("/", ".")
        module = module.removesuffix(".__init__").removeprefix("lib.")
        counted = row.name in (results.get("mpy_modules") or {})
        note = "" if counted else " (not counted)"
        table.add_row(
            escape(row.name + note),
            f"{row.source_bytes:,}",
            f"{row.output_bytes:,}",
            f"{heap[module]:,}" if module in heap else "-",
        )
    table.add_section()
    table.add_row(
        "total (.mpy: counted files; heap: every module the flow loads)",
        f"{results.get('mpy_source_total_bytes', 0):,}",
        f"{results.get('mpy_total_bytes', 0):,}",
        f"{results.get('heap_modules_total_bytes', 0):,}",
        style="bold",
    )
    return table


def import_cost_table(results: dict) -> Table:
    """Heap each module keeps once imported, per runtime (frozen: the code stays in the binary)."""
    costs = results.get("import_cost_bytes") or {}
    runtimes = list(costs)
    table = Table(title="import cost: heap kept once imported, by runtime (bytes)")
    table.add_column("module")
    for runtime in runtimes:
        table.add_column(runtime, justify="right")
    modules = list(dict.fromkeys(m for per in costs.values() for m in per))
    for module in modules:
        table.add_row(escape(module), *(_fmt(costs[r].get(module)) for r in runtimes))
    table.add_section()
    table.add_row("total", *(_fmt(sum(costs[r].values())) for r in runtimes), style="bold")
    return table


def obstacles(results: dict) -> list[dict]:
    """For every heap floor target this run missed: what stood in the way, as measured (where the largest failing
    heap stopped, with how much heap free; the code the runtime keeps once imported), and the next lever."""
    from host_tools.bench.floors import FLOORS

    found = []
    floors = results.get("heap_floors") or {}
    imported = results.get("import_cost_total_bytes") or {}
    for f in FLOORS:
        entry = floors.get(f.key)
        value = results.get(f.key)
        if not f.target_bytes or not isinstance(value, int) or value <= f.target_bytes or not entry:
            continue
        stopped = entry.get("failure_below") or "-"
        step = entry.get("failure_after_step")
        found.append(
            {
                "key": f.key,
                "floor_bytes": value,
                "target_bytes": f.target_bytes,
                "over_bytes": value - f.target_bytes,
                "stopped": f"after step {step}: {stopped}" if step else stopped,
                "code_in_heap_bytes": imported.get(f.runtime),
                "live_bytes_by_phase": entry.get("live_bytes_by_phase") or {},
                "next_lever": f.next_lever or "-",
            }
        )
    return found


def obstacles_table(results: dict) -> Table:
    table = Table(title="missed heap floor targets: what stands in the way (measured) and the next lever")
    table.add_column("figure")
    table.add_column("over target", justify="right")
    table.add_column("just below the floor the flow stopped")
    table.add_column("next lever")
    for item in results.get("target_obstacles") or obstacles(results):
        code = item.get("code_in_heap_bytes")
        stopped = item["stopped"] + (f" (all modules imported keep {code:,} B)" if code else "")
        live = item.get("live_bytes_by_phase") or {}
        if live:
            phases = ", ".join(f"{event} {value:,}" for event, value in live.items() if event != "qstr_pool")
            pool = f"; interned names {live['qstr_pool']:,} B" if "qstr_pool" in live else ""
            stopped += f"; live heap (B) at {phases}{pool}"
        table.add_row(escape(item["key"]), f"{item['over_bytes']:,} B", escape(stopped), escape(item["next_lever"]))
    return table
