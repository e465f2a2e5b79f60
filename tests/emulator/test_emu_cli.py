"""`python -m host_tools emulator` as a process: emulator.json, printed lines, signals, errors, no secrets."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from host_tools.emulator import write_demo_enrollments, write_enrollments
from host_tools.emulator.testing import connect_dps, dps_token, register_raw

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "host_tools", "emulator", *map(str, args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


class Running:
    """What a test needs from the running emulator process (duck-types the bits of `Emulator` the helpers use)."""

    def __init__(self, info):
        self.host, self.dps_port, self.id_scope = info["dps"]["host"], info["dps"]["port"], info["id_scope"]
        self.pki = type("Pki", (), {"dps_root": info["pki"]["dps_root"]})


def wait_for_info(state: Path, process) -> dict:
    path = state / "emulator.json"
    deadline = time.time() + 30
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"emulator exited: {process.communicate()}")
        assert time.time() < deadline, "emulator.json not written"
        time.sleep(0.05)
    return json.loads(path.read_text())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_runs_records_and_stops_cleanly(tmp_path, signum):
    state = tmp_path / "state"
    document = write_demo_enrollments(tmp_path / "enrollments.json", devices=("dev-1",))
    key = document["individual"][0]["symmetric_key"]
    process = run_cli(
        "--state-dir",
        state,
        "--enrollments",
        tmp_path / "enrollments.json",
        "-v",
        "--fault",
        "assigning_polls=1",
        "--fault",
        'throttle_register={"count": 1}',
    )
    try:
        info = wait_for_info(state, process)
        assert info["pid"] == process.pid and info["dps"]["hostname"] == "localhost"
        assert Path(info["pki"]["dps_root"]) == state.resolve() / "pki" / "dps-root.pem"
        assert info["telemetry"] == str(state.resolve() / "telemetry.jsonl")
        emu = Running(info)
        token = dps_token(emu, "dev-1", key)
        with connect_dps(emu, "dev-1", key, token=token) as client:
            assert client.dps_request("$dps/registrations/PUT/iotdps-register/?$rid=1", b"")[0] == 429
            status, final = register_raw(client, "dev-1", rid="2")
        assert status == 200 and final["status"] == "assigned"
        with connect_dps(emu, "dev-1", document["groups"][0]["group_key"]) as client:  # wrong key: 401
            assert client.dps_request("$dps/registrations/PUT/iotdps-register/?$rid=3", b"")[0] == 401
    finally:
        process.send_signal(signum)
        out, err = process.communicate(timeout=15)
    assert process.returncode == 0, err
    assert f"DPS listening on 127.0.0.1:{info['dps']['port']}" in out
    assert f"gateway listening on 127.0.0.1:{info['gateway']['port']}" in out
    assert info["pki"]["dps_root"] in out and info["pki"]["trust_root"] in out
    records = [json.loads(line) for line in (state / "registrations.jsonl").read_text().splitlines()]
    assert [r["http_status"] for r in records] == [429, 200, 401]
    everything = out + err + (state / "registrations.jsonl").read_text()
    signature = token.split("sig=")[1].split("&")[0]
    for secret in (key, document["groups"][0]["group_key"], signature, "SharedAccessSignature", "sig="):
        assert secret not in everything, secret
    assert "DEBUG" in err  # -v really was verbose


def test_bad_enrollment_file_names_the_field(tmp_path):
    document = write_demo_enrollments(tmp_path / "e.json")
    document["individual"][0]["symmetric_key"] = "not*base64"
    write_enrollments(tmp_path / "e.json", document)
    process = run_cli("--state-dir", tmp_path / "s", "--enrollments", tmp_path / "e.json")
    out, err = process.communicate(timeout=30)
    assert process.returncode == 1
    assert "individual[0].symmetric_key" in err and "base64" in err
    assert not (tmp_path / "s" / "emulator.json").exists()


@pytest.mark.parametrize("fault, text", [("bogus=1", "unknown fault"), ("drop_after=later", "drop_after")])
def test_bad_fault_option(tmp_path, fault, text):
    write_demo_enrollments(tmp_path / "e.json")
    process = run_cli("--state-dir", tmp_path / "s", "--enrollments", tmp_path / "e.json", "--fault", fault)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 2 and text in err


def test_demo_enrollments_and_port_in_use(tmp_path):
    enrollments = tmp_path / "s" / "enrollments.json"
    first = run_cli("--state-dir", tmp_path / "s", "--enrollments", enrollments, "--write-demo-enrollments")
    try:
        info = wait_for_info(tmp_path / "s", first)
        assert json.loads(enrollments.read_text())["individual"][0]["registration_id"] == "sensor-001"
        second = run_cli("--state-dir", tmp_path / "t", "--enrollments", enrollments, "--dps-port", info["dps"]["port"])
        _, err = second.communicate(timeout=30)
        assert second.returncode == 1 and "cannot listen" in err
    finally:
        first.terminate()
        first.communicate(timeout=15)
    assert first.returncode == 0


def test_help_lists_the_faults():
    result = subprocess.run(
        [sys.executable, "-m", "host_tools", "emulator", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0
    for word in ("--state-dir", "--enrollments", "--fault", "--rate-limit", "throttle_register", "mid_payload"):
        assert word in result.stdout


def test_recorded_credentials_are_the_owners_only(make_emulator, state_dir, key):
    """Issue 21, item 1: --record-credentials writes live SAS tokens (`sig=`): the file is 0600, also when an
    earlier run left it readable by others (it was 0644)."""
    import os
    import stat

    from host_tools.emulator.server import CREDENTIALS_RECEIVED

    path = state_dir / CREDENTIALS_RECEIVED
    state_dir.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    os.chmod(path, 0o644)
    emu = make_emulator(record_credentials=True)
    with connect_dps(emu, "dev-1", key) as client:
        assert register_raw(client, "dev-1")[0] == 200
    emu.stop()
    assert "sig=" in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not state_dir.stat().st_mode & stat.S_IWOTH
