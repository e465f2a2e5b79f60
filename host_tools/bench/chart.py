"""The PNG chart of `make bench`: the figures people compare, each next to its target (matplotlib, no display)."""

from __future__ import annotations

from pathlib import Path

TARGET_STYLE = {"color": "tab:red", "linestyle": "--", "linewidth": 1.5}


def _missing(ax, title: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.set_xticks([])
    ax.set_yticks([])


def _bars_with_target(ax, title: str, labels, values, target: float | None, target_label: str, unit: str) -> None:
    colors = ["tab:blue", "tab:gray", "tab:olive", "tab:cyan"][: len(values)]
    bars = ax.bar(labels, values, color=colors)
    ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], padding=2, fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    if target is not None:
        ax.axhline(target, label=target_label, **TARGET_STYLE)
        ax.legend(fontsize=8, loc="upper left")
    ax.set_title(title)
    ax.set_ylabel(unit)
    top = max([*values, target or 0]) * 1.2
    ax.set_ylim(0, top or 1)


def _frozen_floors(ax, results: dict) -> None:
    """Every heap floor measured on the 32-bit frozen build (the ESP32 proxy), each with its own target, if any."""
    from host_tools.bench.floors import FLOORS

    entries = [
        (f.key, f.target_bytes)
        for f in FLOORS
        if f.runtime == "unix32-frozen" and isinstance(results.get(f.key), (int, float))
    ]
    if not entries:
        _missing(ax, "heap floors, 32-bit frozen build")
        return
    names = [key.removeprefix("heap_floor_").removesuffix("_32bit_frozen_bytes") or "whole flow" for key, _ in entries]
    names = [name.replace("_", " ") for name in names]
    values = [results[key] for key, _ in entries]
    bars = ax.bar(range(len(values)), values, color="tab:blue")
    ax.bar_label(bars, labels=[f"{v / 1024:,.0f}K" for v in values], padding=2, fontsize=8)
    labelled = False
    for index, (_, target) in enumerate(entries):
        if target:
            ax.hlines(
                target, index - 0.4, index + 0.4, label=None if labelled else "target of that flow", **TARGET_STYLE
            )
            labelled = True
    if labelled:
        ax.legend(fontsize=8, loc="upper left")
    ax.set_xticks(range(len(values)), names, rotation=30, ha="right", fontsize=8)
    ax.set_title("heap floors on the 32-bit frozen build (ESP32 proxy)")
    ax.set_ylabel("bytes")
    ax.set_ylim(0, max([*values, *(t or 0 for _, t in entries)]) * 1.2)


def _csr_keygen(ax, get, target: float | None) -> None:
    """Key generation + CSR: measured on the 32-bit frozen build, and the ESP32 range (an estimate)."""
    measured = get("csr_keygen_seconds_32bit_frozen")
    if measured is None:
        _missing(ax, "P-384 key generation + CSR")
        return
    low, high = get("csr_keygen_esp32_estimate_seconds_low"), get("csr_keygen_esp32_estimate_seconds_high")
    errors = [[measured - get("csr_keygen_seconds_min")], [get("csr_keygen_seconds_max") - measured]]
    bars = ax.bar(["unix32-frozen\n(measured, median)"], [measured], yerr=errors, capsize=6, color="tab:blue")
    ax.bar_label(bars, labels=[f"{measured * 1000:,.0f} ms"], padding=2, fontsize=8)
    if low is not None and high is not None:
        ax.bar(
            ["ESP32\n(ESTIMATE, not measured)"],
            [high - low],
            bottom=[low],
            color="none",
            edgecolor="tab:gray",
            hatch="//",
        )
        ax.text(1, high, f"{low:,.1f}-{high:,.1f} s", ha="center", va="bottom", fontsize=8)
    if target is not None:
        ax.axhline(target, label=f"target (unix32-frozen) {target:g} s", **TARGET_STYLE)
        ax.legend(fontsize=8, loc="upper left")
    ax.set_yscale("log")
    ax.set_ylim(min(get("csr_keygen_seconds_min"), target or 1) / 2, max(high or 0, target or 0, measured) * 3)
    ax.set_title("P-384 key generation + CSR (certificate issuance)")
    ax.set_ylabel("seconds (log scale)")


