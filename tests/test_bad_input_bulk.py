"""Bad input in bulk, on the MicroPython Unix port: more than 10,000 malformed DPS responses, more than 1,000
malformed provisioning files and more than 1,000 malformed sets of stored files, each made by hypothesis from a valid
template (tests/bulk/generate.py) and fed through the real firmware modules by tests/bulk/driver.py, on each tested
runtime (the PyPI wheel and the 32-bit Unix port with the firmware frozen in: ids [wheel] and [unix32-frozen]).

That full set runs in `make reliability` (AZPROV_FULL=1). `make test` runs a fifth of it (more than 2,000 DPS
responses, 200 provisioning files, 200 sets of stored files): every category of every class, each drawn at least 20
times, with the same checks.

Every case must end in a correct result or a classified error (a ProvisioningError whose kind is one of the
documented kinds), never in another exception, a broken promise (a rejected input that changed the stored state, an
accepted one that left files disagreeing) or a hang. Where the right answer is certain (a truncated JSON answer is a
malformed response, an untouched template is accepted ...) the answer is checked too. The figures, and every failure
with a sample of its input, go to build/reliability/bad_input.json (the sample's to bad_input_sample.json; other
runtimes than the default add their name).
"""

from __future__ import annotations

import collections
import json
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest

from host_tools.board import runtimes
from host_tools.board.unix_port import REPO, device_env, micropython_binary, stage_device_root
from tests.bulk import generate as gen
from tests.host_helpers import FULL_RUNS

pytestmark = pytest.mark.slow

DRIVER = Path(__file__).resolve().parent / "bulk" / "driver.py"
SCALE = 1.0 if FULL_RUNS else 0.2  # the share of each category's cases drawn (tests/bulk/generate.py)
REPORT = REPO / "build" / "reliability" / ("bad_input.json" if FULL_RUNS else "bad_input_sample.json")
WORKERS = 2
MINIMUM = {kind: int(count * SCALE) for kind, count in {"dps": 10_000, "provisioning": 1_000, "stored": 1_000}.items()}
DRIVER_TIMEOUT_S = 600  # a hang guard: on a loaded 2-core machine each driver takes over 200 s
PREFIX = {"dps": "D", "provisioning": "P", "stored": "S"}
DOCUMENTED_KINDS = {
    "configuration",
    "authentication",
    "not_found",
    "disabled",
    "assignment_failed",
    "bad_request",
    "throttled",
    "service_unavailable",
    "network",
    "tls_verification",
    "timeout",
    "malformed_response",
    "storage",
    "clock",
}
# Kinds each input class may end in (stage "load" of stored files and "config" of provisioning files are stricter).
CLASS_KINDS = {
    "dps": DOCUMENTED_KINDS - {"network", "clock", "configuration"},
    "provisioning": {"configuration"},
    "stored": {"storage", "configuration"},
}


def _sample(items: list[bytes], head: int = 160, tail: int = 240) -> list[str]:
    """Each item as a repr, the middle of a long one left out (the mutation is often at its end)."""
    out = []
    for item in items:
        if len(item) <= head + tail:
            out.append(repr(item))
        else:
            out.append(f"{item[:head]!r} ...({len(item)} bytes)... {item[-tail:]!r}")
    return out


def _report_path(runtime: str) -> Path:
    return REPORT if runtime == runtimes.DEFAULT else REPORT.with_name(f"bad_input-{runtime}.json")


