"""The emulator answers as IoT Hub does when a request is wrong (issue 21 item 4, issue 19): unknown devices get 404,
over-limit requests 413 (host_tools/emulator/limits.py), invalid method names 400 before anything is published, the
service commands' exit status tells failure from success, and the control port answers every request line."""

from __future__ import annotations

import json
import threading

import pytest
from click.testing import CliRunner

from host_tools.cli import main as cli
from host_tools.emulator import derive_device_key
from host_tools.emulator.control import ServiceClient, ServiceError
from host_tools.emulator.hub import HubError
from host_tools.emulator.limits import (
    C2D_MAX_BODY_BYTES,
    METHOD_MAX_PAYLOAD_BYTES,
    METHOD_MAX_RESPONSE_BYTES,
    TELEMETRY_MAX_BYTES,
    TWIN_DESIRED_MAX_BYTES,
    TWIN_REPORTED_MAX_BYTES,
    twin_size,
)
from host_tools.emulator.testing import TEST_HUB as HUB
from host_tools.emulator.testing import connect_dps, connect_gateway, control_exchange, register_raw, wait_until

pytestmark = pytest.mark.timeout(60)
METHODS = "$iothub/methods/POST/#"


def _cli(emu, *args):
    return CliRunner().invoke(cli, ["emulator", *args, "--state-dir", str(emu.state_dir)])


def _error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("Error:")]


def _refused(result, status: int, exit_code: int = 1) -> str:
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    (line,) = _error_lines(result)
    assert line.startswith(f"Error: {status}: "), line
    return line


def _events(emu, device_id):
    return [r["event"] for r in emu.hub_records(device_id)]


def _no_traceback_logged(caplog):
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]
    assert "Traceback" not in caplog.text


# --- 404 for devices the hub does not know


def test_service_requests_for_an_unknown_device_are_refused_404(make_emulator, enrollment_doc, state_dir):
    emu = make_emulator()
    _refused(_cli(emu, "send-c2d", "no-such-device", "hello"), 404)
    line = _refused(_cli(emu, "twin", "typo-device", "--set-desired", '{"k": 1}'), 404)
    assert "typo-device" in line
    _refused(_cli(emu, "twin", "typo-device"), 404)
    _refused(_cli(emu, "invoke-method", "no-such-device", "ping", "--timeout", "1"), 404)
    assert emu.hub_records("no-such-device") == [] and emu.hub_records("typo-device") == []
    twins = state_dir / "twins.json"
    assert not twins.exists() or "typo-device" not in json.loads(twins.read_text())
    with pytest.raises(HubError) as caught:
        emu.send_c2d("no-such-device", b"x")
    assert caught.value.status == 404
    with pytest.raises(ServiceError) as refused:
        ServiceClient.from_state_dir(emu.state_dir).set_desired("typo-device", {"k": 1})
    assert refused.value.status == 404
    # A group enrollment alone makes no device known ...
    assert not emu.server.gateway.device_known("fleet-device-7")
    # ... registering through it does, as does an individual enrollment, or having connected to the gateway.
    group_key = enrollment_doc["groups"][0]["group_key"]
    device_key = derive_device_key(group_key, "fleet-device-7")
    with connect_dps(emu, "fleet-device-7", device_key) as client:
        assert register_raw(client, "fleet-device-7")[0] == 200
    assert emu.send_c2d("fleet-device-7", b"hi")
    assert emu.twin("dev-2")["desired"]["$version"] == 1  # enrolled, never connected
    with connect_gateway(emu, "fleet-device-7", device_key, HUB):
        wait_until(lambda: twins.exists() and "fleet-device-7" in json.loads(twins.read_text()))
    emu.forget_assignments()  # as after a restart: it is still known, having connected
    assert emu.server.gateway.device_known("fleet-device-7")
    assert not emu.server.gateway.device_known("fleet-device-8")


# --- 413 for what IoT Hub's limits refuse, from the service side


