"""Drive the emulator and a Unix-port device together: shared by the demo, the tests and the benchmarks."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import click

from host_tools.board.unix_port import REPO
from host_tools.emulator.enrollment_file import write_enrollments

EMULATOR_START_TIMEOUT_S = 60


def parse_device_line(line: str) -> tuple[str, str, dict[str, str]] | None:
    """`azprov LEVEL event k=v k2="v 2"` -> (level, event, fields); None for any other line."""
    parts = line.strip().split(" ", 3)
    if len(parts) < 3 or parts[0] != "azprov":
        return None
    fields = {}
    if len(parts) == 4:
        try:
            tokens = shlex.split(parts[3])
        except ValueError:
            tokens = parts[3].split()
        for token in tokens:
            name, _, value = token.partition("=")
            fields[name] = value
    return parts[1], parts[2], fields


class EmulatorProcess:
    """The emulator as a child process, the way a user starts it (`python -m host_tools emulator`)."""

    def __init__(self, state_dir: Path, enrollments: Path, extra_args=()):
        self.state_dir = state_dir
        self.enrollments = enrollments
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}

    def __enter__(self) -> EmulatorProcess:
        info_path = self.state_dir / "emulator.json"
        info_path.unlink(missing_ok=True)
        self.log_path = self.state_dir / "emulator.log"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "host_tools",
                "emulator",
                "--state-dir",
                str(self.state_dir),
                "--enrollments",
                str(self.enrollments),
                "--dps-port",
                "0",
                "--gateway-port",
                "0",
                *self.extra_args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        deadline = time.monotonic() + EMULATOR_START_TIMEOUT_S
        while not info_path.exists():
            if self.proc.poll() is not None:
                raise click.ClickException(
                    f"the emulator exited early; see {self.log_path}:\n" + self.log_path.read_text()[-2000:]
                )
            if time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise click.ClickException("the emulator did not start in time")
            time.sleep(0.05)
        self.info = json.loads(info_path.read_text())
        return self

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def update_enrollments(self, doc: dict) -> None:
        """Replaces the enrollment file; the running emulator picks the new one up on its next request."""
        write_enrollments(self.enrollments, doc)  # it holds keys: owner-only, a new file renamed into place

    def _records(self, path: Path, since: int = 0) -> list[dict]:
        if not path.exists():
            return []
        with open(path, "rb") as handle:
            handle.seek(since)
            text = handle.read().decode("utf-8")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def telemetry_mark(self) -> int:
        """Where the telemetry record ends now: `telemetry(since=mark)` is then only what came after. The file is
        kept across runs in the same state folder, so a run counts its own messages from its mark."""
        path = Path(self.info["telemetry"])
        return path.stat().st_size if path.exists() else 0

    def telemetry(self, since: int = 0) -> list[dict]:
        """What the gateway acknowledged, one dict per message (docs/design.md); from byte `since` of the record
        (a telemetry_mark) on."""
        return self._records(Path(self.info["telemetry"]), since)

    def credentials_received(self) -> list[dict]:
        """Every CONNECT user name and SAS token the emulator received (only with --record-credentials)."""
        return self._records(self.state_dir / "credentials-received.jsonl")

    def registrations(self) -> list[dict]:
        """Every registration outcome the DPS endpoint recorded (no keys or tokens)."""
        return self._records(self.state_dir / "registrations.jsonl")
