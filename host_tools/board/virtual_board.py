"""A virtual MicroPython board: the Unix port behind a pseudo-terminal, with a littlefs "flash" in an image file.

The real `mpremote connect /dev/pts/N` drives it exactly as it drives a USB board: raw REPL (Ctrl-A), raw-paste,
Ctrl-C interrupts, `fs cp`, `exec`, `soft-reset`, `repl`.

How it works (see boards/unix/README.md for the why):

    mpremote ── /dev/pts/N (pty A, the "USB serial port")
                   │ relay thread (this module): tracks the REPL mode, turns "\\n" into "\\r\\n" like a board's
                   │ console, drops output while nobody has the port open, restarts MicroPython on soft reset
    micropython -i boards/unix/board_boot.py ── pty B (its controlling terminal: Ctrl-C becomes SIGINT while code runs)
                   └─ os.VfsLfs2 on a file-backed block device (boards/unix/lfs_flash.py), mounted at "/"

The Unix port's REPL is MicroPython's shared pyexec REPL, so raw REPL and raw-paste are the real thing. The one
difference is soft reset: there the process exits (after printing "OK\\r\\n" in the raw REPL). The relay prints
"MPY: soft reboot" and starts a fresh process behind the same pty A, so the heap, the modules and the globals are
new as on a board. After a raw-REPL soft reset it feeds the new REPL a Ctrl-A and hides the banner, so the host sees
"raw REPL; CTRL-B to exit" exactly as from a board (and, as on a board, main.py does not run); after a friendly-REPL
soft reset (Ctrl-D at ">>> ") boot.py and main.py run.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import selectors
import signal
import subprocess
import termios
import threading
import time
import tty
from pathlib import Path

import click

from host_tools.board.flash_image import (
    BLOCK_SIZE,
    BOARD_DIR,
    DEFAULT_IMAGE_BYTES,
    REPO_ROOT,
    FlashImage,
    VirtualBoardError,
    image_cat,
    image_create,
    image_extract,
    image_ls,
    micropython_executable,
    parse_size,
)

BOOT_SCRIPT = BOARD_DIR / "board_boot.py"
DEFAULT_IMAGE = REPO_ROOT / "build" / "vboard" / "flash.img"

RAW_REPL_BANNER = b"raw REPL; CTRL-B to exit\r\n"
FRIENDLY_BANNER = b'Type "help()" for more information.'
SOFT_REBOOT = b"MPY: soft reboot\r\n"
MOUNT_FAILED = b"virtual board: cannot mount the flash image"
MAIN_RUNNING_AFTER_S = 1.5  # a first boot that neither reaches the REPL nor dies by then is running main.py
CTRL_A = b"\x01"
CTRL_C = b"\x03"

# A board that dies this many times in a row, each within CRASH_WINDOW_S of starting, is given up on.
CRASH_LIMIT = 5
CRASH_WINDOW_S = 2.0


# --- the board -----------------------------------------------------------------------------------------------------


def _set_raw(fd: int, keep_isig: bool = False) -> None:
    """No echo, no line editing, no output translation; optionally keep Ctrl-C -> SIGINT."""
    tty.setraw(fd)
    if keep_isig:
        attrs = termios.tcgetattr(fd)
        attrs[3] |= termios.ISIG
        termios.tcsetattr(fd, termios.TCSANOW, attrs)


def _sigint_handled(pid: int) -> bool:
    """Whether process pid has a SIGINT handler installed (Linux: SigCgt in /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    except OSError:
        pass
    return False


class VirtualBoard:
    """Start with `with VirtualBoard(image) as board:`; `board.port` is the device path to give mpremote."""

    def __init__(
        self,
        image: Path = DEFAULT_IMAGE,
        size: int | str = DEFAULT_IMAGE_BYTES,
        heapsize: str | None = None,
        log: Path | None = None,
        env: dict | None = None,
    ):
        self.image = FlashImage(image)
        self.size = parse_size(size)
        self.heapsize = heapsize
        self.log_path = Path(log) if log else None
        self.extra_env = dict(env or {})
        self.port: str | None = None
        self.boots = 0  # processes started: 1 + soft/hard resets
        self.error: str | None = None
        self._transcript = bytearray()
        self._transcript_lock = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client_fd: int | None = None
        self._client_connected = False
        self._proc: subprocess.Popen | None = None
        self._dev_fd: int | None = None
        self._lock_file = None
        self._log_file = None
        self._mode = "friendly"
        self._mode_tail = b""
        self._hide_banner = False
        self._hidden = bytearray()
        self._last_out_was_cr = False
        self._pending_input = bytearray()
        self._crashes = 0

    # lifecycle

    def start(self, timeout: float = 20) -> VirtualBoard:
        if not self.image.exists():
            self.image.create(self.size)
        self._lock_file = open(self.image.path, "rb")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise VirtualBoardError(f"{self.image.path}: already in use by another virtual board") from None
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.log_path, "ab", buffering=0)
        master, slave = os.openpty()
        _set_raw(slave)  # before anyone opens it: a USB serial port does no echo or newline translation
        self.port = os.ttyname(slave)
        os.close(slave)  # from now on the master reads EIO until a client opens the port
        os.set_blocking(master, False)
        self._client_fd = master
        self._spawn(run_main=True, enter_raw=False)
        self._thread = threading.Thread(target=self._relay, name=f"virtual-board {self.port}", daemon=True)
        self._thread.start()
        try:
            self._wait_until_up(timeout)
        except VirtualBoardError:
            self.stop()
            raise
        return self

    def _wait_until_up(self, timeout: float) -> None:
        """Up: at the REPL, or running a main.py that does not return (alive and not crashing)."""
        deadline = time.monotonic() + timeout
        while True:
            output = self.output()
            if MOUNT_FAILED in output:
                line = output[output.index(MOUNT_FAILED) :].split(b"\n")[0].decode(errors="replace")
                raise VirtualBoardError(f"{self.image.path}: {line.strip()}")
            if FRIENDLY_BANNER in output:
                return
            if self.error:
                raise VirtualBoardError(self.error)
            if self.boots == 1 and time.monotonic() - self._started_at > MAIN_RUNNING_AFTER_S:
                return
            if time.monotonic() > deadline:
                raise VirtualBoardError(
                    f"virtual board did not come up within {timeout} s: {output[-500:].decode(errors='replace')}"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        self._kill_process()
        if self._client_fd is not None:
            try:
                os.close(self._client_fd)
            except OSError:
                pass
            self._client_fd = None
        if self._lock_file:
            self._lock_file.close()
            self._lock_file = None
        if self._log_file:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> VirtualBoard:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # observing

    def output(self) -> bytes:
        """Everything the board has printed since start, as the board printed it."""
        with self._transcript_lock:
            return bytes(self._transcript)

    def wait_for(self, pattern: bytes, timeout: float = 10, start: int = 0) -> bool:
        """Wait until `pattern` appears in the output after offset `start`."""
        deadline = time.monotonic() + timeout
        with self._transcript_lock:
            while pattern not in self._transcript[start:]:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.error:
                    return False
                self._transcript_lock.wait(min(remaining, 0.2))
            return True

    @property
    def mode(self) -> str:
        """'raw' or 'friendly': the REPL the board last announced."""
        return self._mode

    # the MicroPython process

    def _spawn(self, run_main: bool, enter_raw: bool) -> None:
        master, slave = os.openpty()
        _set_raw(slave, keep_isig=True)
        env = dict(
            os.environ,
            AZPROV_VB_IMAGE=str(self.image.path),
            AZPROV_VB_BLOCK_SIZE=str(BLOCK_SIZE),
            AZPROV_VB_RUN_MAIN="1" if run_main else "0",
            **self.extra_env,
        )
        env.pop("MICROPYPATH", None)
        cmd = [micropython_executable()]
        if self.heapsize:
            cmd += ["-X", f"heapsize={self.heapsize}"]
        cmd += ["-i", str(BOOT_SCRIPT)]

        def own_terminal():  # pty B becomes the controlling terminal, so Ctrl-C there is SIGINT for MicroPython
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self._proc = subprocess.Popen(
            cmd,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            cwd=str(BOARD_DIR),
            preexec_fn=own_terminal,
            close_fds=True,
        )
        os.close(slave)
        os.set_blocking(master, False)
        self._dev_fd = master
        self._started_at = time.monotonic()
        self.boots += 1
        self._mode = "friendly"
        self._mode_tail = b""
        if enter_raw:
            # The new REPL reads this Ctrl-A as soon as it starts; its banner is hidden so the host sees only what a
            # board shows after a soft reset in the raw REPL.
            self._hide_banner = True
            self._hidden.clear()
            self._write_all(master, CTRL_A)
        if self._pending_input:
            self._write_all(master, bytes(self._pending_input))
            self._pending_input.clear()

    def _kill_process(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=3)
        if self._dev_fd is not None:
            try:
                os.close(self._dev_fd)
            except OSError:
                pass
            self._dev_fd = None

    def _reboot(self) -> None:
        proc = self._proc
        status = None
        if proc is not None:
            try:
                status = proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        raw = self._mode == "raw"
        self._kill_process()
        if self._stop.is_set():
            return
        if status == 0:
            self._crashes = 0
            self._record(SOFT_REBOOT)
            self._to_client(SOFT_REBOOT)
            self._spawn(run_main=not raw, enter_raw=raw)
            return
        # Anything else is a crash: come back like a board after a hard reset, unless it keeps crashing.
        self._crashes = self._crashes + 1 if time.monotonic() - self._started_at < CRASH_WINDOW_S else 1
        if self._crashes >= CRASH_LIMIT:
            self.error = f"micropython keeps exiting (status {status}); virtual board stopped"
            self._to_client(f"\r\nvirtual board: {self.error}\r\n".encode())
            return
        self._to_client(f"\r\nvirtual board: micropython exited with status {status}; resetting\r\n".encode())
        self._spawn(run_main=True, enter_raw=False)

    # the relay

    def _relay(self) -> None:
        selector = selectors.DefaultSelector()
        registered = None  # (generation, fd) of the process pty being watched; fd numbers get reused
        try:
            while not self._stop.is_set():
                current = (self.boots, self._dev_fd)
                if registered != current:
                    if registered is not None and registered[1] is not None:
                        try:
                            selector.unregister(registered[1])
                        except (KeyError, ValueError, OSError):
                            pass
                    if self._dev_fd is not None:
                        selector.register(self._dev_fd, selectors.EVENT_READ, "device")
                    registered = current
                if not self._client_connected:
                    self._poll_client()  # a closed pty master polls as hung up, so it is only read on a timer
                client_registered = self._client_connected and self._client_fd is not None
                if client_registered:
                    selector.register(self._client_fd, selectors.EVENT_READ, "client")
                try:
                    events = selector.select(timeout=0.05)
                finally:
                    if client_registered:
                        selector.unregister(self._client_fd)
                for key, _ in events:
                    if key.data == "device":
                        self._pump_device()
                    else:
                        self._pump_client()
                if self._dev_fd is None and self.error is None and not self._stop.is_set():
                    self._reboot()
        except Exception as exc:  # keep the reason; the tests and the CLI report it
            self.error = f"relay failed: {exc!r}"
            with self._transcript_lock:
                self._transcript_lock.notify_all()
        finally:
            selector.close()

    def _poll_client(self) -> None:
        try:
            data = os.read(self._client_fd, 4096)
        except BlockingIOError:
            self._client_connected = True
            return
        except OSError as exc:
            if exc.errno == errno.EIO:  # nobody has the port open
                return
            raise
        self._client_connected = True
        self._from_client(data)

    def _pump_client(self) -> None:
        try:
            data = os.read(self._client_fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == errno.EIO:
                self._client_connected = False
                return
            raise
        if data:
            self._from_client(data)
        else:
            self._client_connected = False

    def _from_client(self, data: bytes) -> None:
        if self._dev_fd is None:
            self._pending_input += data  # rebooting: the next process gets it
            return
        while CTRL_C in data:
            before, _, data = data.partition(CTRL_C)
            if before:
                self._write_all(self._dev_fd, before)
            if not self._interrupt():
                self._write_all(self._dev_fd, CTRL_C)
        if data:
            self._write_all(self._dev_fd, data)

    def _interrupt(self) -> bool:
        """Deliver a Ctrl-C that arrives while code runs as KeyboardInterrupt, as a board's UART interrupt does.

        Mostly pty B's line discipline does this (ISIG is on while the Unix port executes code), but code sent
        in raw-paste mode runs with the terminal still raw, so there the relay sends the SIGINT itself. Only while
        MicroPython has its handler installed: at the REPL SIGINT is SIG_DFL and would kill it, and there Ctrl-C
        is an ordinary input byte. Returns True when the byte was consumed."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return False
        try:
            if termios.tcgetattr(self._dev_fd)[3] & termios.ISIG:
                return False  # the terminal turns this byte into SIGINT
        except termios.error:
            return False
        if not _sigint_handled(proc.pid):
            return False
        os.kill(proc.pid, signal.SIGINT)
        return True

    def _pump_device(self) -> None:
        try:
            data = os.read(self._dev_fd, 65536)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            data = b""
        if not data:  # every holder of pty B has gone: the process ended
            if self._hide_banner:
                self._hide_banner = False
                self._forward(bytes(self._hidden))
            self._close_device_pty()
            return
        self._record(data)
        if self._hide_banner:
            self._hidden += data
            at = self._hidden.find(RAW_REPL_BANNER)
            if at < 0:
                return
            banner = self._hidden.find(b"MicroPython ")
            visible = self._hidden[:banner] + self._hidden[at:] if 0 <= banner < at else bytes(self._hidden)
            self._hide_banner = False
            self._hidden.clear()
            data = bytes(visible)
        self._forward(data)

    def _close_device_pty(self) -> None:
        try:
            os.close(self._dev_fd)
        except OSError:
            pass
        self._dev_fd = None

    def _record(self, data: bytes) -> None:
        scan = self._mode_tail + data
        raw_at, friendly_at = scan.rfind(RAW_REPL_BANNER), scan.rfind(FRIENDLY_BANNER)
        if raw_at > friendly_at:
            self._mode = "raw"
        elif friendly_at > raw_at:
            self._mode = "friendly"
        self._mode_tail = scan[-64:]
        with self._transcript_lock:
            self._transcript += data
            self._transcript_lock.notify_all()
        if self._log_file:
            self._log_file.write(data)

    def _forward(self, data: bytes) -> None:
        # A board's console sends "\r\n" for every "\n"; the Unix port's print() sends a bare "\n".
        if self._last_out_was_cr and data.startswith(b"\n"):
            head, data = b"\n", data[1:]
        else:
            head = b""
        converted = head + re.sub(rb"(?<!\r)\n", b"\r\n", data)
        if converted:
            self._last_out_was_cr = converted.endswith(b"\r")
        self._to_client(converted)

    def _to_client(self, data: bytes) -> None:
        if not data or not self._client_connected:
            return  # like a board whose USB port nobody has open: the output is lost (it is in the transcript)
        try:
            self._write_all(self._client_fd, data, timeout=2)
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            self._client_connected = False

    @staticmethod
    def _write_all(fd: int, data: bytes, timeout: float = 5) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + timeout
        while view:
            try:
                written = os.write(fd, view)
                view = view[written:]
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return  # the reader is stuck: drop the rest rather than stall the board
                time.sleep(0.005)


# --- CLI -----------------------------------------------------------------------------------------------------------


@click.group("virtual-board")
def virtual_board():
    """A MicroPython board on the Unix port, driven with mpremote through a pseudo-terminal."""


@virtual_board.command("run")
@click.option(
    "--image",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_IMAGE,
    show_default=True,
    help="littlefs flash image (created and formatted if absent).",
)
@click.option("--size", default="2M", show_default=True, help="Size of a new image.")
@click.option("--heapsize", help="MicroPython heap, e.g. 128K (an ESP32 without PSRAM has about 110K free).")
@click.option(
    "--port-file", type=click.Path(dir_okay=False, path_type=Path), help="Write the port path here (for scripts)."
)
@click.option("--log", type=click.Path(dir_okay=False, path_type=Path), help="Append everything the board prints.")
def run_command(image, size, heapsize, port_file, log):
    """Start the board and print its port; Ctrl-C stops it."""
    try:
        board = VirtualBoard(image, size=size, heapsize=heapsize, log=log).start()
    except VirtualBoardError as exc:
        raise click.ClickException(str(exc)) from None
    if port_file:
        port_file.parent.mkdir(parents=True, exist_ok=True)
        port_file.write_text(board.port + "\n")
    click.echo(f"virtual board on {board.port} (flash {image}); e.g. mpremote connect {board.port} fs ls")
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    try:
        while not stopped.wait(0.5):
            if board.error:
                raise click.ClickException(board.error)
    finally:
        board.stop()
        if port_file:
            port_file.unlink(missing_ok=True)


for _command in (image_create, image_ls, image_cat, image_extract):
    virtual_board.add_command(_command)


if __name__ == "__main__":
    virtual_board()