def test_oversize_service_requests_are_refused_413_and_nothing_changes(make_emulator, key):
    emu = make_emulator()
    _refused(_cli(emu, "send-c2d", "dev-1", "x" * (70 * 1024)), 413)
    assert emu.send_c2d("dev-1", b"x" * C2D_MAX_BODY_BYTES)  # exactly the limit: queued
    with pytest.raises(HubError) as caught:
        emu.send_c2d("dev-1", b"x" * (C2D_MAX_BODY_BYTES + 1))
    assert caught.value.status == 413
    assert [r["size"] for r in emu.hub_records("dev-1") if r["event"] == "c2d_queued"] == [C2D_MAX_BODY_BYTES]

    big = json.dumps({"blob": "y" * (40 * 1024)})
    _refused(_cli(emu, "twin", "dev-1", "--set-desired", big), 413)
    assert emu.twin("dev-1")["desired"] == {"$version": 1}
    # Two patches within the limit each, together over it: the second is refused (the section would exceed 32 KB).
    half = TWIN_DESIRED_MAX_BYTES // 2
    emu.set_desired("dev-1", {"a": "y" * half})
    with pytest.raises(HubError) as caught:
        emu.set_desired("dev-1", {"b": "y" * half})
    assert caught.value.status == 413
    assert set(emu.twin("dev-1")["desired"]) == {"a", "$version"}
    emu.set_desired("dev-1", {"a": None, "b": "y" * half})  # replacing stays within it
    with pytest.raises(HubError) as caught:
        emu.set_desired("dev-1", json.loads("{" + '"n": {' * 11 + "}" * 12))
    assert caught.value.status == 400  # deeper than IoT Hub's 10 levels

    with connect_gateway(emu, "dev-1", key, HUB) as client:
        client.subscribe(METHODS)
        with pytest.raises(HubError) as caught:
            emu.invoke_method("dev-1", "ping", {"blob": "z" * METHOD_MAX_PAYLOAD_BYTES}, timeout=1)
        assert caught.value.status == 413
        with pytest.raises(TimeoutError):
            client.wait_publish(0.3)  # nothing was published
    assert "method_invoked" not in _events(emu, "dev-1")


def test_twin_size_counts_as_iot_hub_does():
    assert twin_size({"ab": "cd", "n": 1, "t": True, "$version": 7}) == 4 + 9 + 5
    assert twin_size({"k": {"x": "\x01\x02é"}}) == 1 + 1 + 2  # control characters are not counted, é is 2 bytes


# --- what a device sends through the gateway


def test_device_side_limits_reported_patch_telemetry_and_method_answer(make_emulator, key):
    emu = make_emulator()
    with connect_gateway(emu, "dev-1", key, HUB) as client:
        client.subscribe("$iothub/twin/res/#")
        client.publish("$iothub/twin/PATCH/properties/reported/?$rid=big", {"blob": "r" * TWIN_REPORTED_MAX_BYTES})
        assert client.wait_publish().topic == "$iothub/twin/res/413/?$rid=big"
        assert emu.twin("dev-1")["reported"] == {"$version": 1}
        client.publish("$iothub/twin/PATCH/properties/reported/?$rid=ok", {"blob": "r" * 1000})
        assert client.wait_publish().topic == "$iothub/twin/res/204/?$rid=ok&$version=2"

        client.subscribe(METHODS)
        result = {}
        thread = threading.Thread(
            target=lambda: result.setdefault("value", emu.invoke_method("dev-1", "dump", timeout=5)), daemon=True
        )
        thread.start()
        rid = client.wait_publish().topic.rsplit("=", 1)[1]
        client.publish(f"$iothub/methods/res/200/?$rid={rid}", json.dumps("a" * METHOD_MAX_RESPONSE_BYTES), qos=1)
        thread.join(10)
        assert result["value"]["status"] == 413 and result["value"]["hub_error"] is True

        # Exactly 256 KB (body + property bag) is recorded; one byte more ends the connection, unrecorded.
        topic = "devices/dev-1/messages/events/k=v"
        client.publish(topic, b"t" * (TELEMETRY_MAX_BYTES - 3), qos=1)
        client.publish(topic, b"t" * (TELEMETRY_MAX_BYTES - 2), qos=1, wait_ack=False)
        assert client.wait_closed(5)
    assert [len(r["payload"]) for r in emu.telemetry("dev-1")] == [TELEMETRY_MAX_BYTES - 3]


