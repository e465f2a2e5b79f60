# The virtual board's power-on: run by `micropython -i board_boot.py` (host_tools/board/virtual_board.py starts it).
#
# Does what an ESP32's firmware does before its REPL: mount the littlefs flash at "/" (formatting a blank one),
# run /boot.py, then /main.py unless the board is rebooting into the raw REPL, then hand over to the REPL (`-i`).
# Mounting at "/" hides the host's file system, so code on the board sees exactly the board's files.
import os
import sys


def _power_on():
    import lfs_flash  # found beside this script: sys.path[0] is the script's folder until replaced below

    image = os.getenv("AZPROV_VB_IMAGE")
    block_size = int(os.getenv("AZPROV_VB_BLOCK_SIZE") or lfs_flash.BLOCK_SIZE)
    vfs, formatted = lfs_flash.open_vfs(image, block_size)
    os.umount("/")
    os.mount(vfs, "/")
    os.chdir("/")
    sys.path[:] = ["", ".frozen", "/lib"]  # an ESP32's import path
    sys.argv[:] = []
    del sys.modules["lfs_flash"]  # the block device stays alive through the mount; the module need not be importable
    if formatted:
        print("Performing initial setup")  # what an ESP32 prints when it formats its flash
    return os.getenv("AZPROV_VB_RUN_MAIN") == "1"


def _run_file(name):
    try:
        os.stat(name)
    except OSError:
        return
    try:
        with open(name) as f:
            source = f.read()
        exec(compile(source, name, "exec"), globals())
    except SystemExit as exc:
        # On the Unix port the firmware ends with sys.exit(status). A real board would soft-reset in a loop; the
        # virtual board reports the status and stays at the REPL so it can be inspected.
        status = exc.args[0] if exc.args else 0
        print("virtual board: %s exited with status %s" % (name, status))
    except BaseException as exc:  # a board prints the traceback (KeyboardInterrupt included) and goes to the REPL
        sys.print_exception(exc)


try:
    _run_main = _power_on()
except Exception as exc:
    # Never fall through to a REPL on the host's file system: unmount it and report, as a board with a broken
    # flash would come up without a file system. The host side (VirtualBoard.start) looks for this line.
    _run_main = False
    print("virtual board: cannot mount the flash image: %r" % (exc,))
    try:
        os.umount("/")
    except OSError:
        pass
del _power_on
_run_file("boot.py")
if _run_main:
    _run_file("main.py")
del _run_main, _run_file
