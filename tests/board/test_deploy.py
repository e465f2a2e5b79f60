"""deploy: the device image copied to a (virtual) board with the real mpremote; unchanged files are not copied."""

import json

import pytest

from host_tools.board.deploy import (
    ESP32_FREE_HEAP_BYTES,
    DeployError,
    build_files,
    memory_fit,
    owned_dirs,
    plan_image,
    provisioning_files,
)
from tests.host_helpers import DEVICE_KEY, mpremote, run_cli

pytestmark = pytest.mark.timeout(90)


def _actions(stdout: str) -> dict:
    """board file -> action, from deploy's table."""
    actions = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if len(cells) == 3 and cells[0].startswith("/"):
            actions[cells[0]] = cells[2]
    return actions


def test_deploy_then_redeploy_copies_nothing(board, small_build, provisioning):
    args = ["deploy", "--port", board.port, "--build", str(small_build), "--provisioning", str(provisioning)]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    actions = _actions(first.stdout)
    assert actions == {
        "/azprov/__init__.py": "copied",
        "/azprov/data.py": "copied",
        "/lib/umqtt/simple.py": "copied",
        "/main.py": "copied",
        "/provisioning.json": "copied",
        "/certs/dps-root.pem": "copied",
    }
    assert board.wait_for(b"small build main ran", timeout=10), "deploy soft-resets the board and main.py runs"
    assert DEVICE_KEY not in first.stdout + first.stderr

    on_board = mpremote(board.port, "fs", "cat", ":provisioning.json")
    assert json.loads(on_board.stdout) == json.loads(provisioning.read_text())
    proc = mpremote(board.port, "exec", "import azprov.data; print(len(azprov.data.BLOB))")
    assert proc.stdout.strip() == str(256 * 8)

    second = run_cli(*args, "--no-reset")
    assert second.returncode == 0, second.stderr
    assert set(_actions(second.stdout).values()) == {"unchanged"}
    assert "0 copied" in second.stdout


def test_changed_file_copied_and_stale_file_removed(board, small_build):
    args = ["deploy", "--port", board.port, "--build", str(small_build), "--no-reset"]
    assert run_cli(*args).returncode == 0
    (small_build / "azprov" / "__init__.py").write_text("VERSION = 2\n")
    (small_build / "azprov" / "data.py").unlink()
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert _actions(proc.stdout) == {
        "/azprov/__init__.py": "copied",
        "/lib/umqtt/simple.py": "unchanged",
        "/main.py": "unchanged",
        "/azprov/data.py": "removed",
    }
    listing = mpremote(board.port, "exec", "import os; print(sorted(os.listdir('/azprov')))")
    assert listing.stdout.strip() == "['__init__.py']", "no .tmp files or stale modules are left behind"


def test_real_build_imports_on_the_board(board, tmp_path):
    from host_tools.board.build import UMQTT_SOURCE, build_firmware

    if not UMQTT_SOURCE.exists():
        pytest.skip("umqtt not fetched (make setup)")
    build_firmware(tmp_path / "mpy", "unix")
    proc = run_cli("deploy", "--port", board.port, "--build", str(tmp_path / "mpy"), "--no-reset")
    assert proc.returncode == 0, proc.stderr
    check = mpremote(board.port, "exec", "import azprov.config, azprov.sas, umqtt.simple; print('imports ok')")
    assert check.stdout.strip() == "imports ok", check.stdout + check.stderr


def test_ca_file_outside_the_provisioning_folder_is_placed_in_certs(tmp_path, provisioning):
    ca = tmp_path / "pki" / "emulator-root.pem"
    ca.parent.mkdir()
    ca.write_bytes((provisioning.parent / "certs" / "dps-root.pem").read_bytes())
    config = json.loads(provisioning.read_text())
    config["dps_ca_file"] = str(ca)
    provisioning.write_text(json.dumps(config))
    files = {f.dest: f for f in provisioning_files(provisioning)}
    assert set(files) == {"/provisioning.json", "/certs/emulator-root.pem"}
    assert json.loads(files["/provisioning.json"].data)["dps_ca_file"] == "certs/emulator-root.pem"