def _run_driver(runtime: str, root: Path, work: Path, case_file: Path) -> tuple[str, bool, float]:
    started = time.monotonic()
    proc = subprocess.Popen(
        [micropython_binary(runtime), str(DRIVER), str(work), str(case_file)],
        cwd=root,
        env=device_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        out, _ = proc.communicate(timeout=DRIVER_TIMEOUT_S)
        hung = False
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        hung = True
    return out.decode("utf-8", "replace"), hung, time.monotonic() - started


def _parse(output: str) -> tuple[dict[str, dict], list[str]]:
    """{case id: {verdict, category, detail, traceback}}, and lines that are none of these."""
    results, stray, last = {}, [], None
    for line in output.splitlines():
        if line.startswith("  | ") and last is not None:
            last.setdefault("traceback", []).append(line[4:])
            continue
        verdict, _, rest = line.partition(" ")
        if verdict in ("OK", "ERR", "BAD", "CRASH"):
            cid, _, rest = rest.partition(" ")
            category, _, detail = rest.partition(" ")
            last = results[cid] = {"verdict": verdict, "category": category, "detail": detail}
        elif verdict == "DONE" or line.startswith("azprov "):
            last = None
        elif line.strip():
            stray.append(line)
    return results, stray


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[dict[str, tuple[str, gen.Case]], float]:
    """{case id: (class, case)} made once for every runtime, and the seconds it took."""
    started = time.monotonic()
    pickled = tmp_path_factory.mktemp("bulk-cases") / "bulk-cases.pickle"
    made = subprocess.run(
        [sys.executable, "-m", "tests.bulk.generate", str(pickled), str(SCALE)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert made.returncode == 0, made.stderr[-4000:]
    with open(pickled, "rb") as f:
        by_class = {kind: [gen.Case(*fields) for fields in items] for kind, items in pickle.load(f).items()}
    cases: dict[str, tuple[str, gen.Case]] = {}
    for kind, items in by_class.items():
        for index, case in enumerate(items):
            cases[f"{PREFIX[kind]}{index:05d}"] = (kind, case)
    return cases, time.monotonic() - started


@pytest.fixture(scope="module", params=runtimes.TESTED)
def bulk(request, generated, tmp_path_factory):
    runtime = request.param
    cases, generation_s = generated
    micropython_binary(runtime)  # built (or rebuilt after a firmware change) before the clock starts
    started = time.monotonic()
    root = tmp_path_factory.mktemp("bulk-device")
    stage_device_root(root, use_mpy=True, build_dir=root.parent / "bulk-mpy", runtime=runtime)
    ids = list(cases)
    batches = [ids[i::WORKERS] for i in range(WORKERS)]  # each worker gets all three classes
    procs = []
    for index, batch in enumerate(batches):
        work = root / f"work-{index}"
        work.mkdir()
        (work / "ca.pem").write_bytes((gen.HERE / "certs.pem").read_bytes())
        doc = dict(
            gen.PROVISIONING,
            dps_ca_file="ca.pem",
            storage_dir="dps_store",
            log_level="error",
            gateway_host="edge-gw.example.local",
        )
        (work / "provisioning.json").write_text(json.dumps(doc))
        case_file = work / "cases.bin"
        with open(case_file, "wb") as f:
            for cid in batch:
                f.write(cases[cid][1].record(cid))
        procs.append((work, case_file, batch))

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(WORKERS) as pool:
        runs = list(pool.map(lambda p: _run_driver(runtime, root, p[0], p[1]), procs))

    results, stray, hangs = {}, [], []
    driver_seconds = [round(seconds, 1) for _, _, seconds in runs]
    for (_work, _, batch), (output, hung, seconds) in zip(procs, runs):
        found, odd = _parse(output)
        results.update(found)
        stray.extend(odd)
        if hung or "DONE" not in output:
            answered = [cid for cid in batch if cid in found]
            missing = [cid for cid in batch if cid not in found]
            hangs.append(
                {
                    "last_answered": answered[-1] if answered else None,
                    "first_unanswered": missing[0] if missing else None,
                    "hung": hung,
                    "seconds": round(seconds, 1),
                    "tail": output[-2000:],
                }
            )

    report = _report(cases, results, stray, hangs, generation_s, generation_s + time.monotonic() - started)
    report["driver_s"] = driver_seconds
    report["runtime"] = runtime
    path = _report_path(runtime)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    return {"cases": cases, "results": results, "stray": stray, "hangs": hangs, "report": report, "path": path}


def _outcome(result: dict) -> str:
    if result["verdict"] == "OK":
        return "OK " + result["detail"]
    if result["verdict"] == "ERR":
        return "ERR " + result["detail"].split()[0]
    return result["verdict"]


def _problems(kind: str, cases: dict, results: dict) -> list[dict]:
    """Every case of this class that crashed, broke a promise, ended in an undocumented kind, missed its
    certain outcome, or never answered."""
    problems = []
    for cid, (case_kind, case) in cases.items():
        if case_kind != kind:
            continue
        result = results.get(cid)
        problem = None
        if result is None:
            problem = "no answer (hang or driver death)"
        elif result["verdict"] in ("CRASH", "BAD"):
            problem = result["verdict"] + " " + result["detail"]
        elif result["verdict"] == "ERR":
            error_kind, _, stage = result["detail"].partition(" ")
            if error_kind not in CLASS_KINDS[kind]:
                problem = "undocumented or unexpected kind %s at %s" % (error_kind, stage)
            elif kind == "stored" and stage == "load" and error_kind != "storage":
                problem = "Store.load failed with " + error_kind
        if problem is None and case.expect and _outcome(result) != case.expect:
            problem = "expected %s, got %s" % (case.expect, _outcome(result))
        if problem:
            problems.append(
                {
                    "id": cid,
                    "category": case.category,
                    "problem": problem,
                    "traceback": (result or {}).get("traceback", []),
                    "input": _sample(case.items),
                    "full_input": [repr(item) for item in case.items] if sum(map(len, case.items)) < 20000 else None,
                }
            )
    return problems


def _distinct(problems: list[dict]) -> list[dict]:
    """One entry per distinct failure (stage, exception type, message with numbers blurred), with a count."""
    groups: dict[str, dict] = {}
    for p in problems:
        text = p["problem"]
        if text.startswith("CRASH"):
            parts = text.split(" ", 3)  # CRASH <stage> <Type>: <message>
            key = " ".join(parts[:3]) + " " + "".join("#" if c.isdigit() else c for c in (parts[3:] or [""])[0])[:80]
            if p["traceback"]:
                key += " @ " + p["traceback"][-2].strip() if len(p["traceback"]) > 1 else ""
        else:
            key = "".join("#" if c.isdigit() else c for c in text)[:120]
        entry = groups.setdefault(
            key, {"signature": key, "count": 0, "categories": collections.Counter(), "example": p}
        )
        entry["count"] += 1
        entry["categories"][p["category"]] += 1
    out = []
    for entry in sorted(groups.values(), key=lambda e: -e["count"]):
        entry["categories"] = dict(entry["categories"])
        out.append(entry)
    return out


def _report(cases, results, stray, hangs, generation_s, total_s) -> dict:
    report = {
        "duration_s": round(total_s, 1),
        "generation_s": round(generation_s, 1),
        "workers": WORKERS,
        "scale": SCALE,
        "classes": {},
        "hangs": hangs,
        "stray_output": stray[:50],
    }
    for kind in MINIMUM:
        mine = {cid: c for cid, c in cases.items() if c[0] == kind}
        answered = [results[cid] for cid in mine if cid in results]
        per_category = collections.defaultdict(collections.Counter)
        for cid, (_, case) in mine.items():
            per_category[case.category][_outcome(results[cid]) if cid in results else "NO ANSWER"] += 1
        problems = _problems(kind, cases, results)
        report["classes"][kind] = {
            "generated": len(mine),
            "ran": len(answered),
            "verdicts": dict(collections.Counter(r["verdict"] for r in answered)),
            "error_kinds": dict(collections.Counter(r["detail"].split()[0] for r in answered if r["verdict"] == "ERR")),
            "ok_outcomes": dict(collections.Counter(r["detail"] for r in answered if r["verdict"] == "OK")),
            "categories": {name: dict(counts) for name, counts in sorted(per_category.items())},
            "problems": len(problems),
            "distinct_problems": _distinct(problems),
        }
    return report


def _check(bulk, kind: str) -> None:
    assert not bulk["hangs"], "a driver did not finish: %s" % bulk["hangs"]
    figures = bulk["report"]["classes"][kind]
    assert figures["ran"] >= MINIMUM[kind], figures
    assert figures["ran"] == figures["generated"], "some %s cases got no answer" % kind
    distinct = figures["distinct_problems"]
    if distinct:
        lines = [
            "%d %s cases failed, %d distinct problems (details in %s):"
            % (figures["problems"], kind, len(distinct), bulk["path"])
        ]
        for entry in distinct[:12]:
            example = entry["example"]
            lines.append(
                "- %dx %s  [%s]"
                % (entry["count"], entry["signature"], ", ".join("%s=%d" % kv for kv in entry["categories"].items()))
            )
            lines.append(
                "    e.g. %s (%s): %s"
                % (example["id"], example["category"], " | ".join(s[:300] for s in example["input"][-2:]))
            )
            for tb in example["traceback"][-4:]:
                lines.append("      " + tb)
        pytest.fail("\n".join(lines), pytrace=False)


def test_malformed_dps_responses(bulk):
    _check(bulk, "dps")


def test_malformed_provisioning_files(bulk):
    _check(bulk, "provisioning")


def test_malformed_stored_files(bulk):
    _check(bulk, "stored")


def test_no_stray_output(bulk):
    # Anything the driver printed that is not a verdict (an uncaught traceback, a log line at the wrong level ...).
    assert not bulk["stray"], bulk["stray"][:20]
