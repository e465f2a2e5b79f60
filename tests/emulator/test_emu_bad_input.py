"""Issue 14, emulator side: enrollment-file errors never echo a key; an invalid edit while running (not UTF-8,
nested too deeply, a FIFO) is logged and ignored, never a traceback in a connection; files are read with a size
limit; bad options and unusable folders end in one line; a clean stop removes the ready marker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from host_tools.emulator import write_demo_enrollments, write_enrollments
from host_tools.emulator.enrollment_file import load_enrollments
from host_tools.emulator.enrollments import EnrollmentError, parse_enrollments
from host_tools.emulator.testing import connect_dps, register_raw

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[2]
KEY = "Z3JvdXAta2V5LXRoYXQtbXVzdC1uZXZlci1sZWFrIQ=="


def _doc(**entries):
    document = {"id_scope": "0ne00000001", "individual": [], "groups": []}
    document.update(entries)
    return document


@pytest.mark.parametrize(
    "document, field",
    [
        (_doc(individual={"registration_id": "d", "symmetric_key": KEY, "assigned_hub": "h"}), "individual"),
        (_doc(individual=[{"registration_id": "d", "symmetric_key": [KEY], "assigned_hub": "h"}]), "symmetric_key"),
        (_doc(groups=[{"group_id": "g", "group_key": {"k": KEY}, "assigned_hub": "h"}]), "group_key"),
        ([{"group_id": "g", "group_key": KEY}], ""),
        (_doc(groups=[{"group_id": "g", "group_key": KEY, "assigned_hub": "h", "extra": KEY}]), "groups[0]"),
        (_doc(groups=[{"group_id": KEY + "!", "group_key": KEY, "assigned_hub": "h"}]), "group_id"),
        (_doc(individual=[{"registration_id": "d", "symmetric_key": KEY}]), "individual[0]"),
        (_doc(groups=[{"group_id": "g", "group_key": KEY, "assigned_hub": 5, "comment": KEY}]), "assigned_hub"),
    ],
)
def test_enrollment_errors_never_echo_a_key(document, field):
    with pytest.raises(EnrollmentError) as caught:
        parse_enrollments(document, check_files=False)
    message = str(caught.value)
    assert KEY not in message and KEY[:12] not in message, message
    assert field in message


def _invalid_edits(path: Path):
    yield "not UTF-8", lambda: path.write_bytes(b'{"id_scope": "0ne\xff"}')
    yield "deep", lambda: path.write_text("[" * 100_000 + "]" * 100_000)
    yield "deep for the validator", lambda: path.write_text('{"faults": ' + "[" * 900 + "]" * 900 + "}")
    yield "NaN", lambda: path.write_text('{"id_scope": NaN}')

    def fifo():
        path.unlink()
        os.mkfifo(path)

    yield "FIFO", fifo


def test_invalid_edits_while_running_are_logged_and_ignored(make_emulator, enrollment_doc, key):
    emu = make_emulator()
    path = emu.enrollments_path
    for number, (name, edit) in enumerate(_invalid_edits(path)):
        os.utime(path, ns=(number, number)) if path.exists() and not path.is_fifo() else None
        edit()
        with connect_dps(emu, "dev-1", key) as client:
            status, answer = register_raw(client, "dev-1", rid=str(number))
        assert status == 200 and answer["status"] == "assigned", name
        assert emu.enrollment_error is not None, name
        assert "Traceback" not in str(emu.enrollment_error)
        assert emu.stats["dps"].get("internal_errors", 0) == 0, name
    path.unlink()
    write_enrollments(path, enrollment_doc)


@pytest.mark.parametrize("special", ["/dev/zero", "fifo", "folder"])
def test_special_files_are_refused_not_read(tmp_path, special):
    path = {"/dev/zero": Path("/dev/zero"), "fifo": tmp_path / "fifo", "folder": tmp_path}[special]
    if special == "fifo":
        os.mkfifo(path)
    with pytest.raises(EnrollmentError, match="regular file|folder"):
        load_enrollments(path)


def test_huge_enrollment_file_refused(tmp_path, monkeypatch):
    from host_tools.emulator import enrollment_file

    monkeypatch.setattr(enrollment_file, "MAX_FILE_BYTES", 1000)
    path = tmp_path / "e.json"
    path.write_text(json.dumps(_doc(comment="x" * 2000)))
    with pytest.raises(EnrollmentError, match="larger than 1000 bytes"):
        load_enrollments(path)


def _cli(*args, timeout=30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "host_tools", "emulator", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    "make_args, words",
    [
        (lambda t: ["--enrollments", "/dev/zero"], "not a regular file"),
        (lambda t: ["--enrollments", _fifo(t)], "not a regular file"),
        (lambda t: ["--enrollments", _deep(t)], "nested too deeply"),
        (lambda t: ["--enrollments", _bytes(t, b"\xff\xfe{}")], "not UTF-8"),
        (lambda t: ["--enrollments", _demo(t), "--rate-limit", "nan"], "--rate-limit"),
        (lambda t: ["--enrollments", _demo(t), "--rate-limit", "inf"], "--rate-limit"),
        (lambda t: ["--enrollments", _demo(t), "--ip", "not-an-ip"], "not an IP address"),
        (lambda t: ["--enrollments", _demo(t), "--host", "not an ip"], "not an IP address"),
        (lambda t: ["--enrollments", _demo(t), "--dps-hostname", "evil/host"], "host name"),
        (lambda t: ["--enrollments", _demo(t), "--gateway-hostname", "a b"], "host name"),
    ],
)
def test_bad_emulator_input_ends_in_one_line(tmp_path, make_args, words):
    proc = _cli("--state-dir", tmp_path / "state", *make_args(tmp_path))
    assert proc.returncode != 0
    assert words in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "state" / "emulator.json").exists()


def test_unusable_state_folder_ends_in_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = _cli("--state-dir", blocker / "state", "--enrollments", _demo(tmp_path))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert str(blocker) in proc.stderr and "state folder" in proc.stderr, proc.stderr


def _demo(tmp_path: Path) -> Path:
    path = tmp_path / "demo.json"
    if not path.exists():
        write_demo_enrollments(path)
    return path


def _fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo.json"
    os.mkfifo(path)
    return path


def _deep(tmp_path: Path) -> Path:
    return _bytes(tmp_path, b"[" * 100_000 + b"]" * 100_000)


def _bytes(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "bytes.json"
    path.write_bytes(data)
    return path


def test_clean_stop_removes_the_ready_marker(tmp_path):
    import signal
    import time

    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "host_tools",
            "emulator",
            "--state-dir",
            tmp_path / "s",
            "--enrollments",
            _demo(tmp_path),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    marker = tmp_path / "s" / "emulator.json"
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=15)
    assert process.returncode == 0
    assert not marker.exists(), "emulator.json outlived the emulator"
