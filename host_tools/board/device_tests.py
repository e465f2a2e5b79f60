"""Run the device-side tests (tests/device/test_*.py) on a board and report each test (`test-device`).

The firmware build and the test files are synced to the board (only what changed; tests go to /tests), then every
test module runs in a fresh interpreter (a soft reset before each) through tests/device/runner.py, which prints
`PASS name` / `FAIL name: error` lines that are collected into a table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import click

from host_tools.board.build import DEFAULT_OUT, TARGET_FLAGS, UMQTT_SOURCE, BuildError, build_firmware
from host_tools.board.deploy import DeployError, DeployFile, build_files, check_port, open_board, owned_dirs, sync_files

REPO_ROOT = Path(__file__).resolve().parents[2]
DEVICE_TESTS = REPO_ROOT / "tests" / "device"
BOARD_TESTS_DIR = "/tests"

__test__ = False  # a host tool named test_*: not for pytest to collect

_LINE = re.compile(r"^(PASS|FAIL|SKIP|ERROR|DONE) (\S+?)(?::\s(.*)|\s(.*))?$")


@dataclass
class DeviceTestResult:
    module: str
    name: str
    outcome: str  # PASS, FAIL, SKIP, ERROR, TIMEOUT
    detail: str = ""
    traceback: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.outcome in ("FAIL", "ERROR", "TIMEOUT")


def parse_runner_output(module: str, text: str) -> list[DeviceTestResult]:
    """Turn the runner's lines into results; a module that stopped before its DONE line gets an ERROR."""
    results: list[DeviceTestResult] = []
    done = False
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        if line.startswith("  | "):
            if results:
                results[-1].traceback.append(line[4:])
            continue
        match = _LINE.match(line)
        if not match:
            continue
        outcome, name, detail = match.group(1), match.group(2), match.group(3) or ""
        if outcome == "DONE":
            done = True
            continue
        results.append(DeviceTestResult(module, name, outcome, detail))
    if not done:
        results.append(DeviceTestResult(module, module, "ERROR", "the module stopped before the runner finished"))
    return results


def find_test_modules(tests_dir: Path) -> list[Path]:
    return sorted(tests_dir.glob("test_*.py"))


def device_test_files(tests_dir: Path) -> list[DeployFile]:
    """Every .py in the tests folder (runner, tests, helpers) as /tests/<name> on the board."""
    return [DeployFile(f"{BOARD_TESTS_DIR}/{p.name}", p.read_bytes(), str(p)) for p in sorted(tests_dir.glob("*.py"))]


def run_module(transport, module: str, only: str | None, timeout: float, echo=None) -> list[DeviceTestResult]:
    from mpremote.transport import TransportError

    transport.enter_raw_repl(soft_reset=True)  # a fresh heap and no modules left over from the last test module
    code = f"import sys\nsys.path.insert(0, {BOARD_TESTS_DIR!r})\nimport runner\nrunner.run({module!r}, {only!r})\n"
    chunks = []

    def consume(data: bytes):
        chunks.append(data)
        if echo:
            echo(data)

    try:
        transport.exec_raw_no_follow(code)
        _, err = transport.follow(timeout, data_consumer=consume)
    except TransportError as exc:
        output = b"".join(chunks).decode(errors="replace").replace("\x04", "")
        results = [r for r in parse_runner_output(module, output) if r.outcome != "ERROR" or r.name != module]
        results.append(DeviceTestResult(module, module, "TIMEOUT", f"no output for {timeout:g} s ({exc})"))
        try:
            transport.enter_raw_repl(soft_reset=False)  # its Ctrl-C stops the stuck test
        except TransportError:
            pass
        return results
    output = b"".join(chunks).decode(errors="replace").replace("\x04", "")
    results = parse_runner_output(module, output)
    if err:
        text = err.decode(errors="replace").strip().splitlines()
        results.append(DeviceTestResult(module, module, "ERROR", text[-1] if text else "error", text))
    return results


