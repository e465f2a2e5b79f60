"""Files that hold a secret (a device or group key, a Wi-Fi password, a private key, a SAS token): every host tool
writes them through this module, so each one is mode 0600 from the moment it exists and sits in a folder that
others cannot write to (where they could swap the file for one of their own, or a symlink).

`write_secret` writes a whole file (temporary file and rename), `open_secret_log` opens one for appending (the
emulator's record of credentials), `secure_folder` makes (or checks) the folder they go in.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path

SECRET_MODE = 0o600
# Folders made for secrets: the owner's only. An existing folder keeps its mode (see secure_folder).
SECRET_FOLDER_MODE = 0o700


class SecretFileError(OSError):
    """A secret cannot be written safely: its folder is writable by every user."""


def secure_folder(folder: str | os.PathLike) -> Path:
    """Make `folder` (missing parents too, mode 0700) and check that others cannot write to it. An existing folder's
    mode is never changed (it may be /tmp, or a folder others use): a world-writable one is refused with
    SecretFileError, naming it."""
    folder = Path(folder)
    missing = []
    probe = folder
    while not probe.exists() and not probe.is_symlink() and probe.parent != probe:
        missing.append(probe)
        probe = probe.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=SECRET_FOLDER_MODE)
    if folder.stat().st_mode & stat.S_IWOTH:
        raise SecretFileError(
            errno.EACCES,
            "the folder is writable by every user; files holding keys go in a folder of your own",
            str(folder),
        )
    return folder


def write_secret(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` to `path`, mode 0600, whole (a temporary file of mode 0600 renamed over it: the path holds the
    old content or the new, never half, and never a moment readable by others)."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    secure_folder(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # created 0600
    try:
        os.fchmod(fd, SECRET_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def copy_secret(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Copy a file that holds a secret: the copy is mode 0600 whatever the source's mode."""
    return write_secret(target, Path(source).read_bytes())


def open_secret_log(path: str | os.PathLike):
    """Open `path` for appending text, mode 0600 (an existing file of another mode is made 0600 first)."""
    path = Path(path)
    secure_folder(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, SECRET_MODE)
    try:
        os.fchmod(fd, SECRET_MODE)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "a", encoding="utf-8")
