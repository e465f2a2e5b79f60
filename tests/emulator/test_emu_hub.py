"""The emulator's IoT Hub service side: twins (kept across runs), direct methods, C2D, kept sessions, the service
API (in process and over the control port) and the `azprov emulator invoke-method / send-c2d / twin` commands."""

from __future__ import annotations

import json
import threading

import pytest
from click.testing import CliRunner

from host_tools.cli import main as cli
from host_tools.emulator.control import ServiceClient, ServiceError
from host_tools.emulator.rawclient import RawMqttClient, hub_username
from host_tools.emulator.testing import TEST_HUB as HUB
from host_tools.emulator.testing import connect_gateway, hub_token, wait_until

DESIRED = "$iothub/twin/PATCH/properties/desired/#"
METHODS = "$iothub/methods/POST/#"
C2D = "devices/dev-1/messages/devicebound/#"


def _in_thread(function, *args, **kwargs):
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", function(*args, **kwargs)), daemon=True)
    thread.start()
    return thread, result


def test_desired_patch_reaches_a_subscribed_device_at_qos0_and_the_twin_is_kept(make_emulator, state_dir, key):
    emu = make_emulator()
    with connect_gateway(emu, "dev-1", key, HUB) as client:
        assert client.subscribe(DESIRED) == [1]
        twin = emu.set_desired("dev-1", {"telemetryIntervalSeconds": 5, "nested": {"a": 1}})
        assert twin["desired"] == {"telemetryIntervalSeconds": 5, "nested": {"a": 1}, "$version": 2}
        message = client.wait_publish()
        assert message.topic == "$iothub/twin/PATCH/properties/desired/?$version=2" and message.qos == 0
        assert json.loads(message.payload) == {"telemetryIntervalSeconds": 5, "nested": {"a": 1}, "$version": 2}
        emu.set_desired("dev-1", {"nested": None})
        assert json.loads(client.wait_publish().payload) == {"nested": None, "$version": 3}
        client.subscribe("$iothub/twin/res/#", qos=1)
        client.publish("$iothub/twin/PATCH/properties/reported/?$rid=r1", {"fw": "1.0"}, qos=1)
        answer = client.wait_publish()
        assert answer.topic == "$iothub/twin/res/204/?$rid=r1&$version=2" and answer.qos == 0
    events = [r["event"] for r in emu.hub_records("dev-1")]
    assert events.count("desired_patch") == 2 and events.count("desired_sent") == 2 and "reported_patch" in events
    emu.stop()
    # A new run in the same state folder has the same twin.
    emu = make_emulator()
    assert emu.twin("dev-1") == {
        "desired": {"telemetryIntervalSeconds": 5, "$version": 3},
        "reported": {"fw": "1.0", "$version": 2},
    }
    assert json.loads((state_dir / "twins.json").read_text())["dev-1"]["desired"]["$version"] == 3


def test_direct_method_round_trip_offline_and_timeout(make_emulator, key):
    emu = make_emulator()
    assert emu.invoke_method("dev-1", "ping", {"n": 1}, timeout=1)["status"] == 404  # not connected
    with connect_gateway(emu, "dev-1", key, HUB) as client:
        assert emu.invoke_method("dev-1", "ping", timeout=1)["status"] == 404  # connected, not subscribed
        client.subscribe(METHODS)
        thread, result = _in_thread(emu.invoke_method, "dev-1", "ping", {"n": 1}, timeout=5)
        request = client.wait_publish()
        assert request.qos == 0 and request.topic.startswith("$iothub/methods/POST/ping/?$rid=")
        assert json.loads(request.payload) == {"n": 1}
        rid = request.topic.rsplit("=", 1)[1]
        client.publish(f"$iothub/methods/res/201/?$rid={rid}", {"pong": {"n": 1}}, qos=1)
        thread.join(5)
        assert result["value"] == {"status": 201, "payload": {"pong": {"n": 1}}}
        assert emu.invoke_method("dev-1", "slow", timeout=0.3)["status"] == 504  # never answered
    events = [r["event"] for r in emu.hub_records("dev-1")]
    assert "method_answered" in events and "method_timeout" in events and "method_device_offline" in events


