# The gateway shell (azprov.gateway.Gateway) on a fake connection and a fake clock: the token it signs, when it renews
# it, when it pings, what a failure leaves behind, and what it does with a message nobody listens for.
from fixtures import CERT_A, raises
from shell_fakes import KEY, FakeClock, Network, install, provisioning, uninstall

from azprov import errors, gateway, sas
from azprov.errors import ProvisioningError

HUB = "hub-1.azure-devices.net"
ASSIGNMENT = {"assigned_hub": HUB, "device_id": "dev-1"}


def teardown(function=None):
    uninstall()


teardown_function = teardown


def _gateway(**settings):
    clock = FakeClock()
    network = install(Network(clock))
    gw = gateway.Gateway(provisioning(**settings), ASSIGNMENT, (CERT_A,), "trust_bundle.pem", clock)
    return gw, clock, network


def test_connect_signs_a_token_that_expires_after_sas_ttl_s():
    gw, clock, network = _gateway(sas_ttl_s=600)
    clock.now = 5000
    gw.connect()
    expiry = 1800000005 + 600
    opened = network.opened[0]
    assert gw.token_expiry == expiry
    assert opened["password"] == sas.hub_token(HUB, "dev-1", KEY, expiry)
    assert opened["password"].endswith("&se=%d" % expiry)
    assert opened["user"] == HUB + "/dev-1/?api-version=" + gateway.HUB_API_VERSION
    assert (opened["client_id"], opened["host"], opened["port"]) == ("dev-1", HUB, 8883)
    assert gw.connected and gw.connections == 1
    # Through an Edge gateway: its host and port, the hub's name in the user name and token.
    gw, clock, network = _gateway(gateway_host="edge.local", gateway_port=8884)
    gw.connect()
    assert (network.opened[0]["host"], network.opened[0]["port"]) == ("edge.local", 8884)
    assert network.opened[0]["user"].startswith(HUB + "/dev-1/")


def test_renew_if_due_reconnects_after_80_percent_of_the_ttl():
    gw, clock, network = _gateway(sas_ttl_s=100)
    gw.connect()
    clock.now = 79999
    assert not gw.renew_if_due()
    assert len(network.connections) == 1
    clock.now = 80000
    assert gw.renew_if_due()
    assert len(network.connections) == 2 and gw.renewals == 1
    assert network.connections[0].disconnected  # said goodbye to the old connection
    assert gw.connection is network.connections[1] and gw.connected
    assert gw.token_expiry == 1800000080 + 100
    assert network.opened[1]["password"].endswith("&se=%d" % (1800000080 + 100))
    assert not gw.renew_if_due()  # the fresh token is not due
    clock.now = 80000 + 79999
    assert not gw.renew_if_due()
    clock.now = 80000 + 80000
    assert gw.renew_if_due() and gw.renewals == 2


def test_no_renewal_while_disconnected():
    gw, clock, network = _gateway(sas_ttl_s=100)
    gw.connect()
    gw.drop()
    clock.now = 200000
    assert not gw.renew_if_due() and len(network.connections) == 1


def test_ping_at_half_the_keepalive():
    gw, clock, network = _gateway(mqtt_keepalive_s=10)
    gw.connect()
    connection = network.connection
    assert gw.ms_to_ping() == 5000
    clock.now = 4999
    gw.ping_if_due()
    assert connection.pings == 0 and gw.ms_to_ping() == 1
    clock.now = 5000
    gw.ping_if_due()
    assert connection.pings == 1 and gw.ms_to_ping() == 5000
    # wait() reads for no longer than the next ping is due, then pings.
    gw.wait(60000)
    assert clock.waited == 5000 and clock.now == 10000 and connection.pings == 2
    gw.wait(1000)
    assert clock.now == 11000 and connection.pings == 2


def test_a_connection_failure_is_raised_classified_and_leaves_it_disconnected():
    gw, clock, network = _gateway()
    gw.connect()
    network.fail["publish"] = ProvisioningError(errors.TIMEOUT, "telemetry: no answer in time")
    raises(errors.TIMEOUT, gw.send, b"{}")
    assert not gw.connected
    raises(errors.NETWORK, gw.send, b"{}")  # no use of the closed connection
    raises(errors.NETWORK, gw.wait, 100)
    assert network.published() == []
    # A ping that fails, the same.
    gw.connect()
    network.fail["ping"] = ProvisioningError(errors.NETWORK, "gateway: connection failed (104)")
    clock.now += gw.ms_to_ping()
    raises(errors.NETWORK, gw.ping_if_due)
    assert not gw.connected
    # A refused connect leaves nothing open.
    network.fail["connect"] = ProvisioningError(errors.AUTHENTICATION, "gateway: refused at CONNACK (code 5)", status=5)
    raises(errors.AUTHENTICATION, gw.connect)
    assert not gw.connected


def test_a_listener_failing_after_connect_drops_the_connection_classified():
    class Listener:
        def after_connect(self, connection):
            raise OSError(113)

    gw, clock, network = _gateway()
    gw.listener = Listener()
    exc = raises(errors.NETWORK, gw.connect)
    assert "gateway" in exc.message
    assert not gw.connected and gw.connection is None and not network.connection.open


def test_without_a_listener_a_qos1_message_is_acknowledged_and_dropped():
    gw, clock, network = _gateway()
    gw.connect()
    connection = network.connection
    connection.deliver("devices/dev-1/messages/devicebound/%24.mid=m-1", b"hello", 7)
    connection.deliver("devices/dev-1/messages/devicebound/", b"qos0", None)
    gw.wait(0)
    assert connection.acks == [7]
    assert gw.connected