def draw_chart(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def get(key):
        value = results.get(key)
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    fig, axes = plt.subplots(3, 3, figsize=(16, 13))
    (heap_ax, mpy_ax, cpu_ax), (fleet_ax, rate_ax, hist_ax), (floors_ax, csr_ax, spare_ax) = axes
    spare_ax.axis("off")
    _frozen_floors(floors_ax, results)
    _csr_keygen(csr_ax, get, results.get("targets", {}).get("csr_keygen_seconds_32bit_frozen", {}).get("limit"))

    floor = get("heap_floor_bytes")
    if floor is None:
        _missing(heap_ax, "GC heap")
    else:
        labels, values = ["smallest heap\nthat works"], [floor]
        # What the floor is made of: the heap at its worst, the live part of it, and the loaded code alone.
        for key, label in (
            ("heap_peak_bytes", "peak in use\n(default heap)"),
            ("heap_live_peak_bytes", "live peak\n(debug steps)"),
            ("heap_modules_total_bytes", "firmware code\nonce imported"),
        ):
            if get(key) is not None:
                labels.append(label)
                values.append(get(key))
        _bars_with_target(
            heap_ax,
            "GC heap of the whole flow",
            labels,
            values,
            results.get("targets", {}).get("heap_floor_bytes", {}).get("limit"),
            "target (heap floor)",
            "bytes",
        )

    modules = results.get("mpy_modules") or {}
    if get("mpy_total_bytes") is None or not modules:
        _missing(mpy_ax, "firmware .mpy size")
    else:
        names = list(modules)
        bottom = 0
        cmap = plt.get_cmap("tab20")
        for index, name in enumerate(names):
            mpy_ax.bar(["firmware .mpy"], [modules[name]], bottom=bottom, color=cmap(index % 20), label=name)
            bottom += modules[name]
        target = results.get("targets", {}).get("mpy_total_bytes", {}).get("limit")
        if target is not None:
            mpy_ax.axhline(target, label="target", **TARGET_STYLE)
        mpy_ax.set_ylim(0, max(bottom, target or 0) * 1.15)
        mpy_ax.text(0, bottom, f"{bottom:,} B", ha="center", va="bottom", fontsize=9)
        mpy_ax.set_title("firmware .mpy size (no umqtt, no main.py)")
        mpy_ax.set_ylabel("bytes")
        mpy_ax.legend(fontsize=6, ncol=2, loc="center right")
        mpy_ax.set_xlim(-0.6, 2.6)

    fw, sdk = get("firmware_provision_cpu_s_median"), get("sdk_provision_cpu_s_median")
    if fw is None or sdk is None:
        _missing(cpu_ax, "CPU per registration")
    else:
        medians = [fw, sdk]
        lows = [get("firmware_provision_cpu_s_min"), get("sdk_provision_cpu_s_min")]
        highs = [get("firmware_provision_cpu_s_max"), get("sdk_provision_cpu_s_max")]
        errors = [[m - lo for m, lo in zip(medians, lows)], [hi - m for m, hi in zip(medians, highs)]]
        names = ["firmware\n(Unix port)", "azure-iot-device\nSDK (CPython)"]
        bars = cpu_ax.bar(names, medians, yerr=errors, capsize=6, color=["tab:blue", "tab:gray"])
        cpu_ax.bar_label(bars, labels=[f"{v * 1000:,.0f} ms" for v in medians], padding=2, fontsize=8)
        launcher = get("micropython_launcher_cpu_s_median")
        if launcher is not None:
            # The part of the firmware's process that is the wheel's CPython host, not MicroPython's work.
            cpu_ax.bar(
                names[:1],
                [min(launcher, fw)],
                color="none",
                edgecolor="navy",
                hatch="//",
                label="MicroPython launcher\n(empty program)",
            )
            cpu_ax.legend(fontsize=8, loc="upper left")
        ratio = get("provision_cpu_ratio_vs_sdk")
        target = results.get("targets", {}).get("provision_cpu_ratio_vs_sdk", {}).get("limit")
        cpu_ax.set_title(
            f"CPU per registration (median, min-max)\nSDK / firmware = {ratio:.1f}x"
            + (f", target >= {target:g}x" if target else "")
        )
        cpu_ax.set_ylabel("CPU seconds (user + sys)")

    seconds, ideal = get("fleet_seconds"), get("fleet_ideal_seconds")
    if seconds is None or ideal is None:
        _missing(fleet_ax, "fleet")
    else:
        _bars_with_target(
            fleet_ax,
            f"{get('fleet_devices'):,.0f} devices at {get('fleet_rate_limit'):g} "
            f"registrations/s\n({get('fleet_failures'):,.0f} failed)",
            ["fleet run", "ideal N / R"],
            [seconds, ideal],
            results.get("targets", {}).get("fleet_seconds", {}).get("limit"),
            "target (1.5 x ideal)",
            "seconds",
        )

    per_second = results.get("fleet_attempts_per_second") or []
    retries = results.get("fleet_retry_attempts_per_second") or []
    rate = get("fleet_rate_limit")
    if not per_second or rate is None:
        _missing(rate_ax, "register attempts per second")
    else:
        xs = list(range(len(per_second)))
        rate_ax.bar(xs, per_second, color="tab:blue", label="all register attempts", width=1.0)
        if retries:
            rate_ax.bar(xs, retries, color="tab:orange", label="retries (attempt 2+)", width=0.6)
        rate_ax.axhline(rate, label=f"R = {rate:g}/s (what DPS admits)", **TARGET_STYLE)
        rate_ax.set_title("register attempts per second of the fleet run")
        rate_ax.set_xlabel("second since power-on")
        rate_ax.set_ylabel("attempts")
        rate_ax.legend(fontsize=8)

    histogram = results.get("fleet_attempts_histogram") or {}
    if not histogram:
        _missing(hist_ax, "attempts per device")
    else:
        keys = sorted(histogram, key=int)
        hist_ax.bar([int(k) for k in keys], [histogram[k] for k in keys], color="tab:purple")
        hist_ax.set_title("register attempts per device")
        hist_ax.set_xlabel("attempts")
        hist_ax.set_ylabel("devices")

    when = results.get("generated_at", "")
    fig.suptitle(
        f"azprov bench {when} ({results.get('machine', {}).get('cpus', '?')} cores)"
        + (" - QUICK MODE, not comparable" if results.get("quick") else "")
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