def test_c2d_with_properties_redelivered_until_acknowledged(make_emulator, key):
    emu = make_emulator()
    message_id = emu.send_c2d("dev-1", b'{"c2d": true}', {"colour": "red", "with space": "a&b"})
    with connect_gateway(emu, "dev-1", key, HUB) as client:
        client.subscribe(C2D)
        delivered = client.receive(auto_ack=False)
        assert delivered.qos == 1 and delivered.payload == b'{"c2d": true}'
        bag = delivered.topic.split("devicebound/", 1)[1]
        assert f"%24.mid={message_id}" in bag and "colour=red" in bag and "with%20space=a%26b" in bag
    # Not acknowledged: delivered again on the next connection; acknowledged: gone.
    with connect_gateway(emu, "dev-1", key, HUB) as client:
        client.subscribe(C2D)
        again = client.wait_publish()
        assert again.payload == b'{"c2d": true}'
        wait_until(lambda: any(r["event"] == "c2d_completed" for r in emu.hub_records("dev-1")))
    with connect_gateway(emu, "dev-1", key, HUB) as client:
        client.subscribe(C2D)
        with pytest.raises(TimeoutError):
            client.wait_publish(0.5)
    sent = [r for r in emu.hub_records("dev-1") if r["event"] == "c2d_sent"]
    assert [r["delivery"] for r in sent] == [1, 2]


def test_clean_session_0_keeps_subscriptions_per_client_id(make_emulator, key):
    emu = make_emulator()
    client = RawMqttClient(emu.host, emu.gateway_port, ca_file=emu.pki.trust_root)
    with client:
        assert (
            client.connect("dev-1", hub_username(HUB, "dev-1"), hub_token(HUB, "dev-1", key), clean_session=False) == 0
        )
        client.subscribe(METHODS)
        client.subscribe(DESIRED)
    client = RawMqttClient(emu.host, emu.gateway_port, ca_file=emu.pki.trust_root)
    with client:
        client.connect("dev-1", hub_username(HUB, "dev-1"), hub_token(HUB, "dev-1", key), clean_session=False)
        emu.set_desired("dev-1", {"x": 1})  # no SUBSCRIBE on this connection: the kept session receives it
        assert client.wait_publish().topic.startswith("$iothub/twin/PATCH/properties/desired/")
    with connect_gateway(emu, "dev-1", key, HUB):  # clean_session=1 ends the kept session
        pass
    with connect_gateway(emu, "dev-1", key, HUB):
        assert emu.invoke_method("dev-1", "ping", timeout=0.5)["status"] == 404


def test_service_client_and_commands_talk_to_a_running_emulator(make_emulator, key):
    emu = make_emulator()
    service = ServiceClient.from_state_dir(emu.state_dir)
    assert service.twin("dev-1")["desired"]["$version"] == 1
    runner = CliRunner()
    state = str(emu.state_dir)
    result = runner.invoke(cli, ["emulator", "twin", "dev-1", "--state-dir", state, "--set-desired", '{"k": 2}'])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["desired"] == {"k": 2, "$version": 2}
    with connect_gateway(emu, "dev-1", key, HUB) as client:
        client.subscribe(METHODS)
        client.subscribe(C2D)
        args = ["emulator", "invoke-method", "dev-1", "echo", "--payload", '{"a": 1}', "--timeout", "5"]
        thread, result = _in_thread(runner.invoke, cli, [*args, "--state-dir", state])
        request = client.wait_publish()
        client.publish(f"$iothub/methods/res/200/?$rid={request.topic.rsplit('=', 1)[1]}", request.payload, qos=1)
        thread.join(10)
        assert json.loads(result["value"].output) == {"status": 200, "payload": {"a": 1}}
        sent = runner.invoke(cli, ["emulator", "send-c2d", "dev-1", "hi", "--property", "p=1", "--state-dir", state])
        assert sent.exit_code == 0, sent.output
        c2d = client.wait_publish()
        assert c2d.payload == b"hi" and "p=1" in c2d.topic and sent.output.strip() in c2d.topic
    bad = runner.invoke(cli, ["emulator", "twin", "dev-1", "--state-dir", state, "--set-desired", "[1]"])
    assert bad.exit_code != 0 and "JSON object" in bad.output
    wrong = ServiceClient("127.0.0.1", service.port, "not-the-token")
    try:
        wrong.twin("dev-1")
        raise AssertionError("a request without the token was served")
    except ServiceError as exc:
        assert "not authorised" in str(exc)
    missing = runner.invoke(cli, ["emulator", "twin", "dev-1", "--state-dir", state + "-nope"])
    assert missing.exit_code != 0 and "emulator.json" in missing.output


def test_emulator_command_without_subcommand_still_needs_state_dir():
    result = CliRunner().invoke(cli, ["emulator"])
    assert result.exit_code == 2 and "--state-dir" in result.output
