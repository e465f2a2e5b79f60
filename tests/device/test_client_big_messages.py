# Messages up to IoT Hub's limits (C2D 64 KB, desired 32 KB, method payload 128 KB) on the device client over the fake
# connection, in three size classes: small (read whole), 20 KB, and near the limit (60 KB C2D, 30 KB desired, 100 KB
# method). With the heap to hold them they reach the handlers; without it each is read past and its fate logged
# (cloud_message_too_large): a C2D message acknowledged, a method answered 413, a desired patch or twin answer
# skipped. Either way the connection stays up and telemetry goes on.
import json

from shell_fakes import record_log, set_free_heap
from test_client_shell import C2D, FakeHub, _client, _responses, teardown  # noqa: F401 (teardown runs after each test)

KB = 1024
SMALL = 200
NEAR_LIMIT = {"c2d": 60 * KB, "desired": 30 * KB, "method": 100 * KB}
DESIRED = "$iothub/twin/PATCH/properties/desired/?$version=%d"
METHOD = "$iothub/methods/POST/echo/?$rid=%s"

teardown_function = teardown


def _sizes(kind):
    return (SMALL, 20 * KB, NEAR_LIMIT[kind])


def _patch(size, version):
    # A desired patch whose JSON text is about `size` bytes.
    return json.dumps({"blob": "d" * max(0, size - 40), "$version": version})


def _method_payload(size):
    return json.dumps("m" * (size - 2))


def _app(client):
    got = {"c2d": [], "desired": [], "method": []}
    client.on_desired(lambda patch, version: got["desired"].append((len(patch.get("blob", "")), version)))
    client.on_c2d(lambda body, properties: got["c2d"].append((len(body), properties["n"])))
    client.on_method("echo", lambda payload: got["method"].append(len(payload)) or (200, {"length": len(payload)}))
    return got


def _too_large(events):
    return [fields for event, fields in events if event == "cloud_message_too_large"]


def _telemetry_goes_on(client, network):
    client.send({"t": 1})
    assert network.published()[-1].startswith("devices/dev-1/messages/events/")


def _deliver_every_kind_and_size(client, connection):
    """C2D (packet ids 20, 21, 22), desired patches ($version 6, 7, 8) and method requests (rid 0, 1, 2) of each
    size class, each served as it arrives."""
    for n, size in enumerate(_sizes("c2d")):
        connection.deliver(C2D + "n=%d" % n, b"c" * size, 20 + n)
        client.serve(0)
    for n, size in enumerate(_sizes("desired")):
        connection.deliver(DESIRED % (6 + n), _patch(size, 6 + n))
        client.serve(0)
    for n, size in enumerate(_sizes("method")):
        connection.deliver(METHOD % n, _method_payload(size))
        client.serve(0)


def test_every_kind_and_size_class_reaches_its_handler_when_the_heap_holds_it():
    set_free_heap(1 << 20)
    events = record_log()
    client, gw, network = _client()
    got = _app(client)
    gw.connect()
    client.serve(0)
    assert got["desired"] == [(0, 5)]  # the twin's desired section (mode=eco, no blob)
    connection = network.connection
    _deliver_every_kind_and_size(client, connection)
    assert got["c2d"] == [(size, str(n)) for n, size in enumerate(_sizes("c2d"))]
    assert connection.acks == [20, 21, 22]
    assert [version for length, version in got["desired"][1:]] == [6, 7, 8]
    assert [length for length, version in got["desired"][1:]] == [max(0, s - 40) for s in _sizes("desired")]
    assert got["method"] == [size - 2 for size in _sizes("method")]
    answers = _responses(network)
    assert [topic for topic, body in answers] == ["$iothub/methods/res/200/?$rid=%d" % n for n in range(3)]
    assert [json.loads(body)["length"] for topic, body in answers] == got["method"]
    assert _too_large(events) == []
    assert len(network.connections) == 1 and connection.open
    _telemetry_goes_on(client, network)


