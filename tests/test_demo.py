"""`make run`'s demo as a user runs it: exit status 0, every step in the result table done, the gateway's own
record of the telemetry counted, and no key in what it prints."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from host_tools.board.unix_port import REPO

ROW = re.compile(r"^│ (.+?)\s+│ (.+?)\s+│$")


def test_demo_exit_status_and_result_table(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "host_tools", "demo", "--workdir", str(tmp_path / "demo")],
        cwd=REPO,
        env=dict(os.environ, COLUMNS="200"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    rows = dict(m.groups() for m in map(ROW.match, output.splitlines()) if m)
    steps = (
        "provisioning file loaded",
        "DPS connected (TLS verified)",
        "registered",
        "trust bundle stored",
        "gateway certificate verified",
        "telemetry acknowledged",
    )
    assert {step: rows.get(step) for step in steps} == dict.fromkeys(steps, "done"), output
    assert rows["certificates stored"] == "1"
    assert rows["device exit status"] == "0"
    # The demo's cross-check: the gateway emulator's own record of the message, read back from its file.
    recorded = [
        json.loads(line)
        for line in (tmp_path / "demo" / "emulator" / "telemetry.jsonl").read_text().splitlines()
        if line.strip()
    ]
    assert rows["telemetry recorded by the gateway"] == str(len(recorded)) == "1"
    assert "every step happened" in output
    enrollments = json.loads((tmp_path / "demo" / "enrollments.json").read_text())
    key = enrollments["individual"][0]["symmetric_key"]
    assert key not in output and "SharedAccessSignature" not in output


# What the device prints in a run where every step happens, but no telemetry reaches the gateway.
_STEPS_WITHOUT_TELEMETRY = """
azprov INFO config_loaded registration_id=demo-device-001
azprov INFO dps_connected host=localhost
azprov INFO registered hub=demo-hub.azure-devices.net device_id=demo-device-001
azprov INFO trust_bundle_stored certificates=1
azprov INFO trust_bundle_cert sha256=00 subject=CN=root
azprov INFO gateway_verified host=localhost
azprov INFO telemetry_acknowledged device_id=demo-device-001 sequence=0
"""


def test_an_earlier_runs_telemetry_is_not_counted(tmp_path, monkeypatch):
    """Issue 21, item 5: the gateway's record (telemetry.jsonl) is kept across runs in the same folder, so the
    demo's cross-check counts only this run's messages. A device that claims every step but whose message never
    reached the gateway fails the demo although an earlier run's message for the same device is in the record."""
    from click.testing import CliRunner

    from host_tools import demo

    workdir = tmp_path / "demo"
    record = workdir / "emulator" / "telemetry.jsonl"
    record.parent.mkdir(parents=True)
    stale = {"received_at": 1.0, "device_id": demo.REGISTRATION_ID, "hub": demo.HUB, "topic": "t", "payload": "{}"}
    record.write_text(json.dumps(stale) + "\n")

    def device_without_telemetry(root, **_):
        code = f"print({_STEPS_WITHOUT_TELEMETRY!r})"
        return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=root)

    monkeypatch.setattr(demo, "start_device", device_without_telemetry)
    result = CliRunner().invoke(demo.demo, ["--workdir", str(workdir), "--source"], terminal_width=200)
    rows = dict(m.groups() for m in map(ROW.match, result.output.splitlines()) if m)
    assert rows.get("telemetry acknowledged") == "done", result.output  # the device's claim was seen
    assert rows.get("telemetry recorded by the gateway") == "0", result.output
    assert result.exit_code == 1 and "demo failed" in result.output
