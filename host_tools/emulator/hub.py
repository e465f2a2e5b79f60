"""The IoT Hub service side of the emulated gateway: device twins, direct methods, cloud-to-device messages.

- Twins: one per device, `{"desired": {..., "$version": n}, "reported": {..., "$version": n}}`, kept in
  `twins.json` in the state folder (rewritten atomically on every change), so they survive a restart.
  A patch merges (JSON merge patch: `null` deletes a member) and bumps that section's `$version`.
- Direct methods: `invoke_method()` publishes `$iothub/methods/POST/{name}/?$rid=..` (QoS 0, as IoT Hub) to the
  device's live connection and waits for `$iothub/methods/res/{status}/?$rid=..`; a device that is not connected
  (or not subscribed) gives 404, no answer in time gives 504, as the service answers.
- C2D: a queue per device (at most 50 messages, as IoT Hub), delivered at QoS 1 to a connection subscribed to
  `devices/{id}/messages/devicebound/#`; completed by the device's PUBACK; a message delivered but not
  acknowledged when the connection ends goes back to the queue and is delivered again on the next connection.
- Every exchange is one JSON line in `hub.jsonl`: `{"at": <unix float>, "device_id": ..., "event": ..., ...}`
  with events `twin_get`, `reported_patch`, `desired_patch`, `desired_sent`, `method_invoked`, `method_answered`,
  `method_timeout`, `method_device_offline`, `c2d_queued`, `c2d_sent`, `c2d_completed`, `raw_sent`.
"""

from __future__ import annotations

import copy
import itertools
import json
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import quote

from host_tools.emulator.records import JsonlLog, write_json_atomic

C2D_QUEUE_LIMIT = 50
DEFAULT_METHOD_TIMEOUT_S = 30.0
MAX_METHOD_TIMEOUT_S = 300.0


class HubError(ValueError):
    """A service request the hub refuses (bad patch, full C2D queue, ...); the message says why."""


def merge_patch(target: dict, patch: dict) -> None:
    """JSON merge patch (RFC 7386) in place; `$` members of the patch are ignored."""
    for name, value in patch.items():
        if name.startswith("$"):
            continue
        if value is None:
            target.pop(name, None)
        elif isinstance(value, dict):
            current = target.get(name)
            if not isinstance(current, dict):
                current = target[name] = {}
            merge_patch(current, value)
        else:
            target[name] = copy.deepcopy(value)


def property_bag(properties: dict) -> str:
    """`k=v&k2` percent-encoded as IoT Hub does (a None value gives the name alone)."""
    parts = []
    for name, value in properties.items():
        key = quote(str(name), safe="")
        parts.append(key if value is None else f"{key}={quote(str(value), safe='')}")
    return "&".join(parts)


class TwinStore:
    """Twins by device id, persisted in `path` (JSON)."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._twins: dict[str, dict] = {}
        if path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if isinstance(data, dict):
                    self._twins = {k: v for k, v in data.items() if _is_twin(v)}
            except (OSError, ValueError):
                self._twins = {}  # unreadable: start afresh (the file is replaced on the next change)

    def get(self, device_id: str) -> dict:
        with self._lock:
            return copy.deepcopy(self._twin(device_id))

    def _twin(self, device_id: str) -> dict:
        return self._twins.setdefault(device_id, {"desired": {"$version": 1}, "reported": {"$version": 1}})

    def patch(self, device_id: str, section: str, patch) -> dict:
        """Merges `patch` into `section` ("desired" or "reported"); returns the section after the change."""
        if not isinstance(patch, dict):
            raise HubError(f"a {section} patch must be a JSON object")
        with self._lock:
            part = self._twin(device_id)[section]
            merge_patch(part, patch)
            part["$version"] += 1
            write_json_atomic(self.path, self._twins)
            return copy.deepcopy(part)


def _is_twin(value) -> bool:
    return (
        isinstance(value, dict)
        and all(isinstance(value.get(s), dict) for s in ("desired", "reported"))
        and all(isinstance(value[s].get("$version"), int) for s in ("desired", "reported"))
    )


class C2DMessage:
    def __init__(self, device_id: str, payload: bytes, properties: dict):
        self.device_id = device_id
        self.payload = payload
        self.properties = properties
        self.message_id = properties.get("$.mid") or str(uuid.uuid4())
        self.in_flight: tuple[object, int] | None = None  # (session, packet id) while delivered but not acked
        self.deliveries = 0

    def topic(self) -> str:
        bag = {"$.mid": self.message_id, "$.to": f"/devices/{self.device_id}/messages/deviceBound"}
        bag.update({k: v for k, v in self.properties.items() if k != "$.mid"})
        return f"devices/{self.device_id}/messages/devicebound/{property_bag(bag)}"


class HubService:
    """State the service side keeps: twins, C2D queues, pending method calls, stored MQTT sessions."""

    def __init__(self, state_dir: Path):
        self.twins = TwinStore(state_dir / "twins.json")
        self.records = JsonlLog(state_dir / "hub.jsonl")
        self.c2d: dict[str, list[C2DMessage]] = {}
        self.sessions: dict[str, dict[str, int]] = {}  # client id -> subscriptions, for clean_session=0 clients
        self.pending_methods: dict[str, object] = {}  # rid -> asyncio.Future
        self._rids = itertools.count(1)

    def record(self, device_id: str, event: str, **fields) -> None:
        self.records.append({"at": time.time(), "device_id": device_id, "event": event, **fields})

    def next_rid(self) -> str:
        return str(next(self._rids))

    def queue_c2d(self, device_id: str, payload: bytes, properties: dict | None) -> C2DMessage:
        properties = dict(properties or {})
        for name, value in properties.items():
            if not isinstance(name, str) or not name or (value is not None and not isinstance(value, str)):
                raise HubError("C2D properties must map non-empty names to strings (or null)")
        queue = self.c2d.setdefault(device_id, [])
        if len(queue) >= C2D_QUEUE_LIMIT:
            raise HubError(f"the C2D queue of {device_id!r} is full ({C2D_QUEUE_LIMIT} messages)")
        message = C2DMessage(device_id, payload, properties)
        queue.append(message)
        self.record(device_id, "c2d_queued", message_id=message.message_id, size=len(payload), properties=properties)
        return message

    def close(self) -> None:
        self.records.close()
