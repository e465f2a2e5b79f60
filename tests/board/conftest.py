"""Fixtures for the host-tool tests: a virtual board (MicroPython Unix port behind a pty) and small builds."""

from __future__ import annotations

from pathlib import Path

import pytest

from host_tools.board.virtual_board import VirtualBoard


@pytest.fixture
def board(tmp_path):
    """A running virtual board with a fresh 256 KiB flash image."""
    with VirtualBoard(tmp_path / "flash.img", size="256K", log=tmp_path / "board.log") as vb:
        yield vb


@pytest.fixture
def small_build(tmp_path) -> Path:
    """A build folder in the device image layout, with a main.py that says it ran."""
    build = tmp_path / "build"
    (build / "azprov").mkdir(parents=True)
    (build / "lib" / "umqtt").mkdir(parents=True)
    (build / "main.py").write_text('print("small build main ran")\n')
    (build / "azprov" / "__init__.py").write_text("VERSION = 1\n")
    (build / "azprov" / "data.py").write_text("BLOB = %r\n" % (bytes(range(256)) * 8))
    (build / "lib" / "umqtt" / "simple.py").write_text("class MQTTClient:\n    pass\n")
    return build
