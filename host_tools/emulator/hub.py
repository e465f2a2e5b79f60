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

import asyncio
import copy
import itertools
import json
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from host_tools.emulator import mqtt_codec as mqtt
from host_tools.emulator.connection import raw_query
from host_tools.emulator.records import JsonlLog, write_json_atomic

if TYPE_CHECKING:
    from host_tools.emulator.connection import MqttSession
    from host_tools.emulator.gateway import GatewayClient

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


class ServiceSide:
    """What the service does to devices through the gateway (mixed into GatewayEndpoint, which provides `live`,
    `hub`, `log`, `stats` and `_deliver`): desired patches, direct methods, C2D, and test hooks."""

    def _subscribed_client(self, device_id: str, topic: str):
        session, client = self.live.get(device_id, (None, None))
        if session is None or session.closed:
            return None, None
        if not any(mqtt.topic_matches(f, topic) for f in client.subscriptions):
            return None, None
        return session, client

    async def set_desired(self, device_id: str, patch: dict) -> dict:
        """Merges `patch` into the desired properties and notifies the device if it is connected and subscribed."""
        desired = self.hub.twins.patch(device_id, "desired", patch)
        version = desired["$version"]
        body = {k: v for k, v in patch.items() if not k.startswith("$")}
        body["$version"] = version
        topic = f"$iothub/twin/PATCH/properties/desired/?$version={version}"
        self.hub.record(device_id, "desired_patch", version=version, patch=patch)
        session, client = self._subscribed_client(device_id, topic)
        if session is not None:
            await self._deliver(session, client, topic, json.dumps(body).encode(), 0)
            self.hub.record(device_id, "desired_sent", version=version)
        return self.hub.twins.get(device_id)

    async def invoke_method(
        self, device_id: str, name: str, payload=None, timeout: float = DEFAULT_METHOD_TIMEOUT_S
    ) -> dict:
        """Calls a direct method: {"status": <device's status or 404/504>, "payload": <its JSON answer>}."""
        rid = self.hub.next_rid()
        topic = f"$iothub/methods/POST/{quote(name, safe='')}/?$rid={rid}"
        self.hub.record(device_id, "method_invoked", name=name, rid=rid, payload=payload, timeout=timeout)
        session, client = self._subscribed_client(device_id, topic)
        if session is None:
            self.hub.record(device_id, "method_device_offline", name=name, rid=rid)
            return {"status": 404, "payload": {"message": f"device {device_id!r} is not online"}}
        future = asyncio.get_running_loop().create_future()
        self.hub.pending_methods[rid] = (device_id, name, future)
        try:
            body = b"" if payload is None else json.dumps(payload).encode()
            await self._deliver(session, client, topic, body, 0)
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self.hub.record(device_id, "method_timeout", name=name, rid=rid)
            return {"status": 504, "payload": {"message": f"no answer from {device_id!r} in {timeout} s"}}
        finally:
            self.hub.pending_methods.pop(rid, None)

    def _method_answer(self, client: GatewayClient, topic: str, payload: bytes) -> None:
        status_text, _, query = topic[len("$iothub/methods/res/") :].partition("/")
        rid = raw_query(query).get("$rid", "")
        pending = self.hub.pending_methods.get(rid)
        try:
            status = int(status_text)
            answer = json.loads(payload) if payload.strip() else None
        except ValueError:
            status, answer = None, None
        valid = status is not None
        self.hub.record(client.device_id, "method_answered", rid=rid, status=status, payload=answer, valid=valid)
        if pending is None or pending[0] != client.device_id:
            self.log.info("%s: method answer for unknown $rid %r", client.device_id, rid)
            return
        future = pending[2]
        if not future.done():
            future.set_result({"status": status if valid else 502, "payload": answer})

    async def send_c2d(self, device_id: str, payload: bytes, properties: dict | None = None) -> str:
        """Queues a cloud-to-device message and delivers it if the device is listening; returns its message id."""
        message = self.hub.queue_c2d(device_id, payload, properties)
        session, client = self.live.get(device_id, (None, None))
        if session is not None and not session.closed:
            await self._deliver_c2d(session, client)
        return message.message_id

    async def _deliver_c2d(self, session: MqttSession, client: GatewayClient) -> None:
        for message in list(self.hub.c2d.get(client.device_id, [])):
            if message.in_flight is not None:
                continue
            topic = message.topic()
            granted = [q for f, q in client.subscriptions.items() if mqtt.topic_matches(f, topic)]
            if not granted or session.closed:
                return
            qos = min(1, max(granted))
            packet_id = session.next_packet_id() if qos else None
            await session.send(mqtt.Publish(topic=topic, payload=message.payload, qos=qos, packet_id=packet_id))
            message.deliveries += 1
            self.hub.record(
                client.device_id, "c2d_sent", message_id=message.message_id, qos=qos, delivery=message.deliveries
            )
            if qos:
                message.in_flight = (session, packet_id)
                client.in_flight[packet_id] = message
            else:
                self.hub.c2d[client.device_id].remove(message)

    async def publish_raw(self, device_id: str, topic: str, payload: bytes, qos: int = 0) -> bool:
        """Sends any PUBLISH to the device's live connection (tests: malformed messages); False when offline."""
        session, client = self.live.get(device_id, (None, None))
        if session is None or session.closed:
            return False
        packet_id = session.next_packet_id() if qos else None
        await session.send(mqtt.Publish(topic=topic, payload=payload, qos=qos, packet_id=packet_id))
        self.hub.record(device_id, "raw_sent", topic=topic, size=len(payload), qos=qos)
        return True

    def drop_device(self, device_id: str) -> bool:
        session, _ = self.live.get(device_id, (None, None))
        if session is None or session.closed:
            return False
        self.stats.incr(self.name, "dropped")
        self.log.info("%s: dropping the connection on request", session)
        session.abort("dropped on request")
        return True
