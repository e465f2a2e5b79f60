"""The firmware's gateway leg against a real MQTT broker (Debian's Mosquitto) serving TLS with a certificate chained to
the root the emulator's DPS hands out as the trust bundle. Mosquitto is an independent TLS/MQTT peer: if the device
verifies it and gets its QoS 1 telemetry acknowledged, the leg does not depend on our own emulator's quirks.

The broker runs with an ACL in the spirit of IoT Hub's own rule (a device publishes telemetry only under its own id):
`pattern write devices/%c/messages/events/#`, so it delivers the device's telemetry only if the client id the
firmware connects with is the device id in its topic. Mosquitto serves no twin or direct methods, so the device runs
the telemetry-only flow (`azprov.supervisor.main(hub_features=False)`)."""

from __future__ import annotations

import getpass
import json
import shutil
import ssl
import subprocess
import threading
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from host_tools.provisioning import pki
from tests.helpers import enrollment_doc, free_port, individual, new_key, wait_for_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
pytestmark = pytest.mark.skipif(not Path(MOSQUITTO).exists(), reason="mosquitto is installed by `make test`")


class Mosquitto:
    def __init__(self, folder: Path, server: pki.Issued):
        self.folder = folder
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "acl").write_text(
            # Clients without a user name (the test's observer) may read all telemetry; every client may publish
            # telemetry only on the topic of its own client id.
            "topic read devices/#\npattern write devices/%c/messages/events/#\n"
        )
        pki.write_issued(server, folder / "server.pem", folder / "server-key.pem", with_chain=True)
        (folder / "mosquitto.conf").write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"certfile {folder / 'server.pem'}\n"
            f"keyfile {folder / 'server-key.pem'}\n"
            "tls_version tlsv1.2\n"
            "allow_anonymous true\n"
            f"acl_file {folder / 'acl'}\n"
            "persistence false\n"
            # Mosquitto started as root drops to a `mosquitto` user that cannot read our 0600 test key.
            f"user {getpass.getuser()}\n"
        )

    def __enter__(self):
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.folder / "mosquitto.conf")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            wait_for_port(self.port)
        except TimeoutError:
            self.proc.kill()
            raise AssertionError("mosquitto did not start:\n" + self.proc.communicate()[0]) from None
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(timeout=10)


def _subscriber(port: int, trust_root: Path, received: list, ready: threading.Event):
    client = paho.Client(client_id="observer", protocol=paho.MQTTv311)
    client.tls_set(ca_certs=str(trust_root), cert_reqs=ssl.CERT_REQUIRED)
    client.on_connect = lambda c, *_: (c.subscribe("devices/#", qos=1), ready.set())
    client.on_message = lambda c, u, msg: received.append((msg.topic, msg.payload))
    client.connect("localhost", port)
    return client


def _setup(emulator, device, tmp_path, server_for):
    key = new_key()
    emu = emulator(enrollment_doc([individual("mqtt-dev", key)]))
    edge_ca = pki.load_issued(emu.info["pki"]["edge_ca"], emu.info["pki"]["edge_ca_key"])
    broker = Mosquitto(tmp_path / "mosquitto", server_for(edge_ca))
    dev = device(emu, "mqtt-dev", key, gateway_host="localhost", gateway_port=broker.port)
    return emu, broker, dev


def test_telemetry_acknowledged_by_mosquitto_behind_trust_bundle(emulator, device, tmp_path):
    emu, broker, dev = _setup(emulator, device, tmp_path, lambda ca: pki.make_server_cert(ca, ["localhost"]))
    received: list = []
    ready = threading.Event()
    with broker:
        observer = _subscriber(broker.port, Path(emu.info["pki"]["trust_root"]), received, ready)
        observer.loop_start()
        assert ready.wait(10)
        result = dev.run_telemetry_only()
        observer.loop_stop()
        observer.disconnect()
    assert result.status == 0, result.output
    assert result.event("gateway_verified")["port"] == str(broker.port)
    assert result.event("telemetry_acknowledged")
    topics = [t for t, _ in received]
    assert topics and topics[0].startswith("devices/mqtt-dev/messages/events/")
    assert json.loads(received[0][1])["registrationId"] == "mqtt-dev"


def test_broker_certificate_for_another_host_is_refused(emulator, device, tmp_path):
    _, broker, dev = _setup(
        emulator, device, tmp_path, lambda ca: pki.make_server_cert(ca, ["not-the-gateway.example"])
    )
    with broker:
        result = dev.run_telemetry_only()
    assert result.status == 1
    assert result.event("registered")
    assert result.error["kind"] == "tls_verification"
    assert not result.event("telemetry_acknowledged")


def test_broker_certificate_from_another_root_is_refused(emulator, device, tmp_path):
    _, broker, dev = _setup(
        emulator,
        device,
        tmp_path,
        lambda ca: pki.make_server_cert(pki.make_intermediate(pki.make_root()), ["localhost"]),
    )
    with broker:
        result = dev.run_telemetry_only()
    assert result.status == 1
    assert result.error["kind"] == "tls_verification"


def test_broker_acl_refuses_telemetry_under_another_device_id(emulator, device, tmp_path):
    # The ACL is live: the same client publishing under its own id is delivered, under another id it is not.
    emu, broker, _ = _setup(emulator, device, tmp_path, lambda ca: pki.make_server_cert(ca, ["localhost"]))
    trust_root = Path(emu.info["pki"]["trust_root"])
    received: list = []
    ready = threading.Event()
    with broker:
        observer = _subscriber(broker.port, trust_root, received, ready)
        observer.loop_start()
        assert ready.wait(10)
        sender = paho.Client(client_id="mqtt-dev", protocol=paho.MQTTv311)
        sender.username_pw_set("test-hub.azure-devices.net/mqtt-dev/?api-version=2021-04-12", "not checked")
        sender.tls_set(ca_certs=str(trust_root), cert_reqs=ssl.CERT_REQUIRED)
        sender.connect("localhost", broker.port)
        sender.loop_start()
        foreign = sender.publish("devices/other-dev/messages/events/", b'{"n": 1}', qos=1)
        own = sender.publish("devices/mqtt-dev/messages/events/", b'{"n": 2}', qos=1)
        foreign.wait_for_publish(10)
        own.wait_for_publish(10)
        deadline = threading.Event()
        for _ in range(50):
            if received:
                break
            deadline.wait(0.1)
        deadline.wait(0.5)  # time for a wrongly delivered message to arrive too
        sender.loop_stop()
        sender.disconnect()
        observer.loop_stop()
        observer.disconnect()
    assert [t for t, _ in received] == ["devices/mqtt-dev/messages/events/"]
