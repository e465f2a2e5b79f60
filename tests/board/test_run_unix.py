"""`run-unix` (issue 14): the timeout holds while the device prints, the provisioning file's CA file goes into the
flash as deploy puts it on a board, and a file the device would refuse (or one that writes outside the flash folder)
stops the command before anything is staged."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from host_tools.board import unix_port
from host_tools.provisioning import pki
from host_tools.provisioning.writing import DeviceSettings, create_provisioning_file
from host_tools.provisioning.x509_identity import create_x509_provisioning_file, plan_identity
from tests.host_helpers import DEVICE_KEY

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def provisioning(tmp_path):
    path = tmp_path / "dev" / "provisioning.json"
    create_provisioning_file(path, DeviceSettings(id_scope="0ne00AAAAAA"), "sensor-001", symmetric_key=DEVICE_KEY)
    return path


def _fake_device(monkeypatch, code: str):
    def start(root, heapsize=None, runtime=None, **_):
        return subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=root
        )

    monkeypatch.setattr(unix_port, "start_device", start)


def test_timeout_holds_while_the_device_prints(tmp_path, provisioning, monkeypatch):
    _fake_device(monkeypatch, "while True: print('telemetry', flush=True)")
    started = time.monotonic()
    result = CliRunner().invoke(
        unix_port.run_unix,
        ["--provisioning", str(provisioning), "--flash", str(tmp_path / "flash"), "--source", "--timeout", "2"],
    )
    assert time.monotonic() - started < 30
    assert result.exit_code == 1 and "did not finish within 2 s" in result.output


def test_the_provisioning_files_ca_file_goes_into_the_flash(tmp_path, provisioning, monkeypatch):
    _fake_device(monkeypatch, "import os; print(sorted(os.listdir('certs')))")
    flash = tmp_path / "flash"
    result = CliRunner().invoke(
        unix_port.run_unix, ["--provisioning", str(provisioning), "--flash", str(flash), "--source"]
    )
    assert result.exit_code == 0, result.output
    assert "dps-root.pem" in result.output
    assert (flash / "certs" / "dps-root.pem").read_bytes() == (provisioning.parent / "certs/dps-root.pem").read_bytes()


@pytest.mark.parametrize("storage_dir, words", [("../../etc", "storage_dir"), ("/tmp/elsewhere", "storage_dir")])
def test_a_file_writing_outside_the_flash_is_refused_before_staging(tmp_path, provisioning, storage_dir, words):
    config = json.loads(provisioning.read_text())
    config["storage_dir"] = storage_dir
    provisioning.write_text(json.dumps(config))
    flash = tmp_path / "flash"
    result = CliRunner().invoke(
        unix_port.run_unix, ["--provisioning", str(provisioning), "--flash", str(flash), "--source"]
    )
    assert result.exit_code == 1 and words in result.output and str(provisioning) in result.output
    assert not flash.exists(), "nothing is staged for a file the device refuses"


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_secrets_in_the_flash_are_the_owners_only(tmp_path, monkeypatch):
    """Issue 21, item 1: the flash copies of provisioning.json (Wi-Fi password) and the X.509 private key are 0600
    as `provision-file create` wrote them (they were copied 0644), and the flash folder is not world-writable."""
    group = pki.ensure_x509_group_ca(tmp_path / "group-ca")
    provisioning = tmp_path / "dev" / "provisioning.json"
    settings = DeviceSettings(id_scope="0ne00AAAAAA", wifi_ssid="lab", wifi_password="wifi-secret")
    identity = plan_identity("sensor-x509", group_ca=group.intermediate, group_ca_key=group.intermediate_key)
    create_x509_provisioning_file(provisioning, settings, "sensor-x509", identity)
    _fake_device(monkeypatch, "print('ran')")
    flash = tmp_path / "flash"
    old = os.umask(0o022)  # the usual umask: what a plain copy gets is 0644
    try:
        result = CliRunner().invoke(
            unix_port.run_unix, ["--provisioning", str(provisioning), "--flash", str(flash), "--source"]
        )
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    config = json.loads((flash / "provisioning.json").read_text())
    assert config["wifi"]["password"] == "wifi-secret"
    assert _mode(flash / "provisioning.json") == 0o600
    assert _mode(flash / config["private_key_file"]) == 0o600
    assert _mode(flash / config["certificate_file"]) == 0o644  # public: left as any file
    assert not flash.stat().st_mode & stat.S_IWOTH


def test_a_staged_device_root_holds_its_provisioning_file_owner_only(tmp_path):
    """The demo's and the tests' flash folders (stage_device_root, from a dict or a file) get the same mode."""
    old = os.umask(0o022)
    try:
        from_dict = unix_port.stage_device_root(tmp_path / "a", {"symmetric_key": "k"}, use_mpy=False)
        source = tmp_path / "provisioning.json"
        source.write_text("{}")
        from_file = unix_port.stage_device_root(tmp_path / "b", source, use_mpy=False)
    finally:
        os.umask(old)
    assert _mode(from_dict / "provisioning.json") == 0o600 and _mode(from_file / "provisioning.json") == 0o600


def test_an_application_file_runs_instead_of_the_firmwares_main(tmp_path, provisioning):
    """Issue 21, item 7: `run-unix --app my_app.py` runs your application (it imports azprov from the flash folder,
    as on a board) instead of the firmware's main.py, with the provisioning file beside it."""
    app = tmp_path / "my_app.py"
    app.write_text(
        "import json, sys\nimport azprov\nprint('my app', json.load(open('provisioning.json'))['id_scope'])\n"
    )
    result = CliRunner().invoke(
        unix_port.run_unix,
        ["--provisioning", str(provisioning), "--flash", str(tmp_path / "flash"), "--source", "--app", str(app)],
    )
    assert result.exit_code == 0, result.output
    assert "my app 0ne00AAAAAA" in result.output
    assert (tmp_path / "flash" / "main.py").read_bytes() == app.read_bytes()
