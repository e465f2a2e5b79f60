# The device client (azprov.client.Client) on a real Gateway over a fake connection, with a fake supervisor that runs
# each exchange once: what it subscribes to and reads after a connect, which desired properties reach the handler, when
# a cloud-to-device message is acknowledged, how direct methods are answered, and that messages arriving during a twin
# request wait for serve().
import json

from fixtures import CERT_A
from shell_fakes import FakeClock, Network, install, provisioning, query, uninstall

from azprov import hub
from azprov.client import Client
from azprov.gateway import Gateway

HUB = "hub-1.azure-devices.net"
ASSIGNMENT = {"assigned_hub": HUB, "device_id": "dev-1"}
C2D = "devices/dev-1/messages/devicebound/"


def teardown(function=None):
    uninstall()


teardown_function = teardown


class FakeHub:
    """Answers twin requests: GET with `twin`, a reported patch with 204 and the next reported $version. `ahead` holds
    messages (topic, body, pid) the hub sends just before its next twin answer."""

    def __init__(self, desired_version=5):
        self.twin = {"desired": {"$version": desired_version, "mode": "eco"}, "reported": {"$version": 1}}
        self.ahead = []

    def __call__(self, topic, body):
        rid = query(topic).get("$rid")
        if topic.startswith("$iothub/twin/GET/"):
            messages, self.ahead = self.ahead, []
            return messages + [("$iothub/twin/res/200/?$rid=%s" % rid, json.dumps(self.twin), None)]
        if topic.startswith("$iothub/twin/PATCH/properties/reported/"):
            self.twin["reported"]["$version"] += 1
            return [("$iothub/twin/res/204/?$rid=%s&$version=%d" % (rid, self.twin["reported"]["$version"]), b"", None)]
        return None


class FakeSupervisor:
    """What the client asks of azprov.supervisor.Supervisor: every exchange runs once, the connection is always
    ready, and a failure is recorded and raised."""

    def __init__(self, clock, config, gateway):
        self.clock = clock
        self.config = config
        self.gateway = gateway
        self.store = None
        self.state = None
        self.listener = None
        self.failures = []

    def attempt(self, op, step="serve"):
        return op()

    def ready(self, budget_ms=None):
        return True

    def failed(self, exc, step):
        self.failures.append((step, exc))
        raise exc

    def close(self):
        self.gateway.close()


def _client(fake_hub=None):
    clock = FakeClock()
    network = install(Network(clock, fake_hub or FakeHub()))
    cfg = provisioning()
    gw = Gateway(cfg, ASSIGNMENT, (CERT_A,), "trust_bundle.pem", clock)
    client = Client(FakeSupervisor(clock, cfg, gw))
    gw.listener = client  # as the supervisor attaches it to every gateway it opens
    return client, gw, network


def _responses(network):
    """(topic, body) of every method response published, in order."""
    return [(e[1], e[3]) for e in network.events if e[0] == "publish" and e[1].startswith("$iothub/methods/res/")]


def test_after_connect_subscribes_to_what_the_handlers_need_and_reads_the_twin():
    client, gw, network = _client()
    desired = []
    client.on_desired(lambda patch, version: desired.append((patch, version)))
    client.on_method("reboot", lambda payload: (200, None))
    client.on_c2d(lambda body, properties: None)
    assert network.events == []  # not connected: the connect subscribes
    gw.connect()
    wanted = [hub.METHOD_REQUESTS, hub.c2d_filter("dev-1"), hub.DESIRED_PATCHES, hub.TWIN_RESPONSES]
    assert network.connection.subscribed == wanted
    assert network.published() == ["$iothub/twin/GET/?$rid=1"]
    # The twin answer's topic is subscribed before the GET goes out.
    events = [e[:2] for e in network.events]
    assert events.index(("subscribe", hub.TWIN_RESPONSES)) < events.index(("publish", "$iothub/twin/GET/?$rid=1"))
    assert desired == []  # handed over from serve(), never from inside the connect
    client.serve(0)
    assert desired == [({"mode": "eco"}, 5)]
    # Every connect (a renewal, a reconnect) subscribes again and reads the twin; an unchanged one is not handed over.
    gw.drop()
    gw.connect()
    assert network.connection.subscribed == wanted
    assert network.published(2) == ["$iothub/twin/GET/?$rid=2"]
    client.serve(0)
    assert desired == [({"mode": "eco"}, 5)]


def test_only_what_is_used_is_subscribed():
    client, gw, network = _client()
    client.on_c2d(lambda body, properties: None)
    gw.connect()
    assert network.connection.subscribed == [hub.c2d_filter("dev-1")]
    assert network.published() == []  # no desired handler: no twin GET


