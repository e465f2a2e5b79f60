# The DPS shell (azprov.provision.Provisioner) against a scripted DPS on a fake connection and a fake clock: what it
# publishes, what it waits between a 202 and its poll (the retry policy's answer to the service's retry-after), what
# it commits to the store, and how the registration carries on (or starts again) after a failed attempt. Time passes
# only in the fake clock: every test runs in milliseconds.
import json
import os

from fixtures import CERT_A, CERT_A_SHA256, raises
from shell_fakes import STORAGE, FakeClock, Network, fresh_store, install, provisioning, query, uninstall

from azprov import errors
from azprov.errors import ProvisioningError
from azprov.provision import Provisioner
from azprov.store import Store

CA_FILE = "shell_test_ca.pem"
HUB = "hub-1.azure-devices.net"
REGISTER = "$dps/registrations/PUT/iotdps-register/?$rid="
POLL = "$dps/registrations/GET/iotdps-get-operationstatus/?$rid="
ASSIGNING = {"operationId": "op-1", "status": "assigning"}
BUNDLE = {
    "id": "bundle-1",
    "etag": "etag-1",
    "certificates": [{"certificate": CERT_A, "metadata": {"subjectName": "CN=fixture-root-a"}}],
}


def assigned(trust_bundle=None, payload=None):
    state = {
        "registrationId": "sensor-001",
        "assignedHub": HUB,
        "deviceId": "sensor-001",
        "status": "assigned",
        "substatus": "initialAssignment",
    }
    if trust_bundle is not None:
        state["trustBundle"] = trust_bundle
    if payload is not None:
        state["payload"] = payload
    return {"operationId": "op-1", "status": "assigned", "registrationState": state}


def dps(*answers):
    """The service: one answer per request, in turn. An answer is (status, retry_after or None, body dict), None
    (no answer at all) or a ProvisioningError (the connection drops while the request goes out)."""
    todo = list(answers)

    def answer(topic, body):
        assert topic.startswith("$dps/registrations/"), topic
        step = todo.pop(0)
        if step is None or isinstance(step, Exception):
            return step
        status, retry_after, doc = step
        reply = "$dps/registrations/res/%d/?$rid=%s" % (status, query(topic)["$rid"])
        if retry_after is not None:
            reply += "&retry-after=%d" % retry_after
        return [(reply, json.dumps(doc))]

    return answer


def setup(function=None):
    with open(CA_FILE, "w") as f:
        f.write(CERT_A)  # read before transport.tls_context (a stub here) is called
    fresh_store()


def teardown(function=None):
    uninstall()
    fresh_store()
    try:
        os.remove(CA_FILE)
    except OSError:
        pass


setup_function = setup
teardown_function = teardown


def _provisioner(answers, **settings):
    clock = FakeClock()
    network = install(Network(clock, dps(*answers)))
    cfg = provisioning(dps_ca_file=CA_FILE, **settings)
    return Provisioner(cfg, Store(STORAGE), clock), clock, network


def _nothing_stored():
    assert Store(STORAGE).load() is None
    for name in ("state.json", "trust_bundle.pem", "trust_bundle.pem.in"):
        try:
            os.stat(STORAGE + "/" + name)
        except OSError:
            continue
        raise AssertionError(name + " was written")


def test_202_then_200_waits_the_retry_after_and_commits_the_assignment():
    prov, clock, network = _provisioner([(202, 3, ASSIGNING), (200, None, assigned(BUNDLE))])
    state = prov.attempt(60000)
    assert clock.sleeps == [3000], clock.sleeps
    assert network.published() == [REGISTER + "1", POLL + "2&operationId=op-1"]
    assert network.connections[0].subscribed == ["$dps/registrations/res/#"]
    assert network.connections[0].disconnected and len(network.connections) == 1
    # Committed: a new Store reading the flash finds the assignment and the trust bundle.
    stored = Store(STORAGE).load()
    assert stored == state
    assert stored["assignment"]["assigned_hub"] == HUB and stored["assignment"]["device_id"] == "sensor-001"
    assert [c["sha256"] for c in stored["trust_bundle"]["certificates"]] == [CERT_A_SHA256]
    with open(STORAGE + "/trust_bundle.pem") as f:
        assert f.read().split() == CERT_A.split()
    assert prov.registration is None  # done: the next registration starts anew


