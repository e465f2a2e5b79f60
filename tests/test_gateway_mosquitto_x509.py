"""The firmware's gateway leg over mutual TLS against Mosquitto (`require_certificate true`): an independent TLS peer
that verifies the device certificate chain (device certificate + intermediate) against the manufacturer's root and
takes the identity from the certificate. The device registered with the emulator's DPS using the same files."""

from __future__ import annotations

import json
import ssl
import threading
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from host_tools.provisioning import pki
from tests.helpers import HUB, enrollment_doc
from tests.test_gateway_mosquitto import MOSQUITTO, Mosquitto
from tests.test_x509 import x509_device, x509_group, x509_individual

pytestmark = pytest.mark.skipif(not Path(MOSQUITTO).exists(), reason="mosquitto is installed by `make test`")


class MutualTlsMosquitto(Mosquitto):
    def __init__(self, folder: Path, server: pki.Issued, client_ca: Path):
        super().__init__(folder, server)
        with open(folder / "mosquitto.conf", "a") as conf:
            conf.write(f"cafile {client_ca}\nrequire_certificate true\nuse_identity_as_username true\n")
        # The user name is the certificate's CN: the observer reads all telemetry, and a device may publish only under
        # the id its certificate names (as IoT Hub ties an X.509 device's topics to its identity).
        (folder / "acl").write_text("user observer\ntopic read devices/#\npattern write devices/%u/messages/events/#\n")


def _observer(port: int, trust_root: Path, cert: Path, key: Path, received: list, ready: threading.Event):
    client = paho.Client(client_id="observer", protocol=paho.MQTTv311)
    client.tls_set(ca_certs=str(trust_root), certfile=str(cert), keyfile=str(key), cert_reqs=ssl.CERT_REQUIRED)
    client.on_connect = lambda c, *_: (c.subscribe("devices/#", qos=1), ready.set())
    client.on_message = lambda c, u, msg: received.append((msg.topic, msg.payload))
    client.connect("localhost", port)
    return client


def _broker(emu, tmp_path, group_ca) -> MutualTlsMosquitto:
    edge_ca = pki.load_issued(emu.info["pki"]["edge_ca"], emu.info["pki"]["edge_ca_key"])
    return MutualTlsMosquitto(tmp_path / "mosquitto", pki.make_server_cert(edge_ca, ["localhost"]), group_ca.root)


def test_telemetry_over_mutual_tls_to_mosquitto(emulator, device, tmp_path):
    group_ca = pki.ensure_x509_group_ca(tmp_path / "ca")
    cert, key = pki.issue_device(group_ca, "mtls-dev", tmp_path)
    observer_cert, observer_key = pki.issue_device(group_ca, "observer", tmp_path)
    emu = emulator(enrollment_doc(groups=[x509_group("factory", group_ca.root)]))
    broker = _broker(emu, tmp_path, group_ca)
    dev = x509_device(device, emu, "mtls-dev", cert, key, gateway_host="localhost", gateway_port=broker.port)
    received: list = []
    ready = threading.Event()
    with broker:
        observer = _observer(
            broker.port, Path(emu.info["pki"]["trust_root"]), observer_cert, observer_key, received, ready
        )
        observer.loop_start()
        assert ready.wait(10)
        result = dev.run_telemetry_only()
        observer.loop_stop()
        observer.disconnect()
    assert result.status == 0, result.output
    assert result.event("registered")["hub"] == HUB
    assert result.event("gateway_verified")["port"] == str(broker.port)
    assert result.event("telemetry_acknowledged")
    assert received and received[0][0].startswith("devices/mtls-dev/messages/events/")
    assert json.loads(received[0][1])["registrationId"] == "mtls-dev"


def test_mosquitto_refuses_a_certificate_of_another_ca(emulator, device, tmp_path):
    group_ca = pki.ensure_x509_group_ca(tmp_path / "ca")
    stranger_ca = pki.ensure_x509_group_ca(tmp_path / "stranger")
    cert, key = pki.issue_device(stranger_ca, "mtls-stranger", tmp_path)
    # DPS knows this device (an individual enrollment of its certificate); the broker trusts only group_ca.
    emu = emulator(enrollment_doc([x509_individual("mtls-stranger", certificate=str(cert))]))
    broker = _broker(emu, tmp_path, group_ca)
    dev = x509_device(device, emu, "mtls-stranger", cert, key, gateway_host="localhost", gateway_port=broker.port)
    with broker:
        result = dev.run_telemetry_only()
    assert result.status == 1, result.output
    assert result.event("registered")
    assert result.error["kind"] == "authentication", result.output
    assert not result.event("telemetry_acknowledged")
