"""The enrollment file on disk: read safely (size and kind of file checked first), loaded, re-read while the
emulator runs, written atomically (mode 0600: it holds keys), and the demo enrollments.

`EnrollmentStore` re-reads the file when it changes on disk (so a test can rotate a trust bundle while the emulator
runs) and keeps the last good version if an edit is invalid. What a document means, and every check of it, is in
enrollments.py.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import stat
import threading
from pathlib import Path
from typing import Any

from host_tools.emulator.enrollments import (
    DEFAULT_HUB,
    DEFAULT_ID_SCOPE,
    EnrollmentError,
    Enrollments,
    parse_enrollments,
)
from host_tools.secret_files import write_secret

log = logging.getLogger("host_tools.emulator.enrollments")  # the name the emulator's log has always used


MAX_FILE_BYTES = 32 * 1024 * 1024  # about 150,000 enrollments


def _refuse_constant(name):
    raise ValueError(f"{name} is not JSON")


def read_enrollment_text(path: Path) -> str:
    """The file's text: a regular file of at most MAX_FILE_BYTES in UTF-8 (a FIFO or /dev/zero is refused, not
    read: one would block, the other grow without end)."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise EnrollmentError("", f"cannot read the enrollment file ({exc.strerror})", path) from None
    if stat.S_ISDIR(info.st_mode):
        raise EnrollmentError("", "is a folder, not an enrollment file", path)
    if not stat.S_ISREG(info.st_mode):
        raise EnrollmentError("", "is not a regular file (a device, FIFO or socket)", path)
    if info.st_size > MAX_FILE_BYTES:
        raise EnrollmentError("", f"is larger than {MAX_FILE_BYTES} bytes", path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise EnrollmentError("", f"cannot read the enrollment file ({exc.strerror})", path) from None
    if len(data) > MAX_FILE_BYTES:
        raise EnrollmentError("", f"is larger than {MAX_FILE_BYTES} bytes", path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EnrollmentError("", f"is not UTF-8 (byte {exc.start})", path) from None


def load_enrollments(path: str | os.PathLike, pki=None) -> Enrollments:
    path = Path(path)
    text = read_enrollment_text(path)
    try:
        document = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise EnrollmentError("", f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})", path) from None
    except RecursionError:
        raise EnrollmentError("", "JSON nested too deeply", path) from None
    except ValueError as exc:
        raise EnrollmentError("", f"not valid JSON ({exc})", path) from None
    try:
        return parse_enrollments(document, source=path.resolve(), pki=pki)
    except RecursionError:  # a document just shallow enough for the decoder, too deep for the validator
        raise EnrollmentError("", "JSON nested too deeply", path) from None


class EnrollmentStore:
    """The current enrollments, re-read when the file changes (checked on every use: a stat is cheap).

    An invalid edit while running is logged and ignored: the last good version stays in force, and the error
    is kept in `last_error` so a test can assert on it."""

    def __init__(self, path: str | os.PathLike, pki=None):
        self.path = Path(path)
        self.pki = pki
        self.last_error: EnrollmentError | None = None
        self.generation = 0
        self._lock = threading.Lock()
        self._signature = self._stat()
        self._current = load_enrollments(self.path, pki)  # the first load must succeed: raise to the caller

    def _stat(self):
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def current(self) -> Enrollments:
        signature = self._stat()
        if signature is not None and signature != self._signature:
            self.reload(signature)
        return self._current

    def reload(self, signature=None) -> Enrollments:
        with self._lock:
            signature = signature or self._stat()
            self._signature = signature
            try:
                self._current = load_enrollments(self.path, self.pki)
                self.last_error = None
                self.generation += 1
                log.info(
                    "enrollment file re-read: %d individual, %d group enrollments",
                    len(self._current.individual),
                    len(self._current.groups),
                )
            except EnrollmentError as exc:
                self.last_error = exc
                log.error("enrollment file change ignored, keeping the previous version: %s", exc)
            return self._current


def new_symmetric_key(size: int = 32) -> str:
    return base64.b64encode(secrets.token_bytes(size)).decode("ascii")


def write_enrollments(path: str | os.PathLike, document: dict) -> Path:
    """Write an enrollment document atomically (a new inode, so a running emulator notices it at once)."""
    # It holds device and group keys: owner-only (write_secret renames a new file into place).
    return write_secret(path, json.dumps(document, indent=2) + "\n")


def demo_enrollments(
    id_scope: str = DEFAULT_ID_SCOPE,
    hub: str = DEFAULT_HUB,
    devices=("sensor-001",),
    group_id: str | None = "fleet",
    trust_bundle=("pki:trust-root",),
    payload: Any = None,
) -> dict:
    """A ready-to-use document: individual enrollments for `devices`, one group, one trust bundle 'edge'."""
    document: dict[str, Any] = {
        "id_scope": id_scope,
        "trust_bundles": {"edge": {"certificates": list(trust_bundle)}} if trust_bundle else {},
        "individual": [
            {
                "registration_id": device,
                "symmetric_key": new_symmetric_key(),
                "assigned_hub": hub,
                "trust_bundle": "edge" if trust_bundle else None,
                **({"payload": payload} if payload is not None else {}),
            }
            for device in devices
        ],
        "groups": [],
    }
    if group_id:
        document["groups"].append(
            {
                "group_id": group_id,
                "group_key": new_symmetric_key(64),
                "assigned_hub": hub,
                "trust_bundle": "edge" if trust_bundle else None,
            }
        )
    return document


def write_demo_enrollments(path: str | os.PathLike, **kwargs) -> dict:
    """Write `demo_enrollments(**kwargs)` to `path` and return the document (it holds the keys)."""
    document = demo_enrollments(**kwargs)
    write_enrollments(path, document)
    return document
