"""The virtual board: the real mpremote drives it as a USB board (raw REPL, fs, soft reset, Ctrl-C), and the
image tool reads and writes its littlefs flash on the host."""

import time

import pytest

from host_tools.board.deploy import open_board
from host_tools.board.virtual_board import FlashImage, VirtualBoard, VirtualBoardError, parse_size
from tests.host_helpers import mpremote

pytestmark = pytest.mark.timeout(60)


def test_mpremote_exec_and_files(board, tmp_path):
    assert board.port.startswith("/dev/pts/")
    proc = mpremote(board.port, "exec", "import sys, os; print(sys.implementation.name, os.getcwd(), sys.path)")
    assert proc.returncode == 0, proc.stderr
    assert "micropython / ['', '.frozen', '/lib']" in proc.stdout
    source = tmp_path / "hello.py"
    source.write_text("GREETING = 'hello from flash'\n")
    assert mpremote(board.port, "fs", "mkdir", ":lib").returncode == 0
    assert mpremote(board.port, "fs", "cp", str(source), ":lib/hello.py").returncode == 0
    proc = mpremote(board.port, "exec", "import hello; print(hello.GREETING)")
    assert proc.stdout.strip() == "hello from flash"
    proc = mpremote(board.port, "fs", "ls", ":/")
    assert "lib/" in proc.stdout
    # The host file system is out of reach: "/" is the flash.
    proc = mpremote(board.port, "exec", "import os; print(sorted(os.listdir('/')))")
    assert proc.stdout.strip() == "['lib']"


def test_soft_reset_is_a_fresh_interpreter(board):
    with open_board(board.port) as transport:
        transport.exec("marker = 41 + 1")
        assert transport.eval("marker") == 42
        boots = board.boots
        transport.enter_raw_repl(soft_reset=True)  # Ctrl-D in the raw REPL, as `mpremote soft-reset` sends
        assert board.boots == boots + 1
        assert transport.eval("'marker' in globals()") is False
        assert transport.eval("__import__('os').getcwd()") == "/"
    assert b"MPY: soft reboot\r\n" in board.output()
    assert mpremote(board.port, "soft-reset").returncode == 0


def test_friendly_soft_reset_runs_main(board):
    with open_board(board.port) as transport:
        transport.fs_writefile("main.py", b"print('main.py says hi')\n")
    assert not board.wait_for(b"main.py says hi", timeout=0.5), "a raw-REPL soft reset does not run main.py"
    with open_board(board.port) as transport:
        transport.exit_raw_repl()
        mark = len(board.output())
        transport.serial.write(b"\x04")  # Ctrl-D at the friendly prompt
        assert board.wait_for(b"main.py says hi", timeout=10, start=mark)
        transport.enter_raw_repl(soft_reset=False)


def test_ctrl_c_interrupts_running_code(board):
    with open_board(board.port) as transport:
        transport.exec_raw_no_follow("import time\nprint('sleeping')\ntime.sleep(60)\n")  # sent in raw-paste mode
        assert board.wait_for(b"sleeping", timeout=5)
        started = time.monotonic()
        transport.enter_raw_repl(soft_reset=False)  # begins with Ctrl-C
        assert time.monotonic() - started < 5
        assert board.wait_for(b"KeyboardInterrupt", timeout=1)
        assert transport.eval("1 + 1") == 2


def test_files_survive_a_restart_of_the_board(tmp_path):
    image = tmp_path / "persist.img"
    with VirtualBoard(image, size="128K") as vb, open_board(vb.port) as transport:
        transport.fs_writefile("state.txt", b"kept")
    with VirtualBoard(image) as vb:
        assert mpremote(vb.port, "fs", "cat", ":state.txt").stdout.strip() == "kept"
    assert FlashImage(image).read("state.txt") == b"kept"


def test_image_tool(tmp_path):
    image = FlashImage(tmp_path / "tool.img").create("128K")
    image.write("lib/umqtt/simple.py", b"# umqtt\n")
    image.write("provisioning.json", b"{}")
    assert image.list() == [
        ("/lib", -1),
        ("/lib/umqtt", -1),
        ("/lib/umqtt/simple.py", 8),
        ("/provisioning.json", 2),
    ] or sorted(image.list()) == sorted(
        [("/lib", -1), ("/lib/umqtt", -1), ("/lib/umqtt/simple.py", 8), ("/provisioning.json", 2)]
    )
    assert image.read("/lib/umqtt/simple.py") == b"# umqtt\n"
    free, total = image.usage()
    assert total == 128 * 1024 and 0 < free < total
    image.remove("provisioning.json")
    extracted = image.extract(tmp_path / "out")
    assert [p.relative_to(tmp_path / "out").as_posix() for p in extracted] == ["lib/umqtt/simple.py"]
    with pytest.raises(VirtualBoardError, match="already exists"):
        FlashImage(tmp_path / "tool.img").create("128K")


def test_image_in_use_is_refused(board):
    with pytest.raises(VirtualBoardError, match="in use"):
        board.image.list()
    with pytest.raises(VirtualBoardError, match="in use"):
        VirtualBoard(board.image.path).start()


def test_sizes():
    assert parse_size("2M") == 2 * 1024 * 1024 and parse_size("256K") == 262144
    with pytest.raises(VirtualBoardError):
        parse_size("3 bananas")
    with pytest.raises(VirtualBoardError):
        parse_size(4096)


def test_blank_image_is_formatted_at_first_boot(tmp_path):
    blank = tmp_path / "blank.img"
    blank.write_bytes(b"\xff" * 64 * 4096)
    with VirtualBoard(blank) as vb:
        assert b"Performing initial setup" in vb.output()
        assert mpremote(vb.port, "fs", "ls", ":").returncode == 0


def test_unmountable_image_is_an_error(tmp_path):
    bad = tmp_path / "tiny.img"
    bad.write_bytes(bytes(100))  # too small for a file system
    with pytest.raises(VirtualBoardError, match="cannot mount the flash image"):
        VirtualBoard(bad).start()


def test_a_main_py_that_never_returns_is_interrupted_by_mpremote(tmp_path):
    image = FlashImage(tmp_path / "busy.img").create("128K")
    image.write("main.py", b"import time\nprint('main loop')\nwhile True:\n    time.sleep(0.05)\n")
    with VirtualBoard(image.path) as vb:
        assert vb.wait_for(b"main loop", timeout=5)
        proc = mpremote(vb.port, "exec", "print('got in')")
        assert proc.stdout.strip() == "got in", proc.stderr
        assert b"KeyboardInterrupt" in vb.output()
