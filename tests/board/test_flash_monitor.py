"""flash: the esptool argument lists per chip and the input checks (esptool is never run against hardware);
monitor: the console command and its checks."""

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from host_tools.board import flash as flash_module
from host_tools.board.flash import FIRMWARE_OFFSETS, FlashError, esptool_commands
from host_tools.board.monitor import monitor, monitor_command

pytestmark = pytest.mark.timeout(30)

EXPECTED_OFFSETS = {
    "esp32": "0x1000",
    "esp32s2": "0x1000",
    "esp32s3": "0x0",
    "esp32c3": "0x0",
    "esp32c6": "0x0",
    "esp32c2": "0x0",
    "esp32h2": "0x0",
    "esp32p4": "0x2000",
}


@pytest.mark.parametrize("chip,offset", sorted(EXPECTED_OFFSETS.items()))
def test_argument_lists_per_chip(chip, offset):
    assert esptool_commands("/dev/ttyUSB0", chip, "fw.bin") == [
        ["--chip", chip, "--port", "/dev/ttyUSB0", "erase-flash"],
        ["--chip", chip, "--port", "/dev/ttyUSB0", "--baud", "460800", "write-flash", offset, "fw.bin"],
    ]


def test_no_erase_and_baud():
    assert esptool_commands("/dev/ttyACM0", "ESP32S3", "a.bin", baud=921600, erase=False) == [
        ["--chip", "esp32s3", "--port", "/dev/ttyACM0", "--baud", "921600", "write-flash", "0x0", "a.bin"]
    ]
    assert set(EXPECTED_OFFSETS) <= set(FIRMWARE_OFFSETS)


def test_unknown_chip_and_missing_port():
    with pytest.raises(FlashError, match="unknown chip 'esp31'"):
        esptool_commands("/dev/ttyUSB0", "esp31", "fw.bin")
    with pytest.raises(FlashError, match="no serial port"):
        esptool_commands("", "esp32", "fw.bin")


@pytest.fixture
def no_esptool(monkeypatch):
    calls = []
    monkeypatch.setattr(flash_module, "run_esptool", lambda args: calls.append(args) or 0)
    return calls


def test_command_checks_inputs_before_running_esptool(tmp_path, no_esptool):
    firmware = tmp_path / "fw.bin"
    firmware.write_bytes(b"\xe9" + bytes(1023))
    runner = CliRunner()
    result = runner.invoke(flash_module.flash, ["--port", str(tmp_path / "ttyUSB9"), "--firmware", str(firmware)])
    assert result.exit_code == 1 and "serial port" in result.output and "not found" in result.output
    result = runner.invoke(flash_module.flash, ["--port", "/dev/null", "--firmware", str(tmp_path / "none.bin")])
    assert result.exit_code == 1 and "firmware file not found" in result.output
    result = runner.invoke(flash_module.flash, ["--port", "/dev/null", "--chip", "esp99", "--firmware", str(firmware)])
    assert result.exit_code == 1 and "unknown chip 'esp99'" in result.output
    result = runner.invoke(flash_module.flash, ["--firmware", str(firmware)])
    assert result.exit_code == 1 and "no serial port" in result.output
    assert no_esptool == [], "esptool must not run when an input is wrong"
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_command_runs_erase_then_write(tmp_path, no_esptool):
    firmware = tmp_path / "fw.bin"
    firmware.write_bytes(b"\xe9" + bytes(1023))
    result = CliRunner().invoke(
        flash_module.flash, ["--port", "/dev/null", "--chip", "esp32p4", "--firmware", str(firmware)]
    )
    assert result.exit_code == 0, result.output
    assert no_esptool == esptool_commands("/dev/null", "esp32p4", firmware)
    assert "[1/2] esptool --chip esp32p4 --port /dev/null erase-flash" in result.output


def test_dry_run_prints_without_running(tmp_path, no_esptool, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("x.bin").write_bytes(b"\xe9" + bytes(15))
    result = CliRunner().invoke(
        flash_module.flash,
        ["--port", "/dev/ttyUSB0", "--chip", "esp32s3", "--firmware", "x.bin", "--no-erase", "--dry-run"],
    )
    assert result.exit_code == 0, result.output
    assert (
        result.output.strip() == "[1/1] esptool --chip esp32s3 --port /dev/ttyUSB0 --baud 460800 write-flash 0x0 x.bin"
    )
    assert no_esptool == []


@pytest.mark.parametrize("content", [None, b""], ids=["missing", "empty"])
def test_dry_run_checks_the_firmware_file(tmp_path, no_esptool, content):
    """Issue 21, item 9: --dry-run printed commands for an image that is not there; the board need not be."""
    firmware = tmp_path / "ESP32_GENERIC.bin"
    if content is not None:
        firmware.write_bytes(content)
    result = CliRunner().invoke(
        flash_module.flash, ["--port", "/dev/ttyUSB0", "--firmware", str(firmware), "--dry-run"]
    )
    assert result.exit_code == 1 and str(firmware) in result.output
    assert ("not found" if content is None else "is empty") in result.output
    assert "esptool" not in result.output and no_esptool == []


def test_esptool_failure_is_reported(tmp_path, monkeypatch):
    firmware = tmp_path / "fw.bin"
    firmware.write_bytes(b"\xe9")
    monkeypatch.setattr(flash_module, "run_esptool", lambda args: 2)
    result = CliRunner().invoke(flash_module.flash, ["--port", "/dev/null", "--firmware", str(firmware)])
    assert result.exit_code == 1 and "esptool erase-flash failed (exit status 2)" in result.output


def test_monitor_commands_and_missing_port(tmp_path):
    assert monitor_command("/dev/ttyUSB0") == [sys.executable, "-m", "mpremote", "connect", "/dev/ttyUSB0", "repl"]
    assert monitor_command("/dev/ttyUSB0", miniterm=True, baud=9600)[-2:] == ["/dev/ttyUSB0", "9600"]
    result = CliRunner().invoke(monitor, ["--port", str(tmp_path / "ttyUSB7")])
    assert result.exit_code == 1 and "not found" in result.output
