"""`provision-file validate` and the device judge every generated provisioning file the same way (issue 14).

The same files (tests/provisioning/generated_files.py: every schema field given every value of a pool, and whole-file
cases) go through the `validate` command and through the firmware on the MicroPython Unix port
(tests/provisioning/agreement_driver.py: config.load, then the CA file into a TLS context, as app.main and
provision.Session do). Each file must be accepted by both or refused by both, and the device must refuse only
with a `configuration` error.

Also here: the file `provision-file create` writes with the default CA file (certifi's roots, with comment lines)
provisions on the Unix port against the emulator once the emulator's DPS root is added to it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from host_tools.board.unix_port import REPO, device_env, micropython_binary, stage_device_root
from tests.host_helpers import run_cli
from tests.provisioning.generated_files import generated_files

pytestmark = pytest.mark.timeout(600)
DRIVER = Path(__file__).resolve().parent / "agreement_driver.py"


def _device_verdicts(root: Path, paths: list[str], runtime: str) -> dict[str, tuple[str, str]]:
    case_list = root / "cases.txt"
    case_list.write_text("\n".join(paths) + "\n")
    shutil.copy2(DRIVER, root / DRIVER.name)  # run from the flash root, where `azprov` is
    proc = subprocess.run(
        [micropython_binary(runtime), DRIVER.name, "cases.txt"],
        cwd=root,
        env=device_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    verdicts = {}
    for line in proc.stdout.splitlines():
        parts = line.split(" ", 3)
        verdicts[parts[1]] = (parts[0], " ".join(parts[2:]))
    return verdicts


def _validate_verdicts(root: Path, paths: list[str]) -> dict[str, tuple[str, str]]:
    full = [str(root / p) for p in paths]
    proc = run_cli("provision-file", "validate", *full, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    verdicts = {}
    for path, short in zip(full, paths, strict=True):
        ok = f"{path}: ok" in proc.stdout
        lines = [line for line in proc.stderr.splitlines() if path + ":" in line]
        assert ok != bool(lines), (short, proc.stdout, lines)
        verdicts[short] = ("OK" if ok else "REFUSED", " | ".join(lines))
    return verdicts


def test_validate_and_the_device_agree_on_every_generated_file(tmp_path, runtime):
    """Once per MicroPython runtime (the PyPI wheel, and the 32-bit build with the firmware frozen in)."""
    root = stage_device_root(tmp_path / "flash", use_mpy=True, runtime=runtime)
    files = generated_files()
    paths = []
    for index, generated in enumerate(files):
        folder = root / "cases" / f"{index:04d}"
        generated.write(folder)
        paths.append(f"cases/{index:04d}/provisioning.json")
    device = _device_verdicts(root, paths, runtime)
    host = _validate_verdicts(root, paths)
    assert len(device) == len(files), "the device driver stopped early"
    disagreements = []
    for generated, path in zip(files, paths, strict=True):
        device_verdict, device_why = device[path]
        host_verdict, host_why = host[path]
        if device_verdict == "REFUSED":
            assert device_why.startswith("configuration "), (generated.name, device_why)
        if device_verdict != host_verdict:
            disagreements.append(f"{generated.name}: device {device_verdict} ({device_why}); validate {host_why}")
    accepted = sum(1 for v, _ in device.values() if v == "OK")
    print(f"{len(files)} generated files: {accepted} accepted, {len(files) - accepted} refused by both")
    assert not disagreements, "\n".join(disagreements)
    assert 50 < accepted < len(files) - 300, "the generated files should be a mix of valid and invalid ones"


@pytest.mark.slow
def test_a_created_file_with_the_default_ca_file_provisions_against_the_emulator(tmp_path, emulator):
    from tests.helpers import HUB, enrollment_doc, individual, new_key, parse_result

    key = new_key()
    emu = emulator(enrollment_doc([individual("created-001", key)]))
    flash = tmp_path / "flash"
    out = flash / "provisioning.json"
    proc = run_cli(
        "provision-file",
        "create",
        "--out",
        str(out),
        "--id-scope",
        emu.info["id_scope"],
        "--registration-id",
        "created-001",
        "--symmetric-key",
        key,
        "--dps-host",
        emu.info["dps"]["hostname"],
        "--dps-port",
        str(emu.info["dps"]["port"]),
        "--gateway-host",
        emu.info["gateway"]["hostname"],
        "--gateway-port",
        str(emu.info["gateway"]["port"]),
    )
    assert proc.returncode == 0, proc.stderr
    ca = flash / "certs" / "dps-root.pem"
    assert ca.read_text().startswith("# "), "the default CA file carries comment lines"
    with ca.open("a") as handle:  # the emulator's DPS root, as a user adds a private root
        handle.write("# azprov emulator DPS root\n" + Path(emu.info["pki"]["dps_root"]).read_text())
    assert run_cli("provision-file", "validate", str(out)).returncode == 0
    stage_device_root(flash, None, use_mpy=True)
    result = parse_result(
        subprocess.run(
            [micropython_binary(), "main.py"], cwd=flash, env=device_env(), capture_output=True, text=True, timeout=180
        )
    )
    assert result.status == 0, result.output[-3000:]
    assert result.event("registered")["hub"] == HUB
    assert REPO  # the firmware staged is this checkout's