def test_a_desired_patch_not_newer_than_the_twin_is_not_handed_over():
    fake_hub = FakeHub(desired_version=5)
    patch = "$iothub/twin/PATCH/properties/desired/?$version=%d"
    # Version 5 arrives while the client waits for the twin GET answer, which already holds version 5.
    fake_hub.ahead = [(patch % 5, json.dumps({"mode": "old", "$version": 5}), None)]
    client, gw, network = _client(fake_hub)
    desired = []
    client.on_desired(lambda patch, version: desired.append((patch, version)))
    gw.connect()
    client.serve(0)
    assert desired == [({"mode": "eco"}, 5)], desired
    connection = network.connection
    connection.deliver(patch % 4, json.dumps({"mode": "older", "$version": 4}))
    connection.deliver(patch % 5, json.dumps({"mode": "old", "$version": 5}))
    connection.deliver(patch % 6, json.dumps({"mode": "turbo", "$version": 6}))
    connection.deliver(patch % 6, json.dumps({"mode": "turbo", "$version": 6}))  # delivered twice
    client.serve(0)
    assert desired == [({"mode": "eco"}, 5), ({"mode": "turbo"}, 6)], desired


def test_a_c2d_message_is_acknowledged_after_its_handler_returned():
    client, gw, network = _client()
    received = []

    def on_c2d(body, properties):
        network.events.append(("handler", bytes(body)))
        received.append(properties)

    client.on_c2d(on_c2d)
    gw.connect()
    network.connection.deliver(C2D + "%24.mid=m-1&k=v", b"hi", 9)
    client.serve(0)
    assert [e[:2] for e in network.events if e[0] in ("handler", "ack")] == [("handler", b"hi"), ("ack", 9)]
    assert received == [{"$.mid": "m-1", "k": "v"}]
    # A handler that raises: the message is still acknowledged (after it), and not delivered again.
    client.on_c2d(lambda body, properties: 1 // 0)
    network.connection.deliver(C2D, b"boom", 10)
    client.serve(0)
    assert network.connection.acks == [9, 10]


def test_a_c2d_message_is_not_acknowledged_when_the_connection_changed_while_its_handler_ran():
    client, gw, network = _client()
    handled = []

    def on_c2d(body, properties):
        handled.append(bytes(body))
        gw.drop()  # the connection is lost while the handler runs ...
        gw.connect()  # ... and a new one is up before it returns

    client.on_c2d(on_c2d)
    gw.connect()
    first = network.connection
    first.deliver(C2D, b"one", 11)
    first.deliver(C2D, b"two", 12)  # read from the old connection too, not yet handled
    client.serve(0)
    # Neither is acknowledged: the hub delivers both again on the new connection. The second one is not handled
    # from the old connection either (it will come again).
    assert handled == [b"one"]
    assert first.acks == [] and network.connection.acks == []
    assert network.connection is not first and gw.connected


def test_a_method_request_is_answered_once_with_the_handlers_status():
    client, gw, network = _client()
    calls = []

    def reboot(payload):
        calls.append(payload)
        return 202, {"accepted": True}

    def broken(payload):
        raise ValueError("no luck")

    client.on_method("reboot", reboot)
    client.on_method("broken", broken)
    gw.connect()
    connection = network.connection
    connection.deliver("$iothub/methods/POST/reboot/?$rid=a1", b'{"delay": 3}')
    connection.deliver("$iothub/methods/POST/reboot/?$rid=a1", b'{"delay": 3}')  # the same request again
    connection.deliver("$iothub/methods/POST/unknown/?$rid=a2", b"null")
    connection.deliver("$iothub/methods/POST/broken/?$rid=a3", b"{}")
    client.poll(0)
    assert calls == [{"delay": 3}]
    answers = _responses(network)
    assert [topic for topic, body in answers] == [
        "$iothub/methods/res/202/?$rid=a1",
        "$iothub/methods/res/404/?$rid=a2",
        "$iothub/methods/res/500/?$rid=a3",
    ], answers
    assert json.loads(answers[0][1]) == {"accepted": True}
    assert "unknown" in json.loads(answers[1][1])["error"]
    assert "no luck" in json.loads(answers[2][1])["error"]
    assert client.methods_answered == 3


def test_messages_that_arrive_during_a_twin_request_wait_for_serve():
    fake_hub = FakeHub()
    client, gw, network = _client(fake_hub)
    c2d = []
    methods = []
    client.on_c2d(lambda body, properties: c2d.append(bytes(body)))
    client.on_method("ping", lambda payload: methods.append(payload) or (200, None))
    gw.connect()
    fake_hub.ahead = [(C2D, b"queued", 3), ("$iothub/methods/POST/ping/?$rid=m1", b"1", None)]
    twin = client.twin()
    assert twin["desired"]["$version"] == 5
    # Held while the twin answer was awaited: nothing handled, nothing acknowledged, nothing answered.
    assert c2d == [] and methods == [] and network.connection.acks == []
    assert _responses(network) == []
    client.serve(0)
    assert c2d == [b"queued"] and methods == [1]
    assert network.connection.acks == [3]
    assert [topic for topic, body in _responses(network)] == ["$iothub/methods/res/200/?$rid=m1"]
    assert client.report({"fw": "1.0"}) == 2


def test_a_c2d_backlog_does_not_keep_the_twin_answer_out():
    fake_hub = FakeHub()
    fake_hub.ahead = [(C2D, b"backlog", 100 + i) for i in range(16)]  # held while offline, sent before the twin answer
    client, gw, network = _client(fake_hub)
    c2d = []
    client.on_desired(lambda patch, version: None)
    client.on_c2d(lambda body, properties: c2d.append(bytes(body)))
    gw.connect()
    client.serve(0)
    assert len(c2d) == 16 and network.connection.acks == [100 + i for i in range(16)]
