"""The whole host flow on the virtual board: build, provision-file, deploy with mpremote, and the real firmware
provisioning through the emulator from the board's littlefs flash."""

import json

import pytest

from host_tools.board.build import UMQTT_SOURCE, build_firmware
from tests.host_helpers import mpremote, run_cli

pytestmark = pytest.mark.timeout(120)


def test_firmware_provisions_from_the_virtual_board(tmp_path, board):
    if not UMQTT_SOURCE.exists():
        pytest.skip("umqtt not fetched (make setup)")
    harness = pytest.importorskip("host_tools.board.harness")
    helpers = pytest.importorskip("tests.helpers")
    key = helpers.new_key()
    enrollments = tmp_path / "enrollments.json"
    enrollments.write_text(json.dumps(helpers.enrollment_doc([helpers.individual("vboard-001", key)])))
    build_firmware(tmp_path / "mpy", "unix")
    with harness.EmulatorProcess(tmp_path / "emulator", enrollments) as emulator:
        info = emulator.info
        provisioning = tmp_path / "device" / "provisioning.json"
        created = run_cli(
            "provision-file",
            "create",
            "--out",
            str(provisioning),
            "--id-scope",
            helpers.ID_SCOPE,
            "--registration-id",
            "vboard-001",
            "--symmetric-key",
            key,
            "--ca-file",
            info["pki"]["dps_root"],
            "--dps-host",
            info["dps"]["hostname"],
            "--dps-port",
            str(info["dps"]["port"]),
            "--gateway-host",
            info["gateway"]["hostname"],
            "--gateway-port",
            str(info["gateway"]["port"]),
        )
        assert created.returncode == 0, created.stderr
        mark = len(board.output())
        deployed = run_cli(
            "deploy", "--port", board.port, "--build", str(tmp_path / "mpy"), "--provisioning", str(provisioning)
        )
        assert deployed.returncode == 0, deployed.stderr
        assert board.wait_for(b"main.py exited with status", timeout=90, start=mark)
    output = board.output()[mark:].decode(errors="replace")
    assert "azprov INFO registered" in output and "azprov INFO telemetry_acknowledged" in output, output
    assert "main.py exited with status 0" in output
    assert key not in output
    state = mpremote(board.port, "fs", "cat", ":azprov_state/state.json")
    assert json.loads(state.stdout)["assignment"]["device_id"] == "vboard-001"
