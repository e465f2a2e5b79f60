# Power-cut board for tests/test_power_cut.py (MicroPython Unix port only).
#
#   micropython pc_boot.py mkimage IMAGE SRC_DIR BLOCKS [FS]   format an image and copy a host folder into it
#   micropython pc_boot.py run                                 power on: mount IMAGE at "/" and run /main.py
#   micropython pc_boot.py cat IMAGE PATH [FS]                 print one file of an image, hex-encoded
#
# FS is the file system: lfs2 (littlefs v2, os.VfsLfs2, 4 KiB blocks: an ESP32's flash; the default) or fat
# (os.VfsFat, 512-byte sectors: an SD card, or a board formatted FAT).
#
# `run` takes its settings from the environment:
#   PC_IMAGE         the image file (the "flash chip")
#   PC_FS            lfs2 (default) or fat
#   PC_PROVISIONING  provisioning file given to main.py as sys.argv[1] (default provisioning.json)
#   PC_CUT           cut the power once this many bytes have been programmed (absent: no cut)
#   PC_TRACE         "1": print one `PC-W <bytes before> <length> <block> <offset>` line per program operation
#
# The flash is a block device over the image file with the semantics of NOR flash as littlefs sees it: an erase
# really sets the block to 0xff, a program writes exactly the bytes it is given, and the bytes programmed so far are
# counted. At the cut the device programs only the bytes before the cut point (a partly programmed page), pushes
# them to the file, prints `POWER-CUT <n>` and stops dead; the test then kills the process with SIGKILL, in the
# middle of whatever littlefs (and the firmware above it) was doing.
#
# Around the firmware the script prints what is in the storage folder, read straight from the mounted image:
# `PC-FILE <PRE|POST> <name> <size> <sha256>` before main.py starts (exactly what the cut left behind) and after it
# ends, then `PC-END status=<n> programmed=<bytes>`.
import binascii
import hashlib
import os
import sys
import time

BLOCK_SIZE = 4096
BLOCK_SIZES = {"lfs2": 4096, "fat": 512}
STORAGE = "/azprov_state"

_IOCTL_SYNC = 3
_IOCTL_BLOCK_COUNT = 4
_IOCTL_BLOCK_SIZE = 5
_IOCTL_ERASE = 6


class CutFlash:
    def __init__(self, path, cut_at=None, trace=False, block_size=BLOCK_SIZE):
        self._file = open(path, "r+b")
        self._block_size = block_size
        self._file.seek(0, 2)
        self._blocks = self._file.tell() // block_size
        self._cut_at = cut_at
        self._trace = trace
        self.programmed = 0
        self._erased = b"\xff" * block_size

    def readblocks(self, block, buf, offset=0):
        self._file.seek(block * self._block_size + offset)
        n = self._file.readinto(buf)
        if n is None:
            n = 0
        for i in range(n, len(buf)):
            buf[i] = 0xFF

    def writeblocks(self, block, buf, offset=0):
        n = len(buf)
        if self._trace:
            print("PC-W %d %d %d %d" % (self.programmed, n, block, offset))
        self._file.seek(block * self._block_size + offset)
        if self._cut_at is not None and self.programmed + n > self._cut_at:
            keep = self._cut_at - self.programmed
            if keep:
                self._file.write(memoryview(buf)[:keep])
            self._file.flush()
            self.programmed += keep
            _power_cut(self.programmed)
        self._file.write(buf)
        self.programmed += n

    def ioctl(self, op, arg):
        if op == _IOCTL_BLOCK_COUNT:
            return self._blocks
        if op == _IOCTL_BLOCK_SIZE:
            return self._block_size
        if op == _IOCTL_SYNC:
            self._file.flush()
            return 0
        if op == _IOCTL_ERASE:
            self._file.seek(arg * self._block_size)
            self._file.write(self._erased)
            return 0
        return 0


