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
- Which devices the hub knows (service requests about any other device are refused 404, as IoT Hub's DeviceNotFound):
  a device DPS assigned in this run, one an enabled individual enrollment would assign (in the default `enrolled`
  gateway mode), and one that has connected to the gateway (its twin, created then and kept in `twins.json`, is
  the hub's record of it, across runs). A group enrollment alone makes no device known: IoT Hub creates a group's
  devices only when they register.
- Sizes as IoT Hub limits them (host_tools/emulator/limits.py): refused with 413, before anything is stored or sent.
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
from host_tools.emulator.limits import (
    C2D_MAX_BODY_BYTES,
    METHOD_MAX_PAYLOAD_BYTES,
    METHOD_MAX_RESPONSE_BYTES,
    TWIN_DESIRED_MAX_BYTES,
    TWIN_MAX_DEPTH,
    json_depth,
    twin_size,
)
from host_tools.emulator.records import JsonlLog, write_json_atomic

if TYPE_CHECKING:
    from host_tools.emulator.connection import MqttSession
    from host_tools.emulator.gateway import GatewayClient

C2D_QUEUE_LIMIT = 50
DEFAULT_METHOD_TIMEOUT_S = 30.0
MAX_METHOD_TIMEOUT_S = 300.0


class HubError(ValueError):
    """A service request the hub refuses; `status` is IoT Hub's HTTP-like answer (400 bad argument, 404 unknown
    device, 403 C2D queue full, 413 too large, ...) and the message says why, in one line."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def shown(text, limit: int = 64) -> str:
    """A caller-given name for a one-line message: quoted, control characters escaped, cut at `limit` characters."""
    text = str(text)
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


# A method name goes into the topic `$iothub/methods/POST/{name}/?$rid=..`: MQTT wildcards, the topic separator and
# the query mark would change what the device's subscription matches or how it splits the topic.
_FORBIDDEN_IN_METHOD_NAME = set("#+/?")


def is_text(value) -> bool:
    """A str that is valid Unicode (no lone surrogates), so it can go into a topic as UTF-8."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_method_name(name) -> str:
    if not isinstance(name, str) or not name or not is_text(name):
        raise HubError("the method name is required (a non-empty string of valid Unicode)")
    bad = sorted({c for c in name if c in _FORBIDDEN_IN_METHOD_NAME or ord(c) < 0x20 or ord(c) == 0x7F})
    if bad:
        raise HubError(
            f"method name {shown(name)} holds {', '.join(repr(c) for c in bad)}, not allowed in a method name"
        )
    return name


def method_payload_bytes(payload) -> bytes:
    """The request payload as the device receives it (JSON text; empty for none), within IoT Hub's 128 KB."""
    if payload is None:
        return b""
    try:
        body = json.dumps(payload, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise HubError(f"the method payload is not JSON: {str(exc)[:80]}") from None
    if len(body) > METHOD_MAX_PAYLOAD_BYTES:
        raise HubError(
            f"the method payload is {len(body)} bytes; IoT Hub's limit is {METHOD_MAX_PAYLOAD_BYTES}", status=413
        )
    return body


def check_twin_patch(section: str, patch, max_bytes: int) -> None:
    """A desired or reported patch: a JSON object, nested at most TWIN_MAX_DEPTH deep, at most `max_bytes`."""
    if not isinstance(patch, dict):
        raise HubError(f"a {section} patch must be a JSON object")
    try:
        json.dumps(patch, allow_nan=False)  # a patch given in process may hold what JSON cannot (NaN, bytes, sets)
    except (TypeError, ValueError, RecursionError):
        raise HubError(
            f"the {section} patch is not JSON (NaN, Infinity or a non-JSON value, or nested too deeply)"
        ) from None
    if json_depth(patch, TWIN_MAX_DEPTH + 1) > TWIN_MAX_DEPTH + 1:
        raise HubError(f"the {section} patch nests deeper than IoT Hub's {TWIN_MAX_DEPTH} levels")
    size = twin_size(patch)
    if size > max_bytes:
        raise HubError(f"the {section} patch is {size} bytes; IoT Hub's limit is {max_bytes}", status=413)


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

    def has(self, device_id: str) -> bool:
        with self._lock:
            return device_id in self._twins

    def ensure(self, device_id: str) -> None:
        """Creates and saves the device's twin if it has none (a device that connected is known from then on)."""
        with self._lock:
            if device_id not in self._twins:
                self._twin(device_id)
                write_json_atomic(self.path, self._twins)

    def _twin(self, device_id: str) -> dict:
        return self._twins.setdefault(device_id, {"desired": {"$version": 1}, "reported": {"$version": 1}})

    def patch(self, device_id: str, section: str, patch, max_bytes: int) -> dict:
        """Merges `patch` into `section` ("desired" or "reported"); returns the section after the change. HubError
        (nothing changed) for a patch that is not an object, too deep, or over `max_bytes`, or that would make the
        section exceed `max_bytes` (IoT Hub refuses "all operations that would increase the size ... above the
        limit")."""
        check_twin_patch(section, patch, max_bytes)
        with self._lock:
            part = copy.deepcopy(self._twin(device_id)[section])
            merge_patch(part, patch)
            size = twin_size(part)
            if size > max_bytes:
                raise HubError(
                    f"the {section} properties would be {size} bytes; IoT Hub's limit is {max_bytes}", status=413
                )
            part["$version"] += 1
            self._twins[device_id][section] = part
            write_json_atomic(self.path, self._twins)
            return copy.deepcopy(part)


def _is_twin(value) -> bool:
    return (
        isinstance(value, dict)
        and all(isinstance(value.get(s), dict) for s in ("desired", "reported"))
        and all(isinstance(value[s].get("$version"), int) for s in ("desired", "reported"))
    )


def hub_answer(status: int, error_code: int, message: str) -> dict:
    """A direct-method result the hub made up (the device did not answer, or not usably)."""
    return {"status": status, "payload": {"errorCode": error_code, "message": message}, "hub_error": True}


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
        if properties is not None and not isinstance(properties, dict):
            raise HubError("C2D properties must be a JSON object (names to strings or null)")
        properties = dict(properties or {})
        for name, value in properties.items():
            if not isinstance(name, str) or not name or not is_text(name) or not (value is None or is_text(value)):
                raise HubError("C2D properties must map non-empty names to strings (or null)")
        if len(payload) > C2D_MAX_BODY_BYTES:
            raise HubError(
                f"the C2D message body is {len(payload)} bytes; IoT Hub's limit is {C2D_MAX_BODY_BYTES}", status=413
            )
        queue = self.c2d.setdefault(device_id, [])
        if len(queue) >= C2D_QUEUE_LIMIT:
            # IoT Hub: 403004 DeviceMaximumQueueDepthExceeded.
            raise HubError(f"the C2D queue of {shown(device_id)} is full ({C2D_QUEUE_LIMIT} messages)", status=403)
        message = C2DMessage(device_id, payload, properties)
        queue.append(message)
        self.record(device_id, "c2d_queued", message_id=message.message_id, size=len(payload), properties=properties)
        return message

    def close(self) -> None:
        self.records.close()


class ServiceSide:
    """What the service does to devices through the gateway (mixed into GatewayEndpoint, which provides `ctx`,
    `live`, `hub`, `log`, `stats` and `_deliver`): desired patches, direct methods, C2D, and test hooks."""

    def device_known(self, device_id: str) -> bool:
        """Whether the emulated IoT Hub has this device (see the module's docstring for the rule)."""
        if device_id in self.live or self.hub.twins.has(device_id):
            return True
        return any(
            c.source == "registration" or (c.enrollment is not None and c.enrollment.kind == "individual")
            for c in self.ctx.gateway_credentials(device_id)
        )

    def require_device(self, device_id: str) -> None:
        if not self.device_known(device_id):
            # IoT Hub: 404001 DeviceNotFound.
            raise HubError(
                f"device {shown(device_id)} is not known to the hub (not enrolled, registered or connected)", status=404
            )

    def _subscribed_client(self, device_id: str, topic: str):
        session, client = self.live.get(device_id, (None, None))
        if session is None or session.closed:
            return None, None
        if not any(mqtt.topic_matches(f, topic) for f in client.subscriptions):
            return None, None
        return session, client

    async def set_desired(self, device_id: str, patch: dict) -> dict:
        """Merges `patch` into the desired properties and notifies the device if it is connected and subscribed."""
        desired = self.hub.twins.patch(device_id, "desired", patch, TWIN_DESIRED_MAX_BYTES)
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
        """Calls a direct method: {"status": <the device's status>, "payload": <its JSON answer>}, or, when the hub
        answers instead of the device, {"status": 404 (not online) | 504 (no answer in time) | 413 (answer too
        large) | 502 (answer unusable), "payload": {"errorCode": ..., "message": ...}, "hub_error": True}. HubError
        (nothing published) for an invalid name or payload."""
        check_method_name(name)
        body = method_payload_bytes(payload)
        rid = self.hub.next_rid()
        topic = f"$iothub/methods/POST/{quote(name, safe='')}/?$rid={rid}"
        self.hub.record(device_id, "method_invoked", name=name, rid=rid, payload=payload, timeout=timeout)
        session, client = self._subscribed_client(device_id, topic)
        if session is None:
            self.hub.record(device_id, "method_device_offline", name=name, rid=rid)
            return hub_answer(404, 404103, f"device {shown(device_id)} is not online")  # IoT Hub: DeviceNotOnline
        future = asyncio.get_running_loop().create_future()
        self.hub.pending_methods[rid] = (device_id, name, future)
        try:
            await self._deliver(session, client, topic, body, 0)
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self.hub.record(device_id, "method_timeout", name=name, rid=rid)
            # IoT Hub: 504101 GatewayTimeout.
            return hub_answer(504, 504101, f"no answer from {shown(device_id)} in {timeout:g} s")
        finally:
            self.hub.pending_methods.pop(rid, None)

    def _method_answer(self, client: GatewayClient, topic: str, payload: bytes) -> None:
        status_text, _, query = topic[len("$iothub/methods/res/") :].partition("/")
        rid = raw_query(query).get("$rid", "")
        pending = self.hub.pending_methods.get(rid)
        too_large = len(payload) > METHOD_MAX_RESPONSE_BYTES
        try:
            status = int(status_text)
            answer = json.loads(payload) if payload.strip() and not too_large else None
        except (ValueError, RecursionError):
            status, answer = None, None
        valid = status is not None and not too_large
        self.hub.record(
            client.device_id, "method_answered", rid=rid, status=status, payload=answer, valid=valid, size=len(payload)
        )
        if pending is None or pending[0] != client.device_id:
            self.log.info("%s: method answer for unknown $rid %r", client.device_id, rid)
            return
        future = pending[2]
        if future.done():
            return
        if too_large:
            future.set_result(
                hub_answer(
                    413,
                    413001,
                    f"the device's answer is {len(payload)} bytes; the limit is {METHOD_MAX_RESPONSE_BYTES}",
                )
            )
        elif not valid:
            future.set_result(hub_answer(502, 502001, "the device's answer has no integer status or is not JSON"))
        else:
            future.set_result({"status": status, "payload": answer})

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
