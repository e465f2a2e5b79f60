"""Using a running emulator as the IoT Hub service would be used: invoke direct methods, send C2D messages, read and
change device twins. The emulator listens for these requests on 127.0.0.1 (its port and a per-run token are in
`emulator.json` under "control"); `ServiceClient` is the Python API, the `azprov emulator invoke-method / send-c2d /
twin` commands use it.

Wire format: one JSON object per line each way. Request `{"token": ..., "op": ..., "args": {...}}`, answer
`{"ok": true, "result": ...}` or `{"ok": false, "status": <HTTP-like>, "error": "<one line>"}`. Every request line
gets an answer: 400 malformed (not JSON, wrong types, bad method name), 401 no or wrong token, 403 C2D queue full,
404 unknown device, 408 no whole line within CONTROL_IDLE_TIMEOUT_S (then the connection closes), 413 over one of
IoT Hub's size limits or a line over CONTROL_MAX_LINE_BYTES (then the connection closes), 500 an emulator bug
(logged). host_tools/emulator/limits.py holds the figures.

    service = ServiceClient.from_state_dir("emu-state")
    service.set_desired("sensor-001", {"telemetryIntervalSeconds": 5})
    service.invoke_method("sensor-001", "ping", {"n": 1}, timeout=10)   # {"status": 200, "payload": {...}}
    service.send_c2d("sensor-001", b"hello", {"colour": "red"})         # the message id
    service.twin("sensor-001")                                          # {"desired": {...}, "reported": {...}}
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import socket
from pathlib import Path

from host_tools.emulator.hub import MAX_METHOD_TIMEOUT_S, HubError, check_method_name, is_text, shown
from host_tools.emulator.limits import CONTROL_IDLE_TIMEOUT_S, CONTROL_MAX_LINE_BYTES

log = logging.getLogger("host_tools.emulator.control")
OPERATIONS = ("twin", "set_desired", "invoke_method", "send_c2d", "publish_raw", "drop_connection")


class ServiceError(RuntimeError):
    """The emulator refused the request (`status`: its HTTP-like answer) or could not be reached (`status` None);
    the message says why, in one line."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def _payload_bytes(args: dict) -> bytes:
    if "payload_b64" in args:
        encoded = args["payload_b64"]
        if not isinstance(encoded, str):
            raise HubError("payload_b64 must be a base64 string")
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise HubError("payload_b64 is not valid base64") from None
    payload = args.get("payload", "")
    if not isinstance(payload, str):
        raise HubError("payload must be text (or payload_b64 bytes)")
    return payload.encode("utf-8", errors="surrogatepass")


async def perform(gateway, op: str, args: dict):
    """Carries out one service request on the emulator's loop (also used by the in-process `Emulator`). HubError
    (with its status) for a request IoT Hub would refuse; nothing is stored or sent then."""
    if op not in OPERATIONS:
        raise HubError(f"unknown operation {shown(op)}")
    device_id = args.get("device_id")
    if not is_text(device_id) or not device_id:
        raise HubError("device_id is required (a non-empty string of valid Unicode)")
    if op in ("twin", "set_desired", "invoke_method", "send_c2d"):
        gateway.require_device(device_id)
    if op == "twin":
        return gateway.hub.twins.get(device_id)
    if op == "set_desired":
        patch = args.get("patch")
        if not isinstance(patch, dict):
            raise HubError("patch must be a JSON object")
        return await gateway.set_desired(device_id, patch)
    if op == "invoke_method":
        name = check_method_name(args.get("name"))
        timeout = args.get("timeout", 30)
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not 0 < timeout <= MAX_METHOD_TIMEOUT_S
        ):
            raise HubError(f"timeout must be a number of seconds above 0 and at most {MAX_METHOD_TIMEOUT_S:g}")
        return await gateway.invoke_method(device_id, name, args.get("payload"), float(timeout))
    if op == "send_c2d":
        return await gateway.send_c2d(device_id, _payload_bytes(args), args.get("properties"))
    if op == "publish_raw":
        qos = args.get("qos", 0)
        if qos not in (0, 1) or not isinstance(args.get("topic"), str):
            raise HubError("publish_raw needs a topic and qos 0 or 1")
        return await gateway.publish_raw(device_id, args["topic"], _payload_bytes(args), qos)
    return gateway.drop_device(device_id)


