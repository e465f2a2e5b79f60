"""A littlefs flash image file, read and written on the host through the Unix port's own littlefs driver
(boards/unix/lfs_flash.py): the virtual board's flash, and the `virtual-board image-*` commands."""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import tempfile
from pathlib import Path

import click

from host_tools.board.unix_port import UnixPortError, micropython_binary
from host_tools.secret_files import SECRET_MODE, secure_folder, write_secret

REPO_ROOT = Path(__file__).resolve().parents[2]
BOARD_DIR = REPO_ROOT / "boards" / "unix"
BLOCK_SIZE = 4096
DEFAULT_IMAGE_BYTES = 2 * 1024 * 1024  # an ESP32 with 4 MB flash gives its vfs partition about 2 MB


class VirtualBoardError(RuntimeError):
    pass


def micropython_executable() -> str:
    try:
        return micropython_binary()
    except UnixPortError as exc:
        raise VirtualBoardError(str(exc)) from exc


def parse_size(text: str | int) -> int:
    """'2M', '512K', '1048576' -> bytes, a whole number of blocks."""
    if isinstance(text, int):
        size = text
    else:
        match = re.fullmatch(r"\s*(\d+)\s*([KkMm]?)i?[Bb]?\s*", text)
        if not match:
            raise VirtualBoardError(f"size {text!r}: expected e.g. 2M, 512K or a byte count")
        size = int(match.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[match.group(2).lower()]
    if size < 16 * BLOCK_SIZE or size % BLOCK_SIZE:
        raise VirtualBoardError(f"image size {size}: must be a multiple of {BLOCK_SIZE} and at least {16 * BLOCK_SIZE}")
    return size


class FlashImage:
    """A littlefs image file, read and written on the host through the Unix port's own littlefs driver."""

    def __init__(self, path: Path, block_size: int = BLOCK_SIZE):
        self.path = Path(path).absolute()  # MicroPython runs in another folder
        self.block_size = block_size

    def _run(self, call: str, timeout: float = 30) -> str:
        self._check_not_in_use()
        code = f"import sys\nsys.path.insert(0, {str(BOARD_DIR)!r})\nimport lfs_flash\nlfs_flash.{call}\n"
        proc = subprocess.run([micropython_executable(), "-c", code], capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise VirtualBoardError(f"{self.path}: {detail[-1] if detail else 'micropython failed'}")
        return proc.stdout

    def _check_not_in_use(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise VirtualBoardError(
                    f"{self.path}: in use by a running virtual board (use mpremote instead)"
                ) from None
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def exists(self) -> bool:
        return self.path.is_file()

    def create(self, size: int | str = DEFAULT_IMAGE_BYTES, overwrite: bool = False) -> FlashImage:
        """A fresh, formatted image (a sparse file: blank flash costs no disk)."""
        size = parse_size(size)
        if self.path.exists() and not overwrite:
            raise VirtualBoardError(f"{self.path}: already exists")
        # A board's flash holds its provisioning file and keys: the image is owner-only (host_tools/secret_files.py).
        secure_folder(self.path.parent)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, SECRET_MODE)
        os.fchmod(fd, SECRET_MODE)
        with os.fdopen(fd, "wb") as f:
            f.truncate(size)
        self._run(f"mkfs({str(self.path)!r}, {self.block_size})")
        return self

    def list(self) -> list[tuple[str, int]]:
        """(path, size) of every entry; folders have size -1."""
        entries = []
        for line in self._run(f"ls({str(self.path)!r}, {self.block_size})").splitlines():
            size, _, name = line.partition(" ")
            if size != "FREE":
                entries.append((name, int(size)))
        return entries

    def usage(self) -> tuple[int, int]:
        """(free bytes, total bytes)."""
        for line in self._run(f"ls({str(self.path)!r}, {self.block_size})").splitlines():
            if line.startswith("FREE "):
                free, total = line.split()[1:]
                return int(free), int(total)
        raise VirtualBoardError(f"{self.path}: no usage figures")

    def read(self, name: str) -> bytes:
        text = self._run(f"cat({str(self.path)!r}, {name!r}, {self.block_size})")
        return bytes.fromhex("".join(text.split()))

    def write(self, name: str, data: bytes) -> None:
        with tempfile.NamedTemporaryFile(prefix="vboard-put-") as tmp:
            tmp.write(data)
            tmp.flush()
            self._run(f"put({str(self.path)!r}, {tmp.name!r}, {name!r}, {self.block_size})")

    def remove(self, name: str) -> None:
        self._run(f"remove({str(self.path)!r}, {name!r}, {self.block_size})")

    def extract(self, dest: Path) -> list[Path]:
        written = []
        for name, size in self.list():
            target = Path(dest) / name.lstrip("/")
            if size < 0:
                target.mkdir(parents=True, exist_ok=True)
            else:
                write_secret(target, self.read(name))  # provisioning.json and keys among them: owner-only
                written.append(target)
        return written


# --- CLI: the image commands (the virtual-board group in virtual_board.py adds them) ---------------------------


def _image(path: Path) -> FlashImage:
    image = FlashImage(path)
    if not image.exists():
        raise click.ClickException(f"{path}: no such image")
    return image


@click.command("image-create")
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--size", default="2M", show_default=True)
@click.option(
    "--from-dir",
    "from_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Copy this folder's files into the new image (a device image, e.g. a staged Unix-port root).",
)
@click.option("--force", is_flag=True, help="Replace an existing image.")
def image_create(image, size, from_dir, force):
    """Create and format a littlefs image."""
    try:
        flash = FlashImage(image).create(size, overwrite=force)
        if from_dir:
            for path in sorted(p for p in from_dir.rglob("*") if p.is_file()):
                flash.write(path.relative_to(from_dir).as_posix(), path.read_bytes())
        free, total = flash.usage()
    except VirtualBoardError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{image}: littlefs, {total // 1024} KiB, {free // 1024} KiB free")


@click.command("image-ls")
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
def image_ls(image):
    """List the files in an image."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    try:
        flash = _image(image)
        entries, (free, total) = flash.list(), flash.usage()
    except VirtualBoardError as exc:
        raise click.ClickException(str(exc)) from None
    table = Table(title=f"{image}: {free // 1024} of {total // 1024} KiB free")
    table.add_column("path")
    table.add_column("bytes", justify="right")
    for name, size in entries:
        table.add_row(escape(name + ("/" if size < 0 else "")), "" if size < 0 else f"{size:,}")
    Console().print(table)


@click.command("image-cat")
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("path")
def image_cat(image, path):
    """Print a file from an image."""
    try:
        data = _image(image).read(path)
    except VirtualBoardError as exc:
        # name the file inside the image, not only the image
        reason = str(exc).removeprefix(f"{image}: ")
        if "ENOENT" in reason or "Errno 2" in reason:
            reason = "no such file in the image"
        elif "EISDIR" in reason or "Errno 21" in reason:
            reason = "is a folder in the image"
        raise click.ClickException(f"{image}: {path}: {reason}") from None
    click.get_binary_stream("stdout").write(data)


@click.command("image-extract")
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
def image_extract(image, dest):
    """Copy every file of an image into a folder."""
    try:
        written = _image(image).extract(dest)
    except VirtualBoardError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{len(written)} files -> {dest}")
