"""A blocking MQTT-over-TLS client built on the codec, for tests that need to see exactly what the emulator
sends (a half-sent packet, a closed connection, parameter order in a topic), which full clients hide.

    with RawMqttClient("127.0.0.1", emu.dps_port, ca_file=emu.pki.dps_root) as c:
        assert c.connect(regid, dps_username(scope, regid), token) == 0
        c.subscribe("$dps/registrations/res/#")
        c.publish(register_topic("1"), b'{"registrationId": "..."}', qos=1)
        response = c.wait_publish()
"""

from __future__ import annotations

import json
import socket
import ssl
import time

from host_tools.emulator import mqtt_codec as mqtt

PREVIEW_API = "2021-11-01-preview"
GENERAL_API = "2019-03-31"


class ConnectionClosed(ConnectionError):
    """The server closed the connection. `partial` is how many bytes of an unfinished packet were pending."""

    def __init__(self, message: str, partial: int = 0):
        super().__init__(message)
        self.partial = partial


def dps_username(
    id_scope: str, registration_id: str, api_version: str = PREVIEW_API, client_version: str | None = None
) -> str:
    username = f"{id_scope}/registrations/{registration_id}/api-version={api_version}"
    return username + (f"&ClientVersion={client_version}" if client_version else "")


def hub_username(hub: str, device_id: str, api_version: str = "2021-04-12", form: str = "/?") -> str:
    return f"{hub}/{device_id}{form}api-version={api_version}"


def register_topic(rid: str) -> str:
    return f"$dps/registrations/PUT/iotdps-register/?$rid={rid}"


def poll_topic(rid: str, operation_id: str) -> str:
    return f"$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={operation_id}"


def response_status(topic: str) -> int:
    """`$dps/registrations/res/202/?...` -> 202."""
    return int(topic.split("/")[3])


def topic_params(topic: str) -> dict[str, str]:
    query = topic.partition("?")[2]
    return dict(part.partition("=")[::2] for part in query.split("&") if part)


class RawMqttClient:
    def __init__(
        self,
        host: str,
        port: int,
        ca_file=None,
        server_hostname: str = "localhost",
        timeout: float = 5.0,
        cadata: str | None = None,
        client_cert: tuple | None = None,
    ):
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None, cadata=cadata)
        if client_cert is not None:  # (certificate chain file, key file): an X.509 device
            context.load_cert_chain(str(client_cert[0]), str(client_cert[1]))
        raw = socket.create_connection((host, port), timeout=timeout)
        try:
            self.sock = context.wrap_socket(raw, server_hostname=server_hostname)
        except BaseException:
            raw.close()
            raise
        self.timeout = timeout
        self.reader = mqtt.PacketReader()
        self._packet_id = 0
        self.closed = False

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass

    def next_packet_id(self) -> int:
        self._packet_id = self._packet_id % 0xFFFF + 1
        return self._packet_id

    # --- bytes

    def send(self, packet: mqtt.Packet) -> None:
        self.send_raw(mqtt.encode(packet))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self, timeout: float | None = None, auto_ack: bool = True) -> mqtt.Packet:
        """The next packet. Raises TimeoutError, or ConnectionClosed when the server closes the connection."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            packet = self.reader.next_packet()
            if packet is not None:
                if auto_ack and isinstance(packet, mqtt.Publish) and packet.qos == 1:
                    self.send(mqtt.PubAck(packet.packet_id))
                return packet
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no packet from the server in time")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise TimeoutError("no packet from the server in time") from None
            except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as exc:
                raise ConnectionClosed(f"connection lost: {exc}", self.reader.buffered) from exc
            if not data:
                raise ConnectionClosed("server closed the connection", self.reader.buffered)
            self.reader.feed(data)

    def wait_closed(self, timeout: float | None = None) -> bool:
        """True if the server closes the connection within the timeout (packets before that are discarded)."""
        try:
            while True:
                self.receive(timeout)
        except ConnectionClosed:
            return True
        except TimeoutError:
            return False

    # --- MQTT

    def connect(
        self,
        client_id: str,
        username: str | None,
        password: str | bytes | None,
        keepalive: int = 60,
        clean_session: bool = True,
        protocol_level: int = 4,
    ) -> int:
        """Send CONNECT; return the CONNACK return code."""
        if isinstance(password, str):
            password = password.encode("utf-8")
        self.send(
            mqtt.Connect(
                client_id=client_id,
                username=username,
                password=password,
                keepalive=keepalive,
                clean_session=clean_session,
                protocol_level=protocol_level,
            )
        )
        packet = self.receive()
        if not isinstance(packet, mqtt.ConnAck):
            raise AssertionError(f"expected CONNACK, got {packet!r}")
        return packet.return_code

    def subscribe(self, topic_filter: str = "$dps/registrations/res/#", qos: int = 1) -> list[int]:
        packet_id = self.next_packet_id()
        self.send(mqtt.Subscribe(packet_id, [(topic_filter, qos)]))
        packet = self.receive()
        if not isinstance(packet, mqtt.SubAck) or packet.packet_id != packet_id:
            raise AssertionError(f"expected SUBACK {packet_id}, got {packet!r}")
        return packet.return_codes

    def publish(self, topic: str, payload: bytes | str | dict = b"", qos: int = 0, wait_ack: bool = True) -> int | None:
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        packet_id = self.next_packet_id() if qos else None
        self.send(mqtt.Publish(topic=topic, payload=payload, qos=qos, packet_id=packet_id))
        if qos == 1 and wait_ack:
            packet = self.receive()
            if not isinstance(packet, mqtt.PubAck) or packet.packet_id != packet_id:
                raise AssertionError(f"expected PUBACK {packet_id}, got {packet!r}")
        return packet_id

    def wait_publish(self, timeout: float | None = None) -> mqtt.Publish:
        """The next PUBLISH from the server (other packets are skipped)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            packet = self.receive(max(0.01, deadline - time.monotonic()))
            if isinstance(packet, mqtt.Publish):
                return packet

    def ping(self) -> None:
        self.send(mqtt.PingReq())
        packet = self.receive()
        if not isinstance(packet, mqtt.PingResp):
            raise AssertionError(f"expected PINGRESP, got {packet!r}")

    def disconnect(self) -> None:
        try:
            self.send(mqtt.Disconnect())
        finally:
            self.close()

    # --- DPS convenience

    def dps_request(self, topic: str, body=b"", qos: int = 1, timeout: float | None = None) -> tuple[int, dict, dict]:
        """Publish a DPS request; return (status, topic params, JSON body or {'_raw': bytes} if not JSON)."""
        self.publish(topic, body, qos=qos)
        response = self.wait_publish(timeout)
        try:
            payload = json.loads(response.payload) if response.payload else {}
        except ValueError:
            payload = {"_raw": response.payload}
        return response_status(response.topic), topic_params(response.topic), payload