def _refusal(status: int, error: str) -> dict:
    return {"ok": False, "status": status, "error": error}


class ControlServer:
    """The emulator's side: answers every request line, serving those that carry the right token."""

    def __init__(self, gateway, token: str, idle_timeout: float = CONTROL_IDLE_TIMEOUT_S):
        self.gateway = gateway
        self.token = token
        self.idle_timeout = idle_timeout
        self.server: asyncio.base_events.Server | None = None

    async def listen(self, host: str = "127.0.0.1") -> int:
        self.server = await asyncio.start_server(self._serve, host, 0, limit=CONTROL_MAX_LINE_BYTES)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), self.idle_timeout)
                except TimeoutError:
                    await self._last_answer(reader, writer, _refusal(408, self._timeout_text()))
                    return
                except (ValueError, asyncio.LimitOverrunError):
                    # readline() has dropped what it buffered; the rest of the line may still be arriving.
                    text = f"request line over {CONTROL_MAX_LINE_BYTES} bytes"
                    await self._last_answer(reader, writer, _refusal(413, text))
                    return
                if not line:
                    return
                if not line.endswith(b"\n"):
                    await self._last_answer(reader, writer, _refusal(400, "request line not ended by a newline"))
                    return
                await self._send(writer, await self._answer(line))
        except (ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()

    def _timeout_text(self) -> str:
        return f"no whole request line (ended by a newline) within {self.idle_timeout:g} s"

    async def _send(self, writer: asyncio.StreamWriter, answer: dict) -> None:
        writer.write(json.dumps(answer).encode() + b"\n")
        await asyncio.wait_for(writer.drain(), self.idle_timeout)  # a client that never reads is not waited for

    async def _last_answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answer: dict) -> None:
        """Answers, ends our side, and reads (discarding) what the client still sends for a while, so closing does
        not reset the connection before the client has read the answer."""
        await self._send(writer, answer)
        if writer.can_write_eof():
            writer.write_eof()
        try:
            async with asyncio.timeout(self.idle_timeout):
                while await reader.read(65536):
                    pass
        except (TimeoutError, ConnectionError):
            pass

    async def _answer(self, line: bytes) -> dict:
        try:
            request = json.loads(line)
        except (ValueError, RecursionError):
            return _refusal(400, "the request is not a JSON object on one line")
        if not isinstance(request, dict):
            return _refusal(400, "the request is not a JSON object on one line")
        token = request.get("token")
        if not isinstance(token, str) or not hmac.compare_digest(token.encode(), self.token.encode()):
            return _refusal(401, "not authorised (token from emulator.json required)")
        op, args = request.get("op"), request.get("args", {})
        if not isinstance(op, str):
            return _refusal(400, "op must be a string")
        if not isinstance(args, dict):
            return _refusal(400, "args must be a JSON object")
        try:
            return {"ok": True, "result": await perform(self.gateway, op, args)}
        except HubError as exc:
            return _refusal(exc.status, str(exc))
        except Exception:  # an emulator bug: logged with its traceback, and the client still gets an answer
            log.exception("control: %s failed", shown(op))
            return _refusal(500, f"the emulator failed on {shown(op)} (see its log)")

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
        try:
            line = json.dumps({"token": self.token, "op": op, "args": args}, allow_nan=False).encode() + b"\n"
        except (TypeError, ValueError, RecursionError) as exc:
            raise ServiceError(f"the request cannot be sent as JSON: {str(exc)[:80]}", status=400) from None
        if len(line) > CONTROL_MAX_LINE_BYTES:
            raise ServiceError(f"request of {len(line)} bytes, over the {CONTROL_MAX_LINE_BYTES}-byte limit", 413)
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
            reply = None
        if not isinstance(reply, dict) or ("result" not in reply and not isinstance(reply.get("status"), int)):
            raise ServiceError("the emulator's answer is not one it gives (is that port the control port?)")
        if not reply.get("ok"):
            raise ServiceError(str(reply.get("error") or "refused"), status=reply.get("status"))
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