def test_what_the_heap_cannot_hold_is_read_past_acknowledged_answered_or_skipped_and_the_connection_stays():
    set_free_heap(16 * KB)  # room for a small message, not for 20 KB
    events = record_log()
    client, gw, network = _client()
    got = _app(client)
    gw.connect()
    client.serve(0)
    connection = network.connection
    _deliver_every_kind_and_size(client, connection)
    # Only the small ones reach the handlers.
    assert got["c2d"] == [(SMALL, "0")]
    assert got["desired"] == [(0, 5), (SMALL - 40, 6)]
    assert got["method"] == [SMALL - 2]
    # Every C2D message is acknowledged (MQTT has no reject: an unacknowledged one would come back on every connect).
    assert connection.acks == [20, 21, 22]
    answers = _responses(network)
    assert [topic for topic, body in answers] == [
        "$iothub/methods/res/200/?$rid=0",
        "$iothub/methods/res/413/?$rid=1",
        "$iothub/methods/res/413/?$rid=2",
    ]
    assert "does not fit" in json.loads(answers[1][1])["error"]
    logged = _too_large(events)
    assert [(f["action"], f["bytes"]) for f in logged] == [
        ("acknowledged", 20 * KB),
        ("acknowledged", 60 * KB),
        ("skipped", len(_patch(20 * KB, 7))),
        ("skipped", len(_patch(30 * KB, 8))),
        ("answered_413", len(_method_payload(20 * KB))),
        ("answered_413", len(_method_payload(100 * KB))),
    ]
    assert logged[0]["topic"] == C2D + "n=1"
    assert [f.get("version") for f in logged[2:4]] == [7, 8]
    assert len(network.connections) == 1 and connection.open and gw.connected
    _telemetry_goes_on(client, network)
    # A later patch that fits is handed over: skipping one did not stop the desired properties.
    connection.deliver(DESIRED % 9, _patch(SMALL, 9))
    client.serve(0)
    assert got["desired"][-1] == (SMALL - 40, 9)


def test_a_twin_too_large_to_hold_lets_the_device_connect_and_serve_and_is_handed_over_when_it_fits():
    fake_hub = FakeHub(desired_version=5)
    fake_hub.twin["desired"]["blob"] = "t" * (30 * KB)
    set_free_heap(16 * KB)
    events = record_log()
    client, gw, network = _client(fake_hub)
    got = _app(client)
    gw.connect()  # the twin GET answer is read past: the connect succeeds
    client.serve(0)
    assert gw.connected and got["desired"] == []
    (logged,) = _too_large(events)
    assert logged["topic"] == "$iothub/twin/res/200/?$rid=1" and logged["action"] == "skipped"
    assert logged["bytes"] > 30 * KB
    network.connection.deliver(METHOD % "x", _method_payload(SMALL))
    client.serve(0)
    assert got["method"] == [SMALL - 2]
    _telemetry_goes_on(client, network)
    # The application asking for the twin gets a classified error; the connection stays.
    try:
        client.twin()
        raise AssertionError("twin() returned a twin it could not hold")
    except Exception as exc:
        assert getattr(exc, "kind", None) == "out_of_memory", exc
    assert gw.connected and len(network.connections) == 1
    # The version handed over was not moved by the twin it skipped: with the heap back, the next connect hands it over.
    set_free_heap(1 << 20)
    gw.drop()
    gw.connect()
    client.serve(0)
    assert got["desired"] == [(30 * KB, 5)]


def test_the_queue_is_bounded_in_bytes_and_the_twin_answer_is_always_taken():
    fake_hub = FakeHub()
    set_free_heap(1 << 20)
    events = record_log()
    client, gw, network = _client(fake_hub)
    got = _app(client)
    gw.connect()
    client.serve(0)
    # Sent while the client waits for a twin answer: held until 16 KB are queued, then a QoS 1 message is left
    # unacknowledged (the hub sends it again) and a QoS 0 method is answered 413 rather than lost.
    fake_hub.ahead = [(C2D + "n=%d" % n, b"q" * (10 * KB), 30 + n) for n in range(3)]
    fake_hub.ahead.append((METHOD % "late", _method_payload(10 * KB), None))
    assert client.twin()["desired"]["$version"] == 5
    client.serve(0)
    assert got["c2d"] == [(10 * KB, "0"), (10 * KB, "1")]
    assert network.connection.acks == [30, 31]
    assert [topic for topic, body in _responses(network)] == ["$iothub/methods/res/413/?$rid=late"]
    assert [e for e, fields in events if e == "cloud_message_deferred"] == ["cloud_message_deferred"]
    assert client._queued == 0 and client._queue == []
