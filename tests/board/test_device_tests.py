"""test-device: device tests run on the (virtual) board through tests/device/runner.py, one row per test."""

import shutil
import subprocess

import pytest

from host_tools.board.device_tests import parse_runner_output
from host_tools.board.virtual_board import micropython_executable
from tests.host_helpers import REPO_ROOT, run_cli

pytestmark = pytest.mark.timeout(90)
RUNNER = REPO_ROOT / "tests" / "device" / "runner.py"


@pytest.fixture
def device_tests(tmp_path):
    folder = tmp_path / "device"
    folder.mkdir()
    shutil.copy(RUNNER, folder)
    shutil.copy(REPO_ROOT / "tests" / "device" / "test_smoke.py", folder)
    return folder


def _write_failing_module(folder):
    (folder / "test_mixed.py").write_text(
        "import runner\n"
        "def test_good():\n    pass\n"
        "def test_bad():\n    assert 1 == 2, 'one is not two'\n"
        "def test_skipped():\n    raise runner.SkipTest('needs wifi')\n"
    )
    (folder / "test_unimportable.py").write_text("import no_such_module\n")


def test_smoke_tests_pass_on_the_virtual_board(board, small_build, device_tests):
    proc = run_cli("test-device", "--port", board.port, "--build", str(small_build), "--tests", str(device_tests))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("test_python_works", "test_json_round_trip", "test_sha256_available", "test_import_path_has_lib"):
        assert name in proc.stdout
    assert "all 4 device tests passed" in proc.stdout


def test_failures_are_reported_per_test_and_exit_non_zero(board, device_tests):
    _write_failing_module(device_tests)
    proc = run_cli("test-device", "--port", board.port, "--no-deploy", "--tests", str(device_tests))
    assert proc.returncode == 1
    rows = {
        line.split("│")[2].strip(): line.split("│")[3].strip()
        for line in proc.stdout.splitlines()
        if line.count("│") >= 4 and "test_" in line.split("│")[2]
    }
    assert rows["test_good"] == "PASS" and rows["test_bad"] == "FAIL" and rows["test_skipped"] == "SKIP"
    assert rows["test_unimportable"] == "ERROR" and rows["test_python_works"] == "PASS"
    assert "one is not two" in proc.stdout and "no_such_module" in proc.stdout
    assert "device tests failed" in proc.stderr and "Traceback" not in proc.stderr


def test_a_hanging_test_times_out(board, device_tests):
    (device_tests / "test_hang.py").write_text("import time\ndef test_forever():\n    time.sleep(600)\n")
    proc = run_cli(
        "test-device", "--port", board.port, "--no-deploy", "--tests", str(device_tests), "-k", "hang", "--timeout", "2"
    )
    assert proc.returncode == 1 and "TIMEOUT" in proc.stdout


def test_runner_on_the_unix_port_directly(device_tests):
    _write_failing_module(device_tests)
    proc = subprocess.run(
        [micropython_executable(), "-c", "import runner; runner.run('test_mixed')"],
        cwd=device_tests,
        capture_output=True,
        text=True,
        timeout=20,
        env={"MICROPYPATH": f"{device_tests}:.frozen"},
    )
    results = {r.name: r.outcome for r in parse_runner_output("test_mixed", proc.stdout)}
    assert results == {"test_bad": "FAIL", "test_good": "PASS", "test_skipped": "SKIP"}, proc.stdout
    assert "FAIL test_bad: AssertionError: one is not two" in proc.stdout


def test_parse_runner_output():
    text = (
        "PASS test_a\nFAIL test_b: ValueError: bad thing\n  | Traceback (most recent call last):\n"
        '  |   File "x.py", line 3\nSKIP test_c: no wifi\nDONE mod passed=1 failed=1 skipped=1\n'
    )
    results = parse_runner_output("mod", text)
    assert [(r.name, r.outcome, r.detail) for r in results] == [
        ("test_a", "PASS", ""),
        ("test_b", "FAIL", "ValueError: bad thing"),
        ("test_c", "SKIP", "no wifi"),
    ]
    assert results[1].traceback == ["Traceback (most recent call last):", '  File "x.py", line 3']
    truncated = parse_runner_output("mod", "PASS test_a\n")
    assert truncated[-1].outcome == "ERROR"


def test_missing_port_and_empty_folder(tmp_path, device_tests):
    proc = run_cli("test-device", "--port", str(tmp_path / "ttyUSB5"), "--no-deploy", "--tests", str(device_tests))
    assert proc.returncode == 1 and "not found" in proc.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(RUNNER, empty)
    proc = run_cli("test-device", "--port", "/dev/null", "--tests", str(empty))
    assert proc.returncode == 1 and "no test_*.py files" in proc.stderr
