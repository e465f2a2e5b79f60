"""`python -m host_tools mutants`: every promise mutant of mutants.toml, each applied alone to a scratch copy of the
repository, with the tests mapped to it run there. A mutant is killed when those tests fail; it survives when they
pass. An anchor that no longer occurs exactly once (the code was refactored) is reported as such and fails the run,
so a mutant can never pass silently because it no longer changes anything.

The scratch copy holds the firmware, the host tools, the tests and the board files (umqtt and the Unix ports built
from source without frozen firmware are linked from this checkout's build/); pytest runs in it with this venv's Python, so `host_tools` and `firmware/` are imported from
the copy, never from the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import click

REPO = Path(__file__).resolve().parents[2]
CATALOGUE = Path(__file__).resolve().with_name("mutants.toml")
REPORT = REPO / "build" / "mutants" / "report.json"
COPIED = ("firmware", "host_tools", "tests", "boards", "pyproject.toml")
DEFAULT_TIMEOUT_S = 900


@dataclass
class Mutant:
    id: str
    file: str
    anchor: str
    replace: str
    promise: str
    tests: list[str]
    origin: str = ""
    fast: bool = False

    def test_files(self) -> list[str]:
        return sorted({t.split("::")[0] for t in self.tests})


@dataclass
class Outcome:
    mutant: Mutant
    result: str  # killed | SURVIVED | anchor not found | anchor not unique | error
    seconds: float = 0.0
    detail: str = ""
    failed_tests: list[str] = field(default_factory=list)

    @property
    def killed(self) -> bool:
        return self.result == "killed"


class CatalogueError(click.ClickException):
    pass


def load(path: Path = CATALOGUE) -> list[Mutant]:
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError(f"{path}: {exc}") from None
    mutants, seen = [], set()
    for index, entry in enumerate(doc.get("mutant", [])):
        missing = [k for k in ("id", "file", "anchor", "replace", "promise", "tests") if k not in entry]
        if missing:
            raise CatalogueError(f"{path}: mutant {index + 1} has no {', '.join(missing)}")
        unknown = set(entry) - set(Mutant.__dataclass_fields__)
        if unknown:
            raise CatalogueError(f"{path}: mutant {entry['id']}: unknown field(s) {', '.join(sorted(unknown))}")
        if entry["id"] in seen:
            raise CatalogueError(f"{path}: mutant id {entry['id']} appears twice")
        if entry["anchor"] == entry["replace"]:
            raise CatalogueError(f"{path}: mutant {entry['id']}: replace is the same as anchor")
        if not entry["tests"]:
            raise CatalogueError(f"{path}: mutant {entry['id']}: no tests")
        seen.add(entry["id"])
        mutants.append(Mutant(**entry))
    return mutants


def anchor_problem(mutant: Mutant, root: Path = REPO) -> str | None:
    """None when the mutant applies to the tree at `root`, else what is wrong ("anchor not found", ...)."""
    path = root / mutant.file
    if not path.is_file():
        return "anchor not found"  # the file itself is gone
    count = path.read_text().count(mutant.anchor)
    if count == 0:
        return "anchor not found"
    if count > 1:
        return "anchor not unique"
    return None


def missing_tests(mutant: Mutant, root: Path = REPO) -> list[str]:
    """Mapped tests whose file or function does not exist (a renamed test must not leave a mutant unchecked)."""
    out = []
    for test in mutant.tests:
        file, _, name = test.partition("::")
        path = root / file
        if not path.is_file() or name and f"def {name.split('[')[0]}(" not in path.read_text():
            out.append(test)
    return out


def make_scratch(root: Path = REPO) -> Path:
    scratch = Path(tempfile.mkdtemp(prefix="azprov-mutant-"))
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", ".pytest_cache")
    for name in COPIED:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, scratch / name, ignore=ignore, symlinks=True)
        elif src.exists():
            shutil.copy2(src, scratch / name)
    (scratch / "build").mkdir()
    lib = root / "build" / "lib"
    if lib.exists():
        (scratch / "build" / "lib").symlink_to(lib, target_is_directory=True)
    # The Unix ports built from source, except those with the firmware frozen in: those hold the unmutated firmware
    # (and a rebuild in the copy must never write into this checkout's build folder).
    built = root / "build" / "runtimes"
    if built.is_dir():
        (scratch / "build" / "runtimes").mkdir()
        for entry in built.iterdir():
            if "frozen" not in entry.name:
                (scratch / "build" / "runtimes" / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    return scratch


def _runtime_filter() -> list[str]:
    """Device tests run on the default runtime (the PyPI wheel's Unix port, which runs the mutated .py/.mpy files)
    only: a runtime with the firmware frozen in would need a rebuild per mutant."""
    try:
        from host_tools.board import runtimes
    except ImportError:
        return []
    others = [name for name in getattr(runtimes, "TESTED", ()) if name != runtimes.DEFAULT]
    return ["-k", " and ".join(f"not {name}" for name in others)] if others else []


def run_tests(tests: list[str], cwd: Path, timeout: float) -> tuple[int, str]:
    # AZPROV_FULL=1: a mutant meets the full reliability tests (every power-cut kill point, every bulk case), not the
    # sample `make test` runs (tests/host_helpers.py). addopts cleared: one pytest process, no workers.
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", AZPROV_FULL="1")
    env.pop("PYTEST_ADDOPTS", None)
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-o", "addopts="]
    command += _runtime_filter() + list(tests)
    try:
        proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return -1, out + f"\n(timed out after {timeout:.0f} s)"
    return proc.returncode, proc.stdout + proc.stderr


def _reason(output: str) -> str:
    """The first assertion or error line pytest printed: why the tests failed (shown, so a kill can be judged)."""
    for line in output.splitlines():
        if line.startswith("E "):
            return line[1:].strip()[:200]
    return "timed out" if "timed out after" in output else ""


def _failed(output: str) -> list[str]:
    return [line.split(" ", 2)[1] for line in output.splitlines() if line.startswith(("FAILED ", "ERROR "))]


def run_mutant(mutant: Mutant, root: Path = REPO, timeout: float = DEFAULT_TIMEOUT_S) -> Outcome:
    """Applies one mutant to a fresh scratch copy of `root`, runs its tests there, and says what happened."""
    problem = anchor_problem(mutant, root)
    if problem:
        return Outcome(mutant, problem, detail=f"{mutant.file}: {problem}")
    absent = missing_tests(mutant, root)
    if absent:
        return Outcome(mutant, "error", detail="mapped tests not found: " + ", ".join(absent))
    scratch = make_scratch(root)
    started = time.monotonic()
    try:
        target = scratch / mutant.file
        target.write_text(target.read_text().replace(mutant.anchor, mutant.replace, 1))
        status, output = run_tests(mutant.tests, scratch, timeout)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    seconds = time.monotonic() - started
    failed = _failed(output)
    if status == -1 or (status == 1 and any(line.startswith("FAILED ") for line in output.splitlines())):
        # Tests failed (or hung: the timeout is a failure a user would see too). Errors in set-up alone (a runtime
        # that cannot be built, a fixture that breaks) say nothing about the promise: reported as "error".
        return Outcome(mutant, "killed", seconds, detail=_reason(output), failed_tests=failed)
    if status == 0:
        return Outcome(mutant, "SURVIVED", seconds, detail=output[-1500:])
    return Outcome(mutant, "error", seconds, detail=f"pytest exit status {status}:\n{output[-3000:]}")


def select(mutants: list[Mutant], only: tuple[str, ...], fast: bool) -> list[Mutant]:
    if only:
        unknown = set(only) - {m.id for m in mutants}
        if unknown:
            raise click.BadParameter(f"unknown mutant id(s): {', '.join(sorted(unknown))}", param_hint="--only")
        mutants = [m for m in mutants if m.id in only]
    if fast:
        mutants = [m for m in mutants if m.fast]
    return mutants


def print_table(outcomes: list[Outcome]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="promise mutants")
    for name in ("mutant", "file", "promise", "tests", "result", "s"):
        table.add_column(name, justify="right" if name == "s" else "left", overflow="fold")
    for o in outcomes:
        colour = "green" if o.killed else "red"
        tests = "\n".join(t.replace("tests/", "", 1) for t in o.mutant.tests)
        table.add_row(
            o.mutant.id,
            o.mutant.file.replace("firmware/azprov/", ""),
            o.mutant.promise,
            tests,
            f"[{colour}]{o.result}[/]",
            f"{o.seconds:.0f}",
        )
    console = Console(width=max(160, shutil.get_terminal_size().columns), highlight=False)
    console.print(table)
    killed = sum(o.killed for o in outcomes)
    console.print(f"{killed} of {len(outcomes)} mutants killed")


@click.command("mutants")
@click.option("--only", multiple=True, metavar="ID", help="Run only this mutant (repeatable).")
@click.option("--fast", is_flag=True, help="Only the quick subset (mutants marked fast = true).")
@click.option("--list", "list_only", is_flag=True, help="List the mutants and check their anchors; run nothing.")
@click.option("--baseline/--no-baseline", default=True, help="First run the mapped tests on the unchanged code.")
@click.option("--timeout", type=float, default=DEFAULT_TIMEOUT_S, show_default=True, help="Seconds per mutant.")
@click.option(
    "--score/--no-score",
    default=None,
    help="Also measure the I/O-free core's mutation score with mutmut (default: on for a full run).",
)
def mutants_command(
    only: tuple[str, ...], fast: bool, list_only: bool, baseline: bool, timeout: float, score: bool | None
):
    """Apply each promise mutant of host_tools/mutation/mutants.toml and check its tests catch it."""
    chosen = select(load(), only, fast)
    if list_only:
        for m in chosen:
            problem = anchor_problem(m) or ("missing tests" if missing_tests(m) else "ok")
            click.echo(f"{m.id:40} {m.file:34} {problem}")
        return
    if baseline:
        tests = sorted({t for m in chosen for t in m.tests})
        click.echo(f"baseline: {len(tests)} mapped tests on the unchanged code ...")
        scratch = make_scratch()
        try:
            status, output = run_tests(tests, scratch, timeout * 2)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if status != 0:
            raise click.ClickException("the mapped tests fail without any mutant:\n" + output[-3000:])
    outcomes = []
    for index, mutant in enumerate(chosen, 1):
        click.echo(f"[{index}/{len(chosen)}] {mutant.id} ({mutant.file}) ...", nl=False)
        outcome = run_mutant(mutant, timeout=timeout)
        click.echo(f" {outcome.result} ({outcome.seconds:.0f} s)")
        if outcome.killed:
            click.echo(f"    {', '.join(outcome.failed_tests) or '?'}: {outcome.detail}")
        elif outcome.detail:
            click.echo("    " + outcome.detail.strip().replace("\n", "\n    ")[-2000:])
        outcomes.append(outcome)
    print_table(outcomes)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(
        json.dumps(
            [
                {
                    "id": o.mutant.id,
                    "file": o.mutant.file,
                    "origin": o.mutant.origin,
                    "promise": o.mutant.promise,
                    "tests": o.mutant.tests,
                    "result": o.result,
                    "failed_tests": o.failed_tests,
                    "why": o.detail if o.killed else "",
                    "seconds": round(o.seconds, 1),
                }
                for o in outcomes
            ],
            indent=1,
        )
        + "\n"
    )
    if score is None:
        score = not (only or fast)
    if score:
        from host_tools.mutation.score import run_and_report

        run_and_report()
    if not all(o.killed for o in outcomes):
        raise SystemExit(1)
