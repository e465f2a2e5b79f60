"""What the emulator records: JSON-lines files (flushed per record) and connection/request counters.

Records never contain keys, tokens or signatures: only ids, statuses and counts.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import threading
from collections import defaultdict
from pathlib import Path

from host_tools.secret_files import open_secret_log


class JsonlLog:
    """Appends one JSON object per line, flushing each so a reader (or a crash) never sees half a record;
    also keeps this run's records in memory for the Python API. `secret`: the records hold credentials (the test
    mode's record of SAS tokens), so the file is owner-only (host_tools/secret_files.py)."""

    def __init__(self, path: str | os.PathLike, secret: bool = False):
        self.path = Path(path)
        if secret:
            self._handle = open_secret_log(self.path)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "a", encoding="utf-8")
        self._records: list[dict] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    def append(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False, separators=(", ", ": "))
        with self._lock:
            self._handle.write(line + "\n")
            self._handle.flush()
            self._records.append(record)
            self._changed.notify_all()

    def records(self) -> list[dict]:
        with self._lock:
            return copy.deepcopy(self._records)

    def wait_for(self, predicate, timeout: float) -> list[dict]:
        """Block until `predicate(records)` is true (or the timeout passes); returns the records either way."""
        with self._lock:
            self._changed.wait_for(lambda: predicate(self._records), timeout=timeout)
            return copy.deepcopy(self._records)

    def close(self) -> None:
        with self._lock:
            if not self._handle.closed:
                self._handle.close()


class Stats:
    """Thread-safe counters per endpoint. `snapshot()` is what `Emulator.stats` returns:

    {"dps": {"connections": n, "active": n, "tls_failures": n, "refused": n, "by_client": {client_id: n},
             "register_requests": n, "poll_requests": n, "assigned": n, ...},
     "gateway": {..., "messages": n, "dropped": n}}
    """

    ENDPOINTS = ("dps", "gateway")

    def __init__(self):
        self._lock = threading.Lock()
        self._counters = {name: defaultdict(int) for name in self.ENDPOINTS}
        self._by_client = {name: defaultdict(int) for name in self.ENDPOINTS}

    def incr(self, endpoint: str, counter: str, by: int = 1) -> None:
        with self._lock:
            self._counters[endpoint][counter] += by

    def client_connected(self, endpoint: str, client_id: str) -> None:
        with self._lock:
            self._by_client[endpoint][client_id] += 1

    def snapshot(self) -> dict:
        with self._lock:
            out = {}
            for endpoint in self.ENDPOINTS:
                values = {"connections": 0, "active": 0, "tls_failures": 0, "refused": 0, "dropped": 0}
                values.update(self._counters[endpoint])
                values["by_client"] = dict(self._by_client[endpoint])
                out[endpoint] = values
            return out


def write_json_atomic(path: str | os.PathLike, data: dict) -> None:
    """Write JSON so that readers see either the old file or the whole new one, never a partial file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
