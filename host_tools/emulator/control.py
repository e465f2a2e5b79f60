"""Using a running emulator as the IoT Hub service would be used: invoke direct methods, send C2D messages, read and
change device twins. The emulator listens for these requests on 127.0.0.1 (its port and a per-run token are in
`emulator.json` under "control"); `ServiceClient` is the Python API, the `azprov emulator invoke-method / send-c2d /
twin` commands use it.

Wire format: one JSON object per line each way. Request `{"token": ..., "op": ..., "args": {...}}`, answer
`{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`.

    service = ServiceClient.from_state_dir("emu-state")
    service.set_desired("sensor-001", {"telemetryIntervalSeconds": 5})
    service.invoke_method("sensor-001", "ping", {"n": 1}, timeout=10)   # {"status": 200, "payload": {...}}
    service.send_c2d("sensor-001", b"hello", {"colour": "red"})         # the message id
    service.twin("sensor-001")                                          # {"desired": {...}, "reported": {...}}
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from pathlib import Path

from host_tools.emulator.hub import MAX_METHOD_TIMEOUT_S, HubError

MAX_REQUEST = 1 << 20


class ServiceError(RuntimeError):
    """The emulator refused the request or could not be reached; the message says why."""


def _payload_bytes(args: dict) -> bytes:
    if "payload_b64" in args:
        return base64.b64decode(args["payload_b64"], validate=True)
    payload = args.get("payload", "")
    if not isinstance(payload, str):
        raise HubError("payload must be text (or payload_b64 bytes)")
    return payload.encode("utf-8")


async def perform(gateway, op: str, args: dict):
    """Carries out one service request on the emulator's loop (also used by the in-process `Emulator`)."""
    device_id = args.get("device_id")
    if not isinstance(device_id, str) or not device_id:
        raise HubError("device_id is required")
    if op == "twin":
        return gateway.hub.twins.get(device_id)
    if op == "set_desired":
        patch = args.get("patch")
        if not isinstance(patch, dict):
            raise HubError("patch must be a JSON object")
        return await gateway.set_desired(device_id, patch)
    if op == "invoke_method":
        name = args.get("name")
        timeout = args.get("timeout", 30)
        if not isinstance(name, str) or not name:
            raise HubError("name is required")
        if not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_METHOD_TIMEOUT_S:
            raise HubError(f"timeout must be between 0 and {MAX_METHOD_TIMEOUT_S:g} seconds")
        return await gateway.invoke_method(device_id, name, args.get("payload"), float(timeout))
    if op == "send_c2d":
        return await gateway.send_c2d(device_id, _payload_bytes(args), args.get("properties"))
    if op == "publish_raw":
        qos = args.get("qos", 0)
        if qos not in (0, 1) or not isinstance(args.get("topic"), str):
            raise HubError("publish_raw needs a topic and qos 0 or 1")
        return await gateway.publish_raw(device_id, args["topic"], _payload_bytes(args), qos)
    if op == "drop_connection":
        return gateway.drop_device(device_id)
    raise HubError(f"unknown operation {op!r}")


class ControlServer:
    """The emulator's side: answers ServiceClient requests that carry the right token."""

    def __init__(self, gateway, token: str):
        self.gateway = gateway
        self.token = token
        self.server: asyncio.base_events.Server | None = None

    async def listen(self, host: str = "127.0.0.1") -> int:
        self.server = await asyncio.start_server(self._serve, host, 0, limit=MAX_REQUEST)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(json.dumps(await self._answer(line)).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, ValueError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def _answer(self, line: bytes) -> dict:
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or request.get("token") != self.token:
                return {"ok": False, "error": "not authorised (token from emulator.json required)"}
            args = request.get("args") or {}
            if not isinstance(args, dict):
                raise HubError("args must be an object")
            return {"ok": True, "result": await perform(self.gateway, str(request.get("op")), args)}
        except (HubError, ValueError) as exc:
            return {"ok": False, "error": str(exc)}

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


class ServiceClient:
    """The host's side: one request per call over a short TCP connection to the emulator's control port."""

    def __init__(self, host: str, port: int, token: str):
        self.host, self.port, self.token = host, port, token

    @classmethod
    def from_state_dir(cls, state_dir) -> ServiceClient:
        path = Path(state_dir) / "emulator.json"
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
            control = info["control"]
            return cls(control["host"], int(control["port"]), control["token"])
        except FileNotFoundError:
            raise ServiceError(f"{path}: not found; is the emulator running with --state-dir {state_dir}?") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ServiceError(f"{path}: no usable control entry ({exc})") from None

    def request(self, op: str, wait: float = 10, **args):
        line = json.dumps({"token": self.token, "op": op, "args": args}).encode() + b"\n"
        try:
            with socket.create_connection((self.host, self.port), timeout=wait) as sock:
                sock.sendall(line)
                answer = b""
                while not answer.endswith(b"\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    answer += chunk
        except OSError as exc:
            raise ServiceError(f"cannot reach the emulator at {self.host}:{self.port}: {exc}") from None
        try:
            reply = json.loads(answer)
        except ValueError:
            raise ServiceError("the emulator's answer is not JSON") from None
        if not reply.get("ok"):
            raise ServiceError(reply.get("error") or "refused")
        return reply["result"]

    def twin(self, device_id: str) -> dict:
        return self.request("twin", device_id=device_id)

    def set_desired(self, device_id: str, patch: dict) -> dict:
        return self.request("set_desired", device_id=device_id, patch=patch)

    def invoke_method(self, device_id: str, name: str, payload=None, timeout: float = 30) -> dict:
        return self.request(
            "invoke_method", wait=timeout + 10, device_id=device_id, name=name, payload=payload, timeout=timeout
        )

    def send_c2d(self, device_id: str, payload: bytes | str, properties: dict | None = None) -> str:
        data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        return self.request(
            "send_c2d", device_id=device_id, payload_b64=base64.b64encode(data).decode(), properties=properties
        )

    def drop_connection(self, device_id: str) -> bool:
        """Cuts the device's connection as a network failure would; False when it had none."""
        return self.request("drop_connection", device_id=device_id)

    def publish_raw(self, device_id: str, topic: str, payload: bytes | str = b"", qos: int = 0) -> bool:
        data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        return self.request(
            "publish_raw", device_id=device_id, topic=topic, payload_b64=base64.b64encode(data).decode(), qos=qos
        )
