# Certificate issuance in the DPS shell (azprov.provision.Provisioner) against a scripted DPS on a fake connection:
# the request carries a CSR for a new key under api-version 2025-07-01-preview, the issued chain is checked against
# that key and committed with the assignment inside state.json, and an answer without a chain (an enrollment with no
# certificate policy) or with someone else's certificate is a classified error that stores nothing.
import json
import sys

from csr_fixtures import CERT_DER, COMMON_NAME, RFC6979_D
from fixtures import raises
from shell_fakes import STORAGE, FakeClock, Network, install, provisioning
from test_provision_shell import CA_FILE, _nothing_stored, assigned, dps, setup, teardown  # noqa: F401

import azprov
from azprov import csr, errors
from azprov.encoding import b64decode
from azprov.provision import Provisioner
from azprov.store import Store

setup_function = setup
teardown_function = teardown


_bodies = []


def _issuing(answers, key=RFC6979_D):
    clock = FakeClock()
    service = dps(*answers)
    del _bodies[:]

    def recording(topic, body):
        _bodies.append(body)
        return service(topic, body)

    network = install(Network(clock, recording))
    cfg = provisioning(dps_ca_file=CA_FILE, certificate_issuance=True)
    # The provisioner lets go of azprov.csr after each key (azprov.release): put back the module patched here, so
    # the next import finds it and not a fresh copy.
    sys.modules["azprov.csr"] = azprov.csr = csr
    saved = csr.new_key
    csr.new_key = lambda random_bytes=None: key
    return Provisioner(cfg, Store(STORAGE), clock), network, saved


def _with_chain(chain):
    answer = assigned()
    answer["registrationState"]["issuedCertificateChain"] = chain
    return answer


def test_the_request_carries_a_csr_and_the_issued_identity_is_committed():
    prov, network, saved = _issuing([(200, None, _with_chain([CERT_DER]))])
    try:
        state = prov.attempt(60000)
    finally:
        csr.new_key = saved
    assert "api-version=2025-07-01-preview" in network.opened[0]["user"]
    body = json.loads(_bodies[0])
    request = b64decode(body["csr"])
    assert request == csr.csr_der(RFC6979_D, COMMON_NAME) and body["registrationId"] == COMMON_NAME
    identity = Store(STORAGE).load()["identity"]
    assert identity == state["identity"]
    assert b64decode(identity["key"]) == csr.private_key_der(RFC6979_D)
    assert identity["chain"] == [CERT_DER] and identity["subject"] == COMMON_NAME
    assert 0 < identity["not_before"] < identity["not_after"]


def test_no_chain_is_a_classified_error_naming_the_missing_policy():
    prov, network, saved = _issuing([(200, None, assigned())])
    try:
        error = raises(errors.ASSIGNMENT_FAILED, prov.attempt, 60000)
    finally:
        csr.new_key = saved
    assert "certificate policy" in error.message and "certificate_issuance" in error.message
    assert prov.registration is None  # the next attempt registers anew, with a new CSR
    _nothing_stored()


def test_a_certificate_for_another_key_is_refused():
    prov, network, saved = _issuing([(200, None, _with_chain([CERT_DER]))], key=RFC6979_D + 1)
    try:
        error = raises(errors.MALFORMED_RESPONSE, prov.attempt, 60000)
    finally:
        csr.new_key = saved
    assert "not a certificate for this device" in error.message
    _nothing_stored()


def test_a_malformed_chain_is_refused():
    for chain in ([], "abc", [7], ["a", "b", "c", "d", "e"]):
        prov, network, saved = _issuing([(200, None, _with_chain(chain))])
        try:
            raises(errors.MALFORMED_RESPONSE, prov.attempt, 60000)
        finally:
            csr.new_key = saved
        _nothing_stored()
        teardown()
        setup()