def test_plan_and_errors(tmp_path, small_build, provisioning):
    files = plan_image(small_build, provisioning, boot=None)
    assert owned_dirs(files) == ["/azprov", "/lib/umqtt"]
    frozen = plan_image(small_build, provisioning, frozen=True)
    assert sorted(f.dest for f in frozen) == ["/certs/dps-root.pem", "/main.py", "/provisioning.json"]
    with pytest.raises(DeployError, match="build folder not found"):
        build_files(tmp_path / "nowhere")
    with pytest.raises(DeployError, match="boot file not found"):
        plan_image(small_build, boot=tmp_path / "boot.py")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"dps_host": "x"}))
    with pytest.raises(DeployError, match="bad.json: id_scope: is required"):
        plan_image(small_build, bad)


def test_command_errors_are_messages(tmp_path, small_build):
    proc = run_cli("deploy", "--port", str(tmp_path / "ttyUSB3"), "--build", str(small_build))
    assert proc.returncode == 1 and "serial port" in proc.stderr and "not found" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli("deploy", "--port", "/dev/null", "--build", str(tmp_path / "missing"))
    assert proc.returncode == 1 and "build folder not found" in proc.stderr
    proc = run_cli(
        "deploy", "--port", "/dev/null", "--build", str(small_build), "--provisioning", str(tmp_path / "none.json")
    )
    assert proc.returncode == 1 and "none.json: provisioning file does not exist" in proc.stderr
    proc = run_cli("deploy", "--port", "/dev/null", "--build", str(small_build))  # not a MicroPython board
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr


def test_an_application_file_is_installed_as_main_py(tmp_path, small_build, provisioning):
    """Issue 21, item 7: `deploy --app my_app.py` puts your application on the board as /main.py (the board runs it
    at boot) instead of the firmware's main.py; with --frozen too."""
    app = tmp_path / "my_app.py"
    app.write_text("import azprov\nprint('my app')\n")
    for frozen in (False, True):
        files = {f.dest: f for f in plan_image(small_build, provisioning, frozen=frozen, app=app)}
        assert files["/main.py"].data == app.read_bytes() and files["/main.py"].source == str(app)
        assert "/provisioning.json" in files
    with pytest.raises(DeployError, match="application file not found"):
        plan_image(small_build, app=tmp_path / "absent.py")


def _results(tmp_path, **floors):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"generated_at": "2026-12-02T08:00:00+00:00", **floors}))
    return path


def test_deploy_judges_the_deployment_by_its_measured_floor(tmp_path, provisioning):
    """Issue 19: deploy says whether the chosen deployment (.mpy files or frozen firmware, the attestation the
    provisioning file names) fits the ~100 KB a stock ESP32 has free after Wi-Fi, from bench/results.json."""
    results = _results(
        tmp_path,
        heap_floor_32bit_mpy_bytes=ESP32_FREE_HEAP_BYTES + 1024,
        heap_floor_32bit_frozen_bytes=40 * 1024,
        heap_floor_x509_32bit_mpy_bytes=64 * 1024,
    )
    mpy = memory_fit(False, provisioning, results)
    assert mpy.key == "heap_floor_32bit_mpy_bytes" and mpy.fits is False
    assert mpy.message().startswith("WARNING") and "--frozen" in mpy.message() and "103,424 B" in mpy.message()
    frozen = memory_fit(True, provisioning, results)
    assert frozen.key == "heap_floor_32bit_frozen_bytes" and frozen.fits is True
    assert f"{ESP32_FREE_HEAP_BYTES - 40 * 1024:,} B left" in frozen.message()
    doc = json.loads(provisioning.read_text())
    doc.update(attestation="x509")
    x509 = tmp_path / "x509.json"
    x509.write_text(json.dumps(doc))
    assert memory_fit(False, x509, results).key == "heap_floor_x509_32bit_mpy_bytes"
    assert memory_fit(False, x509, results).fits is True
    unmeasured = memory_fit(True, x509, results)
    assert unmeasured.floor_bytes is None and "missing" in unmeasured.message()
    assert memory_fit(False, provisioning, tmp_path / "absent.json") is None


def test_deploy_warns_before_copying_what_cannot_fit(tmp_path, small_build, provisioning):
    results = _results(tmp_path, heap_floor_32bit_mpy_bytes=121_856, heap_floor_32bit_frozen_bytes=40_960)
    args = ["deploy", "--port", "/dev/null", "--build", str(small_build), "--provisioning", str(provisioning)]
    proc = run_cli(*args, "--bench-results", str(results))
    assert "WARNING" in proc.stderr and "121,856 B" in proc.stderr and "stock ESP32" in proc.stderr, proc.stderr
    proc = run_cli(*args, "--frozen", "--bench-results", str(results))
    assert "WARNING" not in proc.stderr and "40,960 B" in proc.stderr, proc.stderr
