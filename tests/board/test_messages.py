"""Messages a new user meets (issue 14): the Makefile's board targets without PORT, monitor without a terminal,
image-cat naming the file inside the image, and the pki table at 80 columns."""

from __future__ import annotations

import os
import subprocess
import sys

from click.testing import CliRunner

from host_tools.board.flash_image import image_cat, image_create
from host_tools.board.monitor import monitor
from tests.host_helpers import REPO_ROOT


def test_board_targets_without_port_say_so_in_one_line():
    for target in ("deploy", "monitor", "flash"):
        proc = subprocess.run(
            ["make", "-s", target, "PORT="], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode != 0
        assert f"PORT is not set: e.g. make {target} PORT=/dev/ttyUSB0" in proc.stderr, proc.stderr


def test_monitor_without_a_terminal_is_an_error_not_a_traceback(tmp_path):
    port = tmp_path / "ttyUSB0"
    port.write_text("")
    result = CliRunner().invoke(monitor, ["--port", str(port)])  # CliRunner's stdin is not a terminal
    assert result.exit_code == 1
    assert "needs a terminal" in result.output and "Traceback" not in result.output


def test_image_cat_names_the_missing_file(tmp_path):
    image = tmp_path / "flash.img"
    assert CliRunner().invoke(image_create, [str(image)]).exit_code == 0
    result = CliRunner().invoke(image_cat, [str(image), "certs/none.pem"])
    assert result.exit_code == 1
    assert f"{image}: certs/none.pem: no such file in the image" in result.output, result.output


def test_pki_table_fits_80_columns(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "host_tools", "pki", "--out", str(tmp_path / "pki"), "--gateway-host", "gw.local"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        env={**os.environ, "COLUMNS": "80"},
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines)
    for name in ("gateway-server-key.pem", "edge-ca-key.pem", "trust-root.pem"):
        assert any(name in line for line in lines), name  # file names are never broken across lines
