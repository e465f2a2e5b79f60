# MicroPython (Unix port) side of the virtual board: a littlefs "flash chip" kept in a host file.
#
# The ESP32 keeps its filesystem in a littlefs v2 partition. Here the same littlefs driver (os.VfsLfs2) runs on a
# block device whose blocks live in an ordinary file, so the file system code, its atomic renames and its failure
# modes are the board's, and killing the process mid-write is a power cut.
#
# Also the image tool's device half: host_tools/board/virtual_board.py runs `micropython -c` with calls into this module
# (mkfs, ls, cat, put) because only MicroPython has the littlefs driver.
import os

BLOCK_SIZE = 4096  # the ESP32's flash sector size, and what MicroPython uses for its vfs partition

# ioctl operations of MicroPython's block device protocol
_IOCTL_SYNC = 3
_IOCTL_BLOCK_COUNT = 4
_IOCTL_BLOCK_SIZE = 5
_IOCTL_ERASE = 6


class FileBlockDevice:
    """readblocks/writeblocks/ioctl over a host file (the extended interface littlefs needs: byte offsets)."""

    def __init__(self, path, block_size=BLOCK_SIZE):
        self._file = open(path, "r+b")
        self._block_size = block_size
        self._file.seek(0, 2)
        self._block_count = self._file.tell() // block_size

    def readblocks(self, block, buf, offset=0):
        self._file.seek(block * self._block_size + offset)
        n = self._file.readinto(buf)
        if n is not None and n < len(buf):  # past the end of a short file: erased flash reads as 0xff
            for i in range(n, len(buf)):
                buf[i] = 0xFF

    def writeblocks(self, block, buf, offset=0):
        self._file.seek(block * self._block_size + offset)
        self._file.write(buf)

    def ioctl(self, op, arg):
        if op == _IOCTL_BLOCK_COUNT:
            return self._block_count
        if op == _IOCTL_BLOCK_SIZE:
            return self._block_size
        if op == _IOCTL_SYNC:
            self._file.flush()
            return 0
        if op == _IOCTL_ERASE:
            return 0  # littlefs does not depend on erased contents, so an erase need not write anything
        return 0  # init / deinit


def open_vfs(path, block_size=BLOCK_SIZE, format_if_blank=True):
    """(vfs, formatted?) for the image at path; formats it the way an ESP32 does at its first boot."""
    dev = FileBlockDevice(path, block_size)
    try:
        return os.VfsLfs2(dev), False
    except OSError:
        if not format_if_blank:
            raise
    os.VfsLfs2.mkfs(dev)
    return os.VfsLfs2(dev), True


# --- image tool commands (host_tools/board/virtual_board.py calls these; output is parsed there) ---------------------------

_MOUNT = "/__flash_image"


def _mount(path, block_size):
    vfs, _ = open_vfs(path, block_size, format_if_blank=False)
    os.mount(vfs, _MOUNT)


def mkfs(path, block_size=BLOCK_SIZE):
    os.VfsLfs2.mkfs(FileBlockDevice(path, block_size))
    print("formatted")


def _walk(folder):
    for entry in os.ilistdir(folder):
        name, kind = entry[0], entry[1]
        full = folder + "/" + name
        if kind == 0x4000:
            yield full, -1
            yield from _walk(full)
        else:
            yield full, entry[3] if len(entry) > 3 else os.stat(full)[6]


def ls(path, block_size=BLOCK_SIZE):
    _mount(path, block_size)
    for full, size in _walk(_MOUNT):
        print("%d %s" % (size, full[len(_MOUNT) :]))
    stat = os.statvfs(_MOUNT)
    print("FREE %d %d" % (stat[0] * stat[3], stat[0] * stat[2]))


def cat(path, name, block_size=BLOCK_SIZE):
    import binascii

    _mount(path, block_size)
    with open(_MOUNT + "/" + name.lstrip("/"), "rb") as f:
        while True:
            chunk = f.read(512)
            if not chunk:
                break
            print(binascii.hexlify(chunk).decode())


def put(path, host_file, name, block_size=BLOCK_SIZE):
    """Copy host_file into the image as name, creating folders; written to a temp name then renamed (atomic)."""
    _mount(path, block_size)
    target = _MOUNT + "/" + name.lstrip("/")
    parts = name.strip("/").split("/")[:-1]
    folder = _MOUNT
    for part in parts:
        folder += "/" + part
        try:
            os.mkdir(folder)
        except OSError:
            pass
    with open(host_file, "rb") as src, open(target + ".tmp", "wb") as dst:
        while True:
            chunk = src.read(4096)
            if not chunk:
                break
            dst.write(chunk)
    os.rename(target + ".tmp", target)
    print("put", name)


def remove(path, name, block_size=BLOCK_SIZE):
    _mount(path, block_size)
    os.remove(_MOUNT + "/" + name.lstrip("/"))
    print("removed", name)
