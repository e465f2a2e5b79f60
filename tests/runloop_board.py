"""A Unix-port device run as a board: the stand-in `machine`, `network`, `ntptime`, `time` and `socket` modules
(tests/standins/) in its folder, and this harness playing the hardware around them. It restarts the process when
the firmware calls machine.reset() or machine.deepsleep() (after the sleep), and kills and restarts it when the
watchdog's heartbeat file goes stale, as a hardware watchdog resets the chip. Also a TCP gate that makes a server
unreachable (nothing listening) and reachable again."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

from host_tools.board.harness import parse_device_line
from host_tools.board.unix_port import start_device
from host_tools.emulator.testing import pump

STANDINS = Path(__file__).resolve().parent / "standins"
_HARDWARE_FILES = ("machine.wdt", "machine.reset_cause")


def install_standins(root: Path) -> None:
    for path in STANDINS.glob("*.py"):
        shutil.copy2(path, root / path.name)


class Board:
    """Runs `main.py` in `root` until the flow completes (exit status 0 or 1) or stop(); restarts it on resets."""

    def __init__(self, root: Path, args=(), heapsize=None):
        self.root = Path(root)
        self.args, self.heapsize = args, heapsize
        self.lines: list[str] = []
        self.resets: list[str] = []  # cause of each restart: watchdog, reset, deep_sleep
        self.boots = 0
        self.status: int | None = None  # the last process's exit status once the board stopped for good
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stopping = False
        self._proc = None
        self._thread = None

    # --- the test's side

    def control(self, **values) -> None:
        """Steers the stand-ins (standins.json, read by the device on each call)."""
        path = self.root / "standins.json"
        current = json.loads(path.read_text()) if path.exists() else {}
        current.update(values)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(current))
        os.replace(tmp, path)

    def arm(self, fault_file: str) -> None:
        """A one-shot fault: the stand-in meets it, deletes the file and misbehaves once."""
        (self.root / fault_file).write_text("1")

    def start(self) -> Board:
        for name in _HARDWARE_FILES + ("machine.rtc",):
            (self.root / name).unlink(missing_ok=True)  # power-on: no watchdog, RTC memory cleared
        self._thread = threading.Thread(target=self._supervise, daemon=True)
        self._thread.start()
        return self

    def events(self, name: str | None = None) -> list[dict]:
        with self._lock:
            parsed = [parse_device_line(line) for line in self.lines]
        return [p[2] | {"_event": p[1]} for p in parsed if p and (name is None or p[1] == name)]

    def wait_for(self, event: str, count: int = 1, timeout: float = 60, where=None) -> list[dict]:
        """Waits until `event` was logged `count` times (matching `where(fields)`); returns those events."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.events(event) if where is None or where(e)]
            if len(found) >= count:
                return found
            with self._lock:
                finished = self.status is not None
                if not finished:
                    self._changed.wait(0.2)
            if finished and len([e for e in self.events(event) if where is None or where(e)]) < count:
                raise AssertionError(f"board stopped (status {self.status}) before {count} x {event}:\n{self.output}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {count} x {event} within {timeout} s:\n{self.output[-6000:]}")

    def wait_done(self, timeout: float = 120) -> int:
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.status is None:
                if time.monotonic() > deadline:
                    raise AssertionError(f"board still running after {timeout} s:\n{self.output[-6000:]}")
                self._changed.wait(0.2)
        return self.status

    @property
    def output(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def stop(self) -> None:
        self._stopping = True
        proc = self._proc
        if proc and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except Exception:
                proc.kill()
        if self._thread:
            self._thread.join(timeout=15)

    def __enter__(self) -> Board:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- the hardware's side

    def _heartbeat_stale(self) -> bool:
        path = self.root / "machine.wdt"
        try:
            timeout_ms = int(path.read_text() or "0")
            age = time.time() - path.stat().st_mtime
        except (OSError, ValueError):
            return False
        return timeout_ms > 0 and age * 1000 > timeout_ms

    def _supervise(self) -> None:
        cause = None
        while not self._stopping:
            (self.root / "machine.wdt").unlink(missing_ok=True)
            if cause:
                (self.root / "machine.reset_cause").write_text(cause)
            proc = start_device(self.root, self.args, heapsize=self.heapsize)
            self._proc = proc
            with self._lock:
                self.boots += 1
            marker: list[str] = []
            reader = threading.Thread(target=self._read, args=(proc, marker), daemon=True)
            reader.start()
            cause = None
            while proc.poll() is None:
                if self._heartbeat_stale():
                    proc.kill()
                    cause = "watchdog"
                    break
                time.sleep(0.1)
            proc.wait()
            reader.join(timeout=5)
            if cause is None and marker:
                cause = marker[0]
            with self._lock:
                if cause is None or self._stopping:
                    self.status = proc.returncode
                    self._changed.notify_all()
                    return
                self.resets.append(cause)
                self.lines.append(f"HARNESS restart cause={cause}")
                self._changed.notify_all()
            if cause == "deep_sleep" and marker[1:]:
                time.sleep(int(marker[1]) / 1000)

    def _read(self, proc, marker: list[str]) -> None:
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line.startswith("STANDIN machine.reset"):
                marker[:] = ["reset"]
            elif line.startswith("STANDIN machine.deepsleep"):
                marker[:] = ["deep_sleep", line.rsplit("=", 1)[1]]
            with self._lock:
                self.lines.append(line)
                self._changed.notify_all()


class Gate:
    """A TCP forwarder on a fixed local port to `target_port`, that can be closed (nothing listens: connections are
    refused, as for a server that is down or unreachable) and opened again."""

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._listener: socket.socket | None = None
        self.accepted = 0

    def open(self) -> None:
        if self._listener is None:
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(16)
            self._listener = listener
            threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()

    def _accept(self, listener) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            self.accepted += 1
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=pump, args=(source, sink), daemon=True).start()
