"""Helpers for tests that drive the emulator: tokens, connected raw clients, a DPS flow, and a forwarding proxy
that lets the official Azure SDK (which always dials port 8883) reach an emulator on an ephemeral port.

Kept in the package rather than in a conftest so any test folder can import them whatever pytest's import mode.
"""

from __future__ import annotations

import socket
import threading
import time

from host_tools.emulator.rawclient import (
    PREVIEW_API,
    RawMqttClient,
    dps_username,
    hub_username,
    poll_topic,
    register_topic,
)
from host_tools.emulator.sas import generate_sas_token

TEST_HUB = "test-hub.azure-devices.net"


def individual_key(document: dict, registration_id: str) -> str:
    """The symmetric key of an individual enrollment in an enrollment document."""
    return next(e["symmetric_key"] for e in document["individual"] if e["registration_id"] == registration_id)


def wait_until(condition, timeout: float = 3.0, interval: float = 0.02) -> None:
    """Poll `condition()` until true; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def dps_token(emu, registration_id: str, key: str, ttl: int = 300, skn: str | None = "registration", **kwargs) -> str:
    return generate_sas_token(
        f"{emu.id_scope}/registrations/{registration_id}", key, int(time.time()) + ttl, skn, **kwargs
    )


def hub_token(hub: str, device_id: str, key: str, ttl: int = 300, expiry: int | None = None) -> str:
    return generate_sas_token(f"{hub}/devices/{device_id}", key, expiry or int(time.time()) + ttl)


def connect_dps(
    emu,
    registration_id: str,
    key: str,
    api_version: str = PREVIEW_API,
    subscribe: bool = True,
    token: str | None = None,
) -> RawMqttClient:
    """A raw client connected to the emulator's DPS (CONNACK 0 asserted) and subscribed to the answers."""
    client = RawMqttClient(emu.host, emu.dps_port, ca_file=emu.pki.dps_root)
    try:
        code = client.connect(
            registration_id,
            dps_username(emu.id_scope, registration_id, api_version),
            token or dps_token(emu, registration_id, key),
        )
        assert code == 0, f"DPS CONNACK {code}"
        if subscribe:
            assert client.subscribe() == [1]
    except BaseException:
        client.close()
        raise
    return client


def connect_gateway(
    emu, device_id: str, key: str, hub: str, token: str | None = None, expect: int = 0
) -> RawMqttClient:
    """A raw client connected to the emulator's gateway, trusting only the trust root."""
    client = RawMqttClient(emu.host, emu.gateway_port, ca_file=emu.pki.trust_root)
    try:
        code = client.connect(device_id, hub_username(hub, device_id), token or hub_token(hub, device_id, key))
        assert code == expect, f"gateway CONNACK {code}, expected {expect}"
    except BaseException:
        client.close()
        raise
    return client


def register_raw(
    client: RawMqttClient, registration_id: str, body=None, qos: int = 1, rid: str = "1"
) -> tuple[int, dict]:
    """Register and poll until the final answer; returns (status, body) of the final answer."""
    body = {"registrationId": registration_id, "payload": None} if body is None else body
    status, params, answer = client.dps_request(register_topic(rid), body, qos=qos)
    assert params["$rid"] == rid, params
    polls = 0
    while status == 202:
        polls += 1
        status, params, answer = client.dps_request(poll_topic(f"{rid}.{polls}", answer["operationId"]), b"", qos=qos)
        assert params["$rid"] == f"{rid}.{polls}", params
    return status, answer


def control_exchange(port: int, data: bytes, timeout: float = 10, half_close: bool = False) -> bytes:
    """Sends raw bytes to an emulator's control port and returns what comes back: up to the first newline, or
    everything until the emulator closes (b"" if it answered nothing). `half_close` ends our side after sending."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the emulator may answer and stop reading before all was sent: its answer is still read below
        answer = b""
        while not answer.endswith(b"\n"):
            try:
                chunk = sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            answer += chunk
        return answer


class ForwardingProxy:
    """An HTTP CONNECT proxy that sends every tunnel to one fixed address.

    azure-iot-device 2.14 always dials port 8883 (hard-coded in azure/iot/device/common/mqtt_transport.py),
    but supports `proxy_options`. Through this proxy its `localhost:8883` reaches the emulator's port while TLS,
    including the host name check, still runs end to end between the SDK and the emulator:

        proxy = ForwardingProxy(emu.dps_port)
        ProvisioningDeviceClient.create_from_symmetric_key(..., provisioning_host="localhost",
            proxy_options=ProxyOptions("HTTP", "127.0.0.1", proxy.port))
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests: list[str] = []  # request lines seen, e.g. "CONNECT localhost:8883 HTTP/1.1"
        self._closed = False
        threading.Thread(target=self._accept_loop, name="forwarding-proxy", daemon=True).start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._tunnel, args=(client,), daemon=True).start()

    def _tunnel(self, client: socket.socket) -> None:
        try:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = client.recv(4096)
                if not chunk or len(request) > 16384:
                    client.close()
                    return
                request += chunk
            self.requests.append(request.split(b"\r\n", 1)[0].decode("latin-1"))
            upstream = socket.create_connection(self.target, timeout=10)
            upstream.settimeout(None)
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=pump, args=(source, sink), daemon=True).start()
        except OSError:
            client.close()

    def close(self) -> None:
        self._closed = True
        self.listener.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def pump(source: socket.socket, sink: socket.socket) -> None:
    """Copies bytes from source to sink until either side closes, then shuts both down (a relay's one direction)."""
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