def test_the_202_wait_comes_from_the_policy():
    # retry-after honoured; absent: the policy's default (2 s); 0: poll at once; larger than retry_max_s: the cap.
    for retry_after, settings, sleeps in (
        (5, {}, [5000]),
        (None, {}, [2000]),
        (0, {}, []),
        (30, {"retry_max_s": 7}, [7000]),
    ):
        prov, clock, network = _provisioner([(202, retry_after, ASSIGNING), (200, None, assigned())], **settings)
        prov.attempt(60000)
        assert clock.sleeps == sleeps, (retry_after, clock.sleeps)
        assert network.published()[1] == POLL + "2&operationId=op-1"
        uninstall()
        fresh_store()


def test_a_dropped_connection_resumes_the_registration_by_polling_its_operation():
    drop = ProvisioningError(errors.NETWORK, "DPS: connection failed (104)")
    prov, clock, network = _provisioner([(202, 1, ASSIGNING), drop, (200, None, assigned())])
    raises(errors.NETWORK, prov.attempt, 60000)
    assert not network.connections[0].open
    assert prov.registration is not None and prov.registration.operation_id == "op-1"
    _nothing_stored()
    state = prov.attempt(60000)
    # The second connection asks about the operation DPS already accepted: it does not register again.
    assert network.published(2) == [POLL + "3&operationId=op-1"], network.published(2)
    assert state["assignment"]["assigned_hub"] == HUB
    assert clock.sleeps == [1000]


def test_429_is_raised_throttled_with_its_retry_after_and_nothing_stored():
    prov, clock, network = _provisioner([(202, 0, ASSIGNING), (429, 7, {"errorCode": 429001, "message": "slow down"})])
    exc = raises(errors.THROTTLED, prov.attempt, 60000)
    assert exc.status == 429 and exc.retry_after == 7 and exc.error_code == 429001
    assert clock.sleeps == []  # the shell never waits after a failure: the supervisor does
    _nothing_stored()
    # The service answered: the connection is held for the next attempt, which polls the same operation on it.
    assert prov.connection is network.connections[0] and prov.connection.open
    network.answer = dps((200, None, assigned()))
    prov.attempt(60000)
    assert network.published(1)[-1] == POLL + "3&operationId=op-1" and len(network.connections) == 1
    assert network.connections[0].disconnected and prov.connection is None


def test_a_service_error_holds_the_connection_and_the_attempt_resumes_on_it():
    prov, clock, network = _provisioner([(503, 2, {"errorCode": 503000, "message": "busy"})])
    raises(errors.SERVICE_UNAVAILABLE, prov.attempt, 60000)
    assert prov.connection is network.connections[0] and not network.connections[0].disconnected
    network.answer = dps((429, 1, {"errorCode": 429001, "message": "slow down"}), (200, None, assigned()))
    raises(errors.THROTTLED, prov.attempt, 60000)
    prov.attempt(60000)
    # Three attempts, one TLS connection: each register request went out on it.
    assert network.published(1) == [REGISTER + "1", REGISTER + "2", REGISTER + "3"], network.published()
    assert len(network.opened) == 1 and prov.connections == 1


def test_a_transport_failure_or_a_final_answer_closes_the_connection():
    drop = ProvisioningError(errors.NETWORK, "DPS: connection failed (104)")
    prov, clock, network = _provisioner([drop])
    raises(errors.NETWORK, prov.attempt, 60000)
    assert prov.connection is None and not network.connections[0].open
    network.answer = dps((401, None, {"errorCode": 401002, "message": "no"}))
    raises(errors.AUTHENTICATION, prov.attempt, 60000)
    assert prov.connection is None and network.connections[1].disconnected


def test_a_held_connection_the_server_dropped_is_replaced_by_a_new_one():
    prov, clock, network = _provisioner([(429, 1, {"errorCode": 429001, "message": "slow down"})])
    raises(errors.THROTTLED, prov.attempt, 60000)
    held = prov.connection
    network.fail["receive"] = ProvisioningError(errors.NETWORK, "DPS: connection failed (-1)")  # end of stream
    network.answer = dps((200, None, assigned()))
    prov.attempt(60000)
    assert not held.open and len(network.connections) == 2
    assert network.published(2) == [REGISTER + "2"], network.published()


