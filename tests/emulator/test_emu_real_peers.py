"""Real peers: the official azure-iot-device 2.14 SDK and a bare paho-mqtt 1.6.1 client against the emulator.

The SDK hard-codes port 8883 (azure/iot/device/common/mqtt_transport.py: `connect(host=..., port=8883)`), so it
reaches the emulator's ephemeral ports through its supported `proxy_options` and a local HTTP CONNECT proxy
(host_tools.emulator.testing.ForwardingProxy). TLS runs end to end: the SDK verifies `localhost` against the
DPS root, and the gateway against the trust root only.
"""

import json
import ssl
import threading

import paho.mqtt.client as paho
import pytest

from host_tools.emulator import derive_device_key
from host_tools.emulator.testing import TEST_HUB as HUB
from host_tools.emulator.testing import dps_token, individual_key

sdk = pytest.importorskip("azure.iot.device")
from azure.iot.device import IoTHubDeviceClient, Message, ProvisioningDeviceClient, ProxyOptions  # noqa: E402
from azure.iot.device.exceptions import ClientError  # noqa: E402

pytestmark = [
    pytest.mark.timeout(60),
    # The SDK's own TLS set-up (not ours) uses the deprecated ssl.PROTOCOL_TLSv1_2 constant.
    pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning"),
]


def sdk_register(emu, proxy_factory, registration_id, key):
    proxy = proxy_factory(emu.dps_port)
    client = ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host="localhost",
        registration_id=registration_id,
        id_scope=emu.id_scope,
        symmetric_key=key,
        server_verification_cert=emu.pki.dps_root_pem(),
        proxy_options=ProxyOptions("HTTP", "127.0.0.1", proxy.port),
    )
    return client.register(), proxy  # register() disconnects when done; this client has no shutdown()


def test_sdk_individual_enrollment_then_telemetry_through_the_gateway(emu, enrollment_doc, proxy_factory):
    key = individual_key(enrollment_doc, "dev-1")
    result, dps_proxy = sdk_register(emu, proxy_factory, "dev-1", key)
    assert result.status == "assigned"
    assert result.registration_state.assigned_hub == HUB and result.registration_state.device_id == "dev-1"
    assert dps_proxy.requests == ["CONNECT localhost:8883 HTTP/1.1"]
    record = emu.registrations("dev-1")[-1]
    # The SDK's user name asks for api-version 2019-03-31, so no trust bundle is handed out to it.
    assert record["api_version"] == "2019-03-31" and record["trust_bundle"] is None

    gateway_proxy = proxy_factory(emu.gateway_port)
    hub_client = IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=key,
        hostname=result.registration_state.assigned_hub,
        device_id=result.registration_state.device_id,
        gateway_hostname="localhost",
        server_verification_cert=emu.pki.trust_root_pem(),  # trusts ONLY the trust root
        proxy_options=ProxyOptions("HTTP", "127.0.0.1", gateway_proxy.port),
    )
    try:
        hub_client.connect()
        message = Message('{"temperature": 21.5}', content_encoding="utf-8", content_type="application/json")
        message.custom_properties["unit"] = "°C / x&y=z"
        message.custom_properties["site"] = "lab 1"
        hub_client.send_message(message)
    finally:
        hub_client.shutdown()
    (telemetry,) = emu.wait_for_telemetry(1)
    assert telemetry["device_id"] == "dev-1" and telemetry["hub"] == HUB and telemetry["qos"] == 1
    assert telemetry["payload"] == '{"temperature": 21.5}'
    assert "%24.ct=" in telemetry["topic"]  # the SDK percent-encodes `$` too
    assert telemetry["properties"] == {
        "$.ct": "application/json",
        "$.ce": "utf-8",
        "unit": "°C / x&y=z",
        "site": "lab 1",
    }
    assert emu.connections("dps", "dev-1") == 1 and emu.connections("gateway", "dev-1") == 1


def test_sdk_group_enrollment(emu, enrollment_doc, proxy_factory):
    device_key = derive_device_key(enrollment_doc["groups"][0]["group_key"], "sdk-fleet-1")
    result, _ = sdk_register(emu, proxy_factory, "sdk-fleet-1", device_key)
    assert result.status == "assigned" and result.registration_state.device_id == "sdk-fleet-1"
    assert emu.registrations("sdk-fleet-1")[-1]["enrollment"] == "group:fleet"


def test_sdk_wrong_key_is_refused(emu, enrollment_doc, proxy_factory):
    # 401 is final for the SDK (no retry): it raises at once ("register request returned ... 401").
    with pytest.raises(ClientError) as info:
        sdk_register(emu, proxy_factory, "dev-1", individual_key(enrollment_doc, "dev-2"))
    assert "401" in str(info.value.__cause__)
    assert emu.registrations("dev-1")[-1]["http_status"] == 401


def test_paho_client_registers_with_qos0(emu, enrollment_doc):
    """paho as an independent MQTT implementation: QoS 0 register, QoS 1 subscription, TLS verified."""
    key = individual_key(enrollment_doc, "dev-2")
    answers, done = [], threading.Event()
    client = paho.Client(client_id="dev-2", protocol=paho.MQTTv311, clean_session=True)
    client.username_pw_set(
        f"{emu.id_scope}/registrations/dev-2/api-version=2021-11-01-preview", dps_token(emu, "dev-2", key)
    )
    client.tls_set_context(ssl.create_default_context(cafile=str(emu.pki.dps_root)))

    def on_connect(c, userdata, flags, rc):
        c.subscribe("$dps/registrations/res/#", qos=1)

    def on_subscribe(c, userdata, mid, granted):
        c.publish("$dps/registrations/PUT/iotdps-register/?$rid=p1", json.dumps({"registrationId": "dev-2"}), qos=0)

    def on_message(c, userdata, message):
        body = json.loads(message.payload)
        answers.append((message.topic, body))
        if body.get("status") == "assigning":
            c.publish(
                f"$dps/registrations/GET/iotdps-get-operationstatus/?$rid=p2&operationId={body['operationId']}",
                b"",
                qos=0,
            )
        else:
            done.set()

    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    client.connect("localhost", emu.dps_port, keepalive=30)
    client.loop_start()
    try:
        assert done.wait(10)
    finally:
        client.disconnect()
        client.loop_stop()
    assert [topic.split("/")[3] for topic, _ in answers] == ["202", "200"]
    state = answers[-1][1]["registrationState"]
    assert state["deviceId"] == "dev-2" and state["trustBundle"]["id"] == "edge"


def test_sdk_registers_under_the_preview_api_version(emu, enrollment_doc, proxy_factory, monkeypatch):
    # The SDK reads its DPS api-version from azure.iot.device.constant at each CONNECT: under the preview version
    # the firmware uses, the emulator answers the official client too, trust bundle included.
    from azure.iot.device import constant

    monkeypatch.setattr(constant, "PROVISIONING_API_VERSION", "2021-11-01-preview")
    key = individual_key(enrollment_doc, "dev-1")
    result, _ = sdk_register(emu, proxy_factory, "dev-1", key)
    assert result.status == "assigned"
    assert result.registration_state.assigned_hub == HUB and result.registration_state.device_id == "dev-1"
    record = emu.registrations("dev-1")[-1]
    assert record["api_version"] == "2021-11-01-preview"
    assert record["trust_bundle"] and record["trust_bundle"]["certificates"]
