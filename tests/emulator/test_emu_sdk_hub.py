"""The official azure-iot-device SDK's IoTHubDeviceClient against the emulator's gateway: twin GET and reported
patch, desired patches, a direct method and a C2D message, also after the gateway dropped the connection (the SDK
reconnects with clean_session=0 and never subscribes again: the emulator keeps its subscriptions per client id).
The SDK reaches the emulator's ephemeral port through a forwarding proxy (see test_emu_real_peers.py)."""

import queue

import pytest

from host_tools.emulator.testing import TEST_HUB as HUB
from host_tools.emulator.testing import individual_key, wait_until

pytest.importorskip("azure.iot.device")
from azure.iot.device import IoTHubDeviceClient, MethodResponse, ProxyOptions  # noqa: E402

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning"),
]


def test_sdk_twin_desired_method_and_c2d(emu, enrollment_doc, proxy_factory):
    key = individual_key(enrollment_doc, "dev-1")
    proxy = proxy_factory(emu.gateway_port)
    client = IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=key,
        hostname=HUB,
        device_id="dev-1",
        gateway_hostname="localhost",
        server_verification_cert=emu.pki.trust_root_pem(),
        proxy_options=ProxyOptions("HTTP", "127.0.0.1", proxy.port),
        connection_retry_interval=1,
    )
    desired, messages, methods = queue.Queue(), queue.Queue(), queue.Queue()

    def on_method(request):
        methods.put((request.name, request.payload))
        client.send_method_response(MethodResponse.create_from_method_request(request, 200, {"ok": request.payload}))

    client.on_twin_desired_properties_patch_received = desired.put
    client.on_method_request_received = on_method
    client.on_message_received = messages.put
    try:
        client.connect()
        client.patch_twin_reported_properties({"fw": "1.1", "nested": {"a": 1}})
        twin = client.get_twin()
        assert twin["reported"]["fw"] == "1.1" and twin["reported"]["$version"] == 2
        assert emu.twin("dev-1")["reported"]["nested"] == {"a": 1}

        emu.set_desired("dev-1", {"telemetryIntervalSeconds": 5})
        assert desired.get(timeout=10) == {"telemetryIntervalSeconds": 5, "$version": 2}

        answer = emu.invoke_method("dev-1", "reboot", {"delay": 5}, timeout=10)
        assert answer == {"status": 200, "payload": {"ok": {"delay": 5}}}
        assert methods.get(timeout=5) == ("reboot", {"delay": 5})

        message_id = emu.send_c2d("dev-1", b'{"c2d": true}', {"colour": "red", "$.ct": "application/json"})
        received = messages.get(timeout=10)
        assert received.data == b'{"c2d": true}' and received.message_id == message_id
        assert received.custom_properties == {"colour": "red"} and received.content_type == "application/json"
        wait_until(lambda: any(r["event"] == "c2d_completed" for r in emu.hub_records("dev-1")), 5)

        # Dropped: the SDK reconnects (same client id, clean_session=0) without subscribing again.
        connections = emu.connections("gateway", "dev-1")
        emu.drop_gateway_connections()
        wait_until(lambda: emu.connections("gateway", "dev-1") > connections and client.connected, 20)
        answer = emu.invoke_method("dev-1", "again", timeout=10)
        assert answer["status"] == 200 and methods.get(timeout=5) == ("again", None)
        emu.send_c2d("dev-1", b"second")
        assert messages.get(timeout=10).data == b"second"
    finally:
        client.shutdown()