def test_patches_that_are_not_json_are_refused_400(make_emulator, key):
    emu = make_emulator()
    for patch in ({"x": float("nan")}, {"x": b"bytes"}, {"x": {1, 2}}):
        with pytest.raises(HubError) as caught:
            emu.set_desired("dev-1", patch)
        assert caught.value.status == 400
    with connect_gateway(emu, "dev-1", key, HUB) as client:
        client.subscribe("$iothub/twin/res/#")
        client.publish("$iothub/twin/PATCH/properties/reported/?$rid=nan", b'{"x": NaN}')
        assert client.wait_publish().topic == "$iothub/twin/res/400/?$rid=nan"
    assert emu.twin("dev-1") == {"desired": {"$version": 1}, "reported": {"$version": 1}}


# --- method names


@pytest.mark.parametrize("name", ["#", "a/b", "+", "", "reboot?now", "a\nb"])
def test_invalid_method_names_are_refused_400_before_publishing(make_emulator, key, name):
    emu = make_emulator()
    with connect_gateway(emu, "dev-1", key, HUB) as client:
        client.subscribe(METHODS)
        with pytest.raises(HubError) as caught:
            emu.invoke_method("dev-1", name, timeout=1)
        assert caught.value.status == 400
        if name:  # click refuses nothing here: the hub does
            _refused(_cli(emu, "invoke-method", "dev-1", name, "--timeout", "1"), 400)
        with pytest.raises(TimeoutError):
            client.wait_publish(0.3)
    assert "method_invoked" not in _events(emu, "dev-1")


# --- exit status of the service commands


def test_invoke_method_exit_status_tells_failure_from_success(make_emulator, key, tmp_path):
    emu = make_emulator()
    _refused(_cli(emu, "invoke-method", "dev-1", "ping", "--timeout", "1"), 404)  # enrolled, not online
    with connect_gateway(emu, "dev-1", key, HUB) as client:
        client.subscribe(METHODS)
        _refused(_cli(emu, "invoke-method", "dev-1", "slow", "--timeout", "0.3"), 504)
        assert client.wait_publish().topic.startswith("$iothub/methods/POST/slow/")  # published, never answered
        for status, exit_code in ((200, 0), (204, 0), (500, 4), (404, 4)):
            result = {}
            thread = threading.Thread(
                target=lambda out=result: out.setdefault(
                    "value", _cli(emu, "invoke-method", "dev-1", "m", "--timeout", "5")
                ),
                daemon=True,
            )
            thread.start()
            request = client.wait_publish()
            client.publish(f"$iothub/methods/res/{status}/?$rid={request.topic.rsplit('=', 1)[1]}", {"s": 1}, qos=1)
            thread.join(10)
            answer = result["value"]
            assert answer.exit_code == exit_code, answer.output
            assert json.loads(answer.output.splitlines()[0]) == {"status": status, "payload": {"s": 1}}
            assert len(_error_lines(answer)) == (exit_code != 0)
    nowhere = CliRunner().invoke(cli, ["emulator", "twin", "dev-1", "--state-dir", str(tmp_path / "none")])
    assert nowhere.exit_code == 3 and len(_error_lines(nowhere)) == 1
    assert _cli(emu, "send-c2d", "dev-1", "hi", "--property", "novalue").exit_code == 2
    assert _cli(emu, "twin", "dev-1", "--set-desired", "{").exit_code == 2
    emu.stop()
    stopped = _cli(emu, "send-c2d", "dev-1", "hi")  # emulator.json is gone with it
    assert stopped.exit_code == 3 and len(_error_lines(stopped)) == 1


