"""The mutation score of the I/O-free firmware core, measured with mutmut (pinned in requirements.txt) over the
device-side unit tests as pytest runs them under CPython (tests/device/).

mutmut wants the code under test importable under the names its tests use (`azprov.dps`), so the run happens in a
scratch folder holding `azprov/` (a copy of firmware/azprov/) and `tests/device/`, with a generated
`[tool.mutmut]` section. Every module of the core is mutated; the rest of azprov is copied unchanged. The score is
killed (or timed out) / all mutants, per module and in all; mutants no test reaches count as survivors."""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import click

REPO = Path(__file__).resolve().parents[2]
REPORT = REPO / "build" / "mutants" / "score.json"
# The I/O-free modules: protocol builders and parsers, storage formats, configuration. hub.py is the hub leg's core.
CORE = ("dps", "sas", "pem", "bundle", "config", "encoding", "hub")
TARGET_PERCENT = 90.0


def _scratch(root: Path = REPO) -> tuple[Path, list[str]]:
    work = Path(tempfile.mkdtemp(prefix="azprov-mutmut-"))
    shutil.copytree(root / "firmware" / "azprov", work / "azprov", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(root / "tests" / "device", work / "tests" / "device", ignore=shutil.ignore_patterns("__pycache__"))
    core = [name for name in CORE if (work / "azprov" / f"{name}.py").exists()]
    others = sorted(f"azprov/{p.name}" for p in (work / "azprov").glob("*.py") if p.stem not in core)
    (work / "pyproject.toml").write_text(
        "[tool.pytest.ini_options]\n"
        'testpaths = ["tests"]\n\n'
        "[tool.mutmut]\n"
        f"paths_to_mutate = {json.dumps([f'azprov/{name}.py' for name in core])}\n"
        'tests_dir = ["tests/device"]\n'
        f"also_copy = {json.dumps(others)}\n"
    )
    return work, core


def measure(root: Path = REPO, echo=click.echo) -> dict:
    """Runs mutmut over the core; returns {"modules": {name: counts}, "total": counts, "score": percent}."""
    mutmut = Path(sys.executable).with_name("mutmut")
    if not mutmut.exists():
        raise click.ClickException("mutmut is not installed in this venv (run `make setup`)")
    work, core = _scratch(root)
    try:
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        echo(f"mutation score: mutmut over {', '.join(core)} with tests/device (a few minutes) ...")
        run = subprocess.run([str(mutmut), "run"], cwd=work, env=env, capture_output=True, text=True)
        results = subprocess.run(
            [str(mutmut), "results", "--all", "true"], cwd=work, env=env, capture_output=True, text=True
        )
        if results.returncode != 0 or "mutmut_" not in results.stdout:
            raise click.ClickException("mutmut did not run:\n" + (run.stdout + run.stderr)[-3000:])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    modules: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    survivors: dict[str, list[str]] = collections.defaultdict(list)
    for line in results.stdout.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if not sep or "__mutmut_" not in name:
            continue
        module = name.split(".")[1]
        modules[module][status] += 1
        if status in ("survived", "no tests"):
            survivors[module].append(name.split(".", 2)[2])
    total = sum(modules.values(), collections.Counter())

    def score(counts) -> float:
        all_ = sum(counts.values())
        return round(100 * (counts["killed"] + counts["timeout"]) / all_, 1) if all_ else 0.0

    return {
        "tool": "mutmut",
        "modules": {m: dict(c, score=score(c)) for m, c in sorted(modules.items())},
        "total": dict(total),
        "score": score(total),
        "target": TARGET_PERCENT,
        "survivors": {m: sorted(v) for m, v in sorted(survivors.items())},
    }


def print_score(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="mutation score of the I/O-free core (mutmut, tests/device under CPython)")
    for name in ("module", "mutants", "killed", "timeout", "survived", "no tests", "score"):
        table.add_column(name, justify="left" if name == "module" else "right")
    rows = list(result["modules"].items()) + [("all", dict(result["total"], score=result["score"]))]
    for module, counts in rows:
        all_ = sum(v for k, v in counts.items() if k != "score")
        table.add_row(
            f"{module}.py" if module != "all" else "[bold]all[/]",
            str(all_),
            str(counts.get("killed", 0)),
            str(counts.get("timeout", 0)),
            str(counts.get("survived", 0)),
            str(counts.get("no tests", 0)),
            f"{counts['score']:.1f} %",
        )
    console = Console(highlight=False, width=max(100, shutil.get_terminal_size().columns))
    console.print(table)
    verdict = "met" if result["score"] >= result["target"] else "[red]missed[/]"
    console.print(f"core mutation score {result['score']:.1f} % (target {result['target']:.0f} %: {verdict})")


def run_and_report(root: Path = REPO) -> dict:
    result = measure(root)
    print_score(result)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(result, indent=1) + "\n")
    return result
