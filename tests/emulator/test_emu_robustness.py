"""A misbehaving client must never crash the server: seeded mutations of valid packets, on both endpoints."""

import random
import socket

import pytest

from host_tools.emulator import mqtt_codec as mqtt
from host_tools.emulator.rawclient import RawMqttClient
from host_tools.emulator.testing import TEST_HUB, connect_dps, connect_gateway, dps_token, register_raw

pytestmark = pytest.mark.timeout(60)

SEEDS = [
    mqtt.encode(p)
    for p in [
        mqtt.Publish(
            "$dps/registrations/PUT/iotdps-register/?$rid=1", b'{"registrationId":"dev-1"}', qos=1, packet_id=1
        ),
        mqtt.Publish("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=1&operationId=x", b"", qos=0),
        mqtt.Subscribe(1, [("$dps/registrations/res/#", 1)]),
        mqtt.Unsubscribe(2, ["a"]),
        mqtt.PingReq(),
        mqtt.Publish("devices/dev-1/messages/events/a=b&%zz=%", b"x", qos=1, packet_id=3),
        mqtt.Publish("$iothub/twin/PATCH/properties/reported/?$rid=1", b"[1]", qos=1, packet_id=4),
        mqtt.Publish("$iothub/twin/GET/?$rid=1", b"", qos=0),
        mqtt.PubAck(5),
        mqtt.Disconnect(),
    ]
]


def mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        if choice < 0.4 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif choice < 0.7:
            data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
        elif data:
            del data[rng.randrange(len(data))]
    return bytes(data)


def drain(client: RawMqttClient) -> None:
    client.sock.settimeout(0.1)
    try:
        while client.sock.recv(4096):
            pass
    except (OSError, ValueError):
        pass


def test_fuzzed_packets_never_cause_internal_errors(emu, key):
    rng = random.Random(20240521)
    for i in range(80):
        client = connect_gateway(emu, "dev-1", key, TEST_HUB) if i % 2 else connect_dps(emu, "dev-1", key)
        with client:
            burst = b"".join(
                mutate(rng, rng.choice(SEEDS)) if rng.random() < 0.7 else rng.choice(SEEDS)
                for _ in range(rng.randint(1, 5))
            )
            try:
                client.send_raw(burst)
            except OSError:
                pass
            drain(client)
    connect_packet = mqtt.encode(
        mqtt.Connect(
            "dev-1",
            username=f"{emu.id_scope}/registrations/dev-1/api-version=2019-03-31",
            password=dps_token(emu, "dev-1", key).encode(),
        )
    )
    for i in range(40):
        port, ca = (emu.gateway_port, emu.pki.trust_root) if i % 2 else (emu.dps_port, emu.pki.dps_root)
        with RawMqttClient("127.0.0.1", port, ca_file=ca) as client:
            try:
                client.send_raw(mutate(rng, connect_packet))
            except OSError:
                pass
            drain(client)
    # Plain TCP without TLS, then silence: counted as TLS failures, nothing else.
    for port in (emu.dps_port, emu.gateway_port):
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.sendall(b"\x10\x00garbage")
    stats = emu.stats
    assert stats["dps"].get("internal_errors", 0) == 0 and stats["gateway"].get("internal_errors", 0) == 0
    with connect_dps(emu, "dev-1", key) as client:  # still serving
        assert register_raw(client, "dev-1")[0] == 200