def results_table(results: list[DeviceTestResult], title: str):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title))
    table.add_column("module")
    table.add_column("test")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    style = {"PASS": "green", "FAIL": "red", "ERROR": "red", "TIMEOUT": "red", "SKIP": "yellow"}
    for r in results:
        table.add_row(escape(r.module), escape(r.name), f"[{style[r.outcome]}]{r.outcome}[/]", escape(r.detail))
    return table


@click.command("test-device")
@click.option("--port", required=True, help="Serial port of the board (or a virtual board's pty).")
@click.option(
    "--tests",
    "tests_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=DEVICE_TESTS,
    show_default=True,
    help="Folder of device test modules (test_*.py).",
)
@click.option("-k", "select", help="Only test modules or tests whose name contains this text.")
@click.option(
    "--build",
    "build_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Firmware build to put on the board first [default: build firmware/ into build/mpy].",
)
@click.option(
    "--target",
    type=click.Choice(sorted(TARGET_FLAGS)),
    default="esp32",
    show_default=True,
    help="Target when building (without --build).",
)
@click.option("--no-deploy", is_flag=True, help="Use the firmware already on the board.")
@click.option(
    "--timeout", type=float, default=60, show_default=True, help="Seconds a test module may go without printing."
)
@click.option("-v", "--verbose", is_flag=True, help="Echo the board's output as the tests run.")
def test_device(port, tests_dir, select, build_dir, target, no_deploy, timeout, verbose):
    """Run tests/device/test_*.py on a board and report each test; exits non-zero on failures."""
    from rich.console import Console
    from rich.markup import escape

    console = Console()
    modules = [p.stem for p in find_test_modules(tests_dir)]
    if not (tests_dir / "runner.py").is_file():
        raise click.ClickException(f"{tests_dir}: no runner.py (the device-side test runner)")
    only = None
    if select:
        matching = [m for m in modules if select in m]
        if matching:
            modules = matching
        else:
            only = select  # not a module name: a test name filter within every module
    if not modules:
        raise click.ClickException(f"{tests_dir}: no test_*.py files" + (f" matching {select!r}" if select else ""))

    results: list[DeviceTestResult] = []
    try:
        check_port(port)
        files = device_test_files(tests_dir)
        if not no_deploy:
            if build_dir is None:
                build_dir = DEFAULT_OUT
                build_firmware(build_dir, target=target, umqtt_source=UMQTT_SOURCE)
            files = build_files(build_dir) + files
        with open_board(port) as transport:
            with console.status(f"syncing {len(files)} files to {port}"):
                synced = sync_files(transport, files, owned_dirs(files) + [BOARD_TESTS_DIR])
            copied = sum(1 for s in synced if s.action == "copied")
            console.print(f"{port}: {copied} files copied, {len(synced) - copied} up to date")
            echo = (
                (lambda data: console.out(data.decode(errors="replace").replace("\x04", ""), end=""))
                if verbose
                else None
            )
            for module in modules:
                with console.status(f"running {module} on {port}"):
                    results += run_module(transport, module, only, timeout, echo)
    except (DeployError, BuildError) as exc:
        raise click.ClickException(str(exc)) from None

    console.print(results_table(results, f"device tests on {port}"))
    for r in results:
        if r.failed and r.traceback:
            console.print(f"[red]{escape(r.module)}.{escape(r.name)}[/]")
            console.out("\n".join("    " + line for line in r.traceback))
    counts = {k: sum(1 for r in results if r.outcome == k) for k in ("PASS", "FAIL", "ERROR", "TIMEOUT", "SKIP")}
    summary = ", ".join(f"{n} {k.lower()}" for k, n in counts.items() if n)
    failed = [r for r in results if r.failed]
    if failed:
        raise click.ClickException(f"{len(failed)} of {len(results)} device tests failed ({summary})")
    if not results:
        raise click.ClickException("no tests ran" + (f" (nothing matches -k {select!r})" if select else ""))
    console.print(f"[green]all {len(results)} device tests passed[/] ({summary})")
