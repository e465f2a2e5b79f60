"""build: every firmware file compiled with mpy-cross, main.py kept as source, umqtt added; the result imports."""

import os
import subprocess

import pytest

from host_tools.board.build import (
    FIRMWARE_DIR,
    MPY_FORMAT_VERSION,
    UMQTT_SOURCE,
    BuildError,
    build_firmware,
    firmware_sources,
    mpy_header,
)
from host_tools.board.virtual_board import micropython_executable
from tests.host_helpers import run_cli

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def firmware(tmp_path):
    fw = tmp_path / "fw"
    (fw / "azprov" / "sub").mkdir(parents=True)
    (fw / "main.py").write_text("import azprov.app\nazprov.app.main()\n")
    (fw / "azprov" / "__init__.py").write_text("")
    (fw / "azprov" / "app.py").write_text(
        "from azprov.sub import helper\n\ndef main():\n    print('app', helper.VALUE)\n"
    )
    (fw / "azprov" / "sub" / "__init__.py").write_text("")
    (fw / "azprov" / "sub" / "helper.py").write_text("VALUE = 42\n")
    return fw


def test_layout_and_sizes(tmp_path, firmware):
    out = tmp_path / "out"
    rows = build_firmware(out, "unix", firmware_dir=firmware)
    names = sorted(r.name for r in rows)
    assert names == [
        "azprov/__init__.mpy",
        "azprov/app.mpy",
        "azprov/sub/__init__.mpy",
        "azprov/sub/helper.mpy",
        "lib/umqtt/simple.mpy",
        "main.py",
    ]
    main = next(r for r in rows if r.name == "main.py")
    assert not main.compiled and (out / "main.py").read_text() == (firmware / "main.py").read_text()
    for row in rows:
        assert row.output.stat().st_size == row.output_bytes > 0
        if row.compiled:
            assert mpy_header(row.output)[0] == MPY_FORMAT_VERSION == 6


def test_built_firmware_runs_on_the_unix_port(tmp_path, firmware):
    out = tmp_path / "out"
    build_firmware(out, "unix", firmware_dir=firmware)
    env = dict(os.environ, MICROPYPATH=".frozen:lib:")
    proc = subprocess.run(
        [micropython_executable(), "main.py"], cwd=out, env=env, capture_output=True, text=True, timeout=20
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "app 42"
    assert not list(out.rglob("*.py"))[1:], "only main.py stays source"


def test_real_firmware_and_umqtt_import_from_mpy(tmp_path):
    if not UMQTT_SOURCE.exists():
        pytest.skip("umqtt not fetched (make setup)")
    out = tmp_path / "out"
    rows = build_firmware(out, "unix")
    assert {r.source for r in rows if r.source.parent.name != "umqtt"} == set(firmware_sources(FIRMWARE_DIR))
    modules = sorted(r.name[:-4].replace("/", ".") for r in rows if r.name.startswith("azprov/"))
    modules = [m[:-9] if m.endswith(".__init__") else m for m in modules]
    code = "import sys\nfor m in %r:\n    __import__(m)\nimport umqtt.simple\nprint('imported', len(%r))" % (
        modules,
        modules,
    )
    # Only .mpy files are on the path: a module that did not compile cannot fall back to source.
    env = dict(os.environ, MICROPYPATH=f".frozen:{out}:{out / 'lib'}")
    proc = subprocess.run([micropython_executable(), "-c", code], env=env, capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"imported {len(modules)}" in proc.stdout


def test_esp32_target_and_stale_outputs(tmp_path, firmware):
    out = tmp_path / "out"
    build_firmware(out, "esp32", firmware_dir=firmware)
    (firmware / "azprov" / "sub" / "helper.py").unlink()
    build_firmware(out, "esp32", firmware_dir=firmware)
    assert not (out / "azprov" / "sub" / "helper.mpy").exists(), "a removed module must not linger in the build"
    assert mpy_header(out / "azprov" / "app.mpy") == (6, 0)  # bytecode only: loads on any architecture


def test_syntax_error_names_the_file(tmp_path, firmware):
    (firmware / "azprov" / "broken.py").write_text("def oops(:\n")
    with pytest.raises(BuildError, match=r"broken\.py"):
        build_firmware(tmp_path / "out", "unix", firmware_dir=firmware)


def test_unknown_target_and_missing_umqtt(tmp_path, firmware):
    with pytest.raises(BuildError, match="unknown target"):
        build_firmware(tmp_path / "out", "z80", firmware_dir=firmware)
    with pytest.raises(BuildError, match="umqtt"):
        build_firmware(tmp_path / "out", "unix", firmware_dir=firmware, umqtt_source=tmp_path / "none.py")
    assert build_firmware(tmp_path / "o2", "unix", firmware_dir=firmware, umqtt_source=None)


def test_build_command_prints_a_size_table(tmp_path):
    if not UMQTT_SOURCE.exists():
        pytest.skip("umqtt not fetched (make setup)")
    proc = run_cli("build", "--target", "esp32", "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert "azprov/config.mpy" in proc.stdout and "total" in proc.stdout
    assert "lib/umqtt/simple.mpy" in proc.stdout


def test_umqtt_installed_by_mip_as_mpy_is_copied(tmp_path, firmware):
    if not UMQTT_SOURCE.exists():
        pytest.skip("umqtt not fetched (make setup)")
    lib = tmp_path / "lib" / "umqtt"
    lib.mkdir(parents=True)
    build_firmware(tmp_path / "first", "unix", firmware_dir=firmware)
    (lib / "simple.mpy").write_bytes((tmp_path / "first" / "lib" / "umqtt" / "simple.mpy").read_bytes())
    rows = build_firmware(tmp_path / "out", "unix", firmware_dir=firmware, umqtt_source=lib / "simple.py")
    umqtt = next(r for r in rows if r.name == "lib/umqtt/simple.mpy")
    assert not umqtt.compiled and umqtt.output.read_bytes() == (lib / "simple.mpy").read_bytes()
