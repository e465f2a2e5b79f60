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
