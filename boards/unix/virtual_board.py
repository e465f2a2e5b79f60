"""Start the virtual board: `python boards/unix/virtual_board.py run [--image FILE]` (see README.md here).

A thin launcher; the implementation is host_tools/board/virtual_board.py (`python -m host_tools.board.virtual_board`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from host_tools.board.virtual_board import virtual_board  # noqa: E402

if __name__ == "__main__":
    virtual_board(prog_name="virtual_board.py")