# --- the control port


def _control(emu) -> tuple[int, str]:
    control = emu.info["control"]
    return control["port"], control["token"]


def _request(token, op, **args) -> bytes:
    return json.dumps({"token": token, "op": op, "args": args}).encode() + b"\n"


@pytest.mark.parametrize("properties", [[1, 2], "colour=red", 5, {"k": 1}, {"": "v"}, [["a", "b"]], {"k": ["v"]}, True])
def test_control_port_answers_malformed_properties_400(make_emulator, caplog, properties):
    emu = make_emulator()
    port, token = _control(emu)
    answer = json.loads(control_exchange(port, _request(token, "send_c2d", device_id="dev-1", properties=properties)))
    assert answer["ok"] is False and answer["status"] == 400, answer
    assert "c2d_queued" not in _events(emu, "dev-1")
    _no_traceback_logged(caplog)


def test_control_port_times_out_partial_lines_bounds_lines_and_keeps_serving(make_emulator, caplog):
    emu = make_emulator(control_idle_timeout=0.5)
    port, token = _control(emu)
    answer = json.loads(control_exchange(port, b'{"token": "', timeout=5))  # never ends its line
    assert answer["status"] == 408
    answer = json.loads(control_exchange(port, b"{" + b" " * (1024 * 1024 + 10), timeout=10))
    assert answer["status"] == 413
    answer = json.loads(control_exchange(port, _request(token, "twin", device_id="dev-1")[:-1], half_close=True))
    assert answer["status"] == 400
    for line, status in (
        (b"not json\n", 400),
        (b"[1]\n", 400),
        (b"[" * 50_000 + b"\n", 400),
        (b'{"op": "twin", "args": {"device_id": "dev-1"}}\n', 401),
        (json.dumps({"token": [token], "op": "twin"}).encode() + b"\n", 401),
        (json.dumps({"token": token + "\u00e9", "op": "twin"}).encode() + b"\n", 401),
        (json.dumps({"token": token, "op": 5}).encode() + b"\n", 400),
        (json.dumps({"token": token, "op": "twin", "args": []}).encode() + b"\n", 400),
        (_request(token, "send_c2d", device_id="dev-1", payload_b64=5), 400),
        (_request(token, "send_c2d", device_id="dev-1", payload_b64="!!"), 400),
        (_request(token, "invoke_method", device_id="dev-1", name="ping", timeout=True), 400),
        (_request(token, "explode", device_id="dev-1"), 400),
    ):
        answer = json.loads(control_exchange(port, line))
        assert answer["ok"] is False and answer["status"] == status, (line[:60], answer)
    assert json.loads(control_exchange(port, _request(token, "twin", device_id="dev-1")))["ok"] is True
    _no_traceback_logged(caplog)


def test_control_port_compares_the_token_in_constant_time(make_emulator, monkeypatch):
    import host_tools.emulator.control as control

    compared = []
    real = control.hmac.compare_digest
    monkeypatch.setattr(control.hmac, "compare_digest", lambda a, b: compared.append(1) or real(a, b))
    emu = make_emulator()
    port, token = _control(emu)
    assert json.loads(control_exchange(port, _request("wrong", "twin", device_id="dev-1")))["status"] == 401
    assert json.loads(control_exchange(port, _request(token, "twin", device_id="dev-1")))["ok"] is True
    assert len(compared) == 2


def test_oversize_python_api_request_is_refused_before_sending(make_emulator):
    emu = make_emulator()
    service = ServiceClient.from_state_dir(emu.state_dir)
    with pytest.raises(ServiceError) as caught:
        service.send_c2d("dev-1", b"x" * (1024 * 1024))
    assert caught.value.status == 413
    with pytest.raises(ServiceError) as caught:
        service.invoke_method("dev-1", "ping", {"x": float("nan")}, timeout=1)
    assert caught.value.status == 400
    assert service.twin("dev-1")["desired"]["$version"] == 1  # still serving