def test_the_held_connection_is_pinged_at_half_its_keepalive_and_closed_on_request():
    prov, clock, network = _provisioner([(429, 1, {"errorCode": 429001, "message": "slow down"})])
    raises(errors.THROTTLED, prov.attempt, 60000)
    held = prov.connection
    assert prov.ms_to_ping() == 30000  # keepalive 60 s: a server drops a client silent for 90 s
    clock.sleep_ms(30000)
    assert prov.ms_to_ping() == 0
    prov.keep_alive()
    assert held.pings == 1 and prov.ms_to_ping() == 30000 and prov.connection is held
    # A ping the server does not take: the connection is let go quietly, the next attempt connects again.
    network.fail["ping"] = ProvisioningError(errors.NETWORK, "DPS: connection failed (32)")
    prov.keep_alive()
    assert prov.connection is None and not held.open
    network.answer = dps((429, 1, {"errorCode": 429001, "message": "slow down"}))
    raises(errors.THROTTLED, prov.attempt, 60000)
    second = prov.connection
    assert second is network.connections[1] and second.open
    prov.close()
    assert prov.connection is None and second.disconnected


def test_401_is_final_and_the_registration_starts_again():
    prov, clock, network = _provisioner([(202, 0, ASSIGNING), (401, None, {"errorCode": 401002, "message": "no"})])
    exc = raises(errors.AUTHENTICATION, prov.attempt, 60000)
    assert exc.status == 401 and exc.error_code == 401002
    assert prov.registration is None and prov.connection is None
    _nothing_stored()
    network.answer = dps((200, None, assigned()))
    prov.attempt(60000)
    assert network.published(2) == [REGISTER + "1"], network.published(2)


def test_the_deadline_passes_while_dps_is_silent():
    prov, clock, network = _provisioner([None])
    raises(errors.TIMEOUT, prov.attempt, 5000)
    assert clock.now == 5000 and clock.sleeps == []
    assert network.connections[0].disconnected
    _nothing_stored()


def test_a_retry_after_past_the_deadline_is_not_waited():
    prov, clock, network = _provisioner([(202, 10, ASSIGNING)])
    exc = raises(errors.TIMEOUT, prov.attempt, 5000)
    assert "10000 ms" in exc.message, exc.message
    assert clock.sleeps == [] and network.published() == [REGISTER + "1"]
    _nothing_stored()


def test_a_large_answer_is_streamed_to_flash():
    # Over 2 KB the answer stays in the socket and its certificates go to flash as they arrive.
    padding = "x" * 3000
    prov, clock, network = _provisioner([(200, None, assigned(BUNDLE, {"pad": padding}))])
    state = prov.attempt(60000)
    assert network.connections[0].stream_over == 2048
    assert state["assignment"]["payload"] == {"pad": padding}
    assert [c["sha256"] for c in state["trust_bundle"]["certificates"]] == [CERT_A_SHA256]
    assert Store(STORAGE).load() == state


def test_an_answer_refused_after_its_bundle_streamed_leaves_nothing_in_flash():
    bad = assigned(BUNDLE)
    del bad["registrationState"]["deviceId"]
    prov, clock, network = _provisioner([(200, None, bad)])
    raises(errors.MALFORMED_RESPONSE, prov.attempt, 60000)
    _nothing_stored()


def test_the_dps_context_the_bundle_check_loaded_roots_into_never_serves_dps_again():
    # The bundle's TLS check loads the answer's certificates into the DPS leg's context (its heap block is already
    # there). When the attempt then fails (here the certificate's sha256Thumbprint is wrong), the next one connects
    # with a new context: DPS is never trusted on the strength of a root its own answer brought.
    wrong = {"id": "bundle-1", "etag": "etag-1", "certificates": [{"certificate": CERT_A, "metadata": {}}]}
    wrong["certificates"][0]["metadata"]["sha256Thumbprint"] = "00" * 32
    prov, clock, network = _provisioner([(200, None, assigned(wrong)), (200, None, assigned(BUNDLE))])
    raises(errors.MALFORMED_RESPONSE, prov.attempt, 60000)
    prov.attempt(60000)
    first, second = network.opened[0]["ctx"], network.opened[1]["ctx"]
    assert first is not second


def test_the_dps_token_expires_after_sas_ttl_s():
    prov, clock, network = _provisioner([(200, None, assigned())], sas_ttl_s=600)
    clock.now = 42000
    prov.attempt(60000)
    opened = network.opened[0]
    assert opened["password"].endswith("&se=%d&skn=registration" % (1800000042 + 600)), opened["password"]
    assert opened["user"].startswith("0ne00000001/registrations/sensor-001/api-version=")