def _power_cut(programmed):
    print("POWER-CUT %d" % programmed)
    # Nothing more reaches the flash: the host kills this process with SIGKILL now. Never return.
    while True:
        time.sleep(1)


def _sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(512)
            if not chunk:
                break
            digest.update(chunk)
    return binascii.hexlify(digest.digest()).decode()


def dump(phase, folder=STORAGE):
    try:
        names = sorted(entry[0] for entry in os.ilistdir(folder))
    except OSError:
        print("PC-NODIR %s" % phase)
        return
    for name in names:
        path = folder + "/" + name
        try:
            size = os.stat(path)[6]
            digest = _sha256_file(path)
        except OSError:
            # FAT after a cut in the middle of a directory update: listed, but it cannot be opened.
            print("PC-BROKEN %s %s" % (phase, name))
            continue
        print("PC-FILE %s %s %d %s" % (phase, name, size, digest))


def _run_main(provisioning):
    sys.argv[:] = ["main.py", provisioning]
    with open("main.py") as f:
        source = f.read()
    try:
        exec(compile(source, "main.py", "exec"), {"__name__": "__main__"})
    except SystemExit as exc:
        return exc.args[0] if exc.args else 0
    except BaseException as exc:  # a board prints the traceback; the test sees it and fails
        print("PC-EXCEPTION")
        sys.print_exception(exc)
        return 99
    return 0


def _vfs(fs, flash):
    return os.VfsFat(flash) if fs == "fat" else os.VfsLfs2(flash)


def run():
    cut = os.getenv("PC_CUT")
    fs = os.getenv("PC_FS") or "lfs2"
    flash = CutFlash(os.getenv("PC_IMAGE"), int(cut) if cut else None, os.getenv("PC_TRACE") == "1", BLOCK_SIZES[fs])
    vfs = _vfs(fs, flash)
    os.umount("/")
    os.mount(vfs, "/")
    os.chdir("/")
    sys.path[:] = ["", ".frozen", "/lib"]
    dump("PRE")
    status = _run_main(os.getenv("PC_PROVISIONING") or "provisioning.json")
    dump("POST")
    print("PC-END status=%s programmed=%d" % (status, flash.programmed))
    sys.exit(status if isinstance(status, int) else 1)


def _copy_tree(src, dest):
    for entry in os.ilistdir(src):
        name, kind = entry[0], entry[1]
        if kind == 0x4000:
            os.mkdir(dest + "/" + name)
            _copy_tree(src + "/" + name, dest + "/" + name)
        else:
            with open(src + "/" + name, "rb") as fin, open(dest + "/" + name, "wb") as fout:
                while True:
                    chunk = fin.read(4096)
                    if not chunk:
                        break
                    fout.write(chunk)


def mkimage(image, src, blocks, fs="lfs2"):
    size = BLOCK_SIZES[fs]
    with open(image, "wb") as f:
        block = b"\xff" * size
        for _ in range(blocks):
            f.write(block)
    flash = CutFlash(image, block_size=size)
    if fs == "fat":
        os.VfsFat.mkfs(flash)
    else:
        os.VfsLfs2.mkfs(flash)
    os.mount(_vfs(fs, flash), "/__pc_image")
    _copy_tree(src, "/__pc_image")
    os.umount("/__pc_image")
    print("PC-IMAGE %s blocks=%d fs=%s" % (image, blocks, fs))


def cat(image, path, fs="lfs2"):
    os.mount(_vfs(fs, CutFlash(image, block_size=BLOCK_SIZES[fs])), "/__pc_image")
    with open("/__pc_image/" + path, "rb") as f:
        print(binascii.hexlify(f.read()).decode())
    os.umount("/__pc_image")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "mkimage":
        mkimage(sys.argv[2], sys.argv[3], int(sys.argv[4]), *sys.argv[5:6])
    elif len(sys.argv) > 1 and sys.argv[1] == "cat":
        cat(sys.argv[2], sys.argv[3], *sys.argv[4:5])
    else:
        run()
