# The trust bundle's rules as a user meets them: the exact "trustBundle: ..." message naming the certificate at fault,
# the metadata each stored certificate keeps, and the extractor taking only the bundle's certificates out.
import binascii
import hashlib
import json

from fixtures import CERT_A, CERT_A_SHA256, CERT_B, CERT_B_SHA256, PemSink

from azprov import bundle, errors
from azprov.errors import ProvisioningError
from azprov.pem import split

META = {
    "subjectName": "CN=Root A",
    "issuerName": "CN=Root A",
    "sha1Thumbprint": "AB" * 20,
    "serialNumber": "6620A198A418AD45",
    "notBeforeUtc": "2019-08-24T14:15:22Z",
    "notAfterUtc": "2039-08-24T14:15:22Z",
}


def _tb(*entries, **fields):
    doc = {"id": "TB-1", "etag": '"e1"', "certificates": list(entries)}
    doc.update(fields)
    return doc


def _message(fn, *args):
    try:
        fn(*args)
    except ProvisioningError as exc:
        assert exc.kind == errors.MALFORMED_RESPONSE, exc.kind
        return exc.message
    raise AssertionError("accepted")


def test_each_refusal_names_what_is_wrong():
    good = {"certificate": CERT_A}
    cases = [
        ([1], "trustBundle: is not an object"),
        ({"id": "TB", "etag": "e"}, "trustBundle: certificates is missing or empty"),
        (_tb(), "trustBundle: certificates is missing or empty"),
        (_tb(good, etag=""), "trustBundle: id or etag is missing"),
        (_tb(good, id=None), "trustBundle: id or etag is missing"),
        (_tb(good, etag=5), "trustBundle: id or etag is missing"),
        (_tb(good, {"certificate": 7}), "trustBundle: certificates[1].certificate is missing"),
        (_tb(good, "x"), "trustBundle: certificates[1].certificate is missing"),
        (_tb({"certificate": CERT_A, "metadata": "m"}), "trustBundle: certificates[0].metadata is not an object"),
        (
            _tb({"certificate": CERT_A + CERT_B}),
            "trustBundle: certificates[0].certificate holds 2 certificates, expected 1",
        ),
        (_tb({"certificate": "no pem here"}), "trustBundle: certificates[0].certificate: no certificate found"),
        (
            _tb(good, {"certificate": CERT_B, "metadata": {"sha256Thumbprint": CERT_A_SHA256}}),
            "trustBundle: certificates[1] does not match its sha256Thumbprint",
        ),
    ]
    for tb, expected in cases:
        assert _message(bundle.parse, tb) == expected, (expected, _message(bundle.parse, tb))


def test_stored_metadata_and_pem_digest():
    meta = dict(META, sha256Thumbprint=CERT_A_SHA256.lower(), version=3)
    parsed = bundle.parse(_tb({"certificate": CERT_A.replace("\n", "\r\n"), "metadata": meta}, {"certificate": CERT_B}))
    assert (parsed["id"], parsed["etag"]) == ("TB-1", '"e1"')
    first, second = parsed["certificates"]
    assert first == {
        "subject": "CN=Root A",
        "issuer": "CN=Root A",
        "sha1": "AB" * 20,
        "sha256": CERT_A_SHA256,
        "serial": "6620A198A418AD45",
        "not_before": "2019-08-24T14:15:22Z",
        "not_after": "2039-08-24T14:15:22Z",
    }
    assert second == {
        "subject": None,
        "issuer": None,
        "sha1": None,
        "sha256": CERT_B_SHA256,
        "serial": None,
        "not_before": None,
        "not_after": None,
    }
    pem = "".join(block for block, _ in split(CERT_A + CERT_B))
    assert parsed["pem"] == pem and "\r" not in pem
    assert parsed["pem_sha256"] == binascii.hexlify(hashlib.sha256(pem.encode()).digest()).decode()
    # Metadata of the wrong type is dropped, not stored.
    odd = bundle.parse(_tb({"certificate": CERT_A, "metadata": {"subjectName": 5, "sha256Thumbprint": ""}}))
    assert odd["certificates"][0]["subject"] is None and odd["certificates"][0]["sha256"] == CERT_A_SHA256


def test_streamed_bundles_are_checked_against_what_was_streamed():
    rest = _tb({"certificate": 0}, {"certificate": 0, "metadata": {"sha256Thumbprint": CERT_B_SHA256}})
    parsed = bundle.parse(rest, [CERT_A_SHA256, CERT_B_SHA256], "ab" * 32)
    assert parsed["pem"] is None and parsed["pem_sha256"] == "ab" * 32
    assert [c["sha256"] for c in parsed["certificates"]] == [CERT_A_SHA256, CERT_B_SHA256]
    assert _message(bundle.parse, rest, [CERT_A_SHA256], "ab" * 32) == "trustBundle: 2 certificates listed, 1 found"
    assert _message(bundle.parse, _tb({"certificate": CERT_A}), [CERT_A_SHA256], "ab" * 32) == (
        "trustBundle: certificates[0].certificate is missing"
    )
    assert _message(bundle.parse, _tb({"certificate": 0})) == "trustBundle: certificates[0].certificate is missing"


def _answer(state):
    return json.dumps({"operationId": "o", "status": "assigned", "registrationState": state}).encode()


def test_extractor_takes_only_the_bundle_certificates():
    # Certificates at other places of the answer (the payload, a differently named key) are the application's.
    state = {
        "assignedHub": "h",
        "deviceId": "d",
        "payload": {"trustBundle": {"certificates": [{"certificate": "p"}]}},
        "trustBundle": {"id": "TB", "etag": "e", "certificates": [{"certificate": CERT_A, "certificateX": "q"}]},
        "certificate": "top",
    }
    sink = PemSink()
    value, found = bundle.extract(bytearray(_answer(state)), sink)
    assert found == [CERT_A_SHA256] and sink.pem == CERT_A.encode()
    kept = value["registrationState"]
    assert kept["payload"] == state["payload"] and kept["certificate"] == "top"
    assert kept["trustBundle"]["certificates"] == [{"certificate": 0, "certificateX": "q"}]
    # A key longer than any of the path's is not mistaken for one of them.
    long_key = "registrationState" + "x" * 40
    value, found = bundle.extract(bytearray(json.dumps({long_key: {"trustBundle": {}}}).encode()), PemSink())
    assert found == [] and value == {long_key: {"trustBundle": {}}}


def test_extractor_refusals_name_the_certificate():
    entries = [{"certificate": CERT_A}, {"certificate": CERT_A + CERT_B}]
    body = _answer({"trustBundle": _tb(*entries)})
    assert _message(bundle.extract, bytearray(body), PemSink()) == (
        "trustBundle: certificates[1].certificate holds 2 certificates, expected 1"
    )
    # A certificate string without a PEM block.
    body = b'{"registrationState": {"trustBundle": {"certificates": [{"certificate": "x"}]}}}'
    assert (
        _message(bundle.extract, bytearray(body), PemSink())
        == "trustBundle: certificates[0].certificate: no certificate found"
    )


def test_an_answer_cut_anywhere_is_refused():
    # Inside a certificate, a key, a string, a number, between members: never a partial answer taken as whole.
    body = _answer({"trustBundle": _tb({"certificate": CERT_A}), "payload": {"n": 12345}})
    for end in (body.index(b"MII") + 10, body.index(b"trustB") + 3, body.index(b"TB-1") + 2, body.index(b"123") + 2):
        extractor = bundle.Extractor(PemSink())
        extractor.feed(body[:end])
        assert _message(extractor.finish) == "response body is not valid JSON", end
    for end in range(len(body)):
        try:
            bundle.extract(body[:end], PemSink())
        except ProvisioningError as exc:
            assert exc.kind == errors.MALFORMED_RESPONSE
        else:
            raise AssertionError("a cut answer parsed: %r" % body[:end])


def test_the_answer_parsed_in_pieces_is_what_json_loads_gives():
    # The certificate entries and the issued chain are parsed one element at a time; spaces anywhere, empty arrays.
    body = (
        b' { "registrationState" : { "issuedCertificateChain" : [ "bGVhZg==" , "Y2E=" ] , "trustBundle" : {'
        b' "certificates" : [ { "certificate" : 0 , "metadata" : { "n" : [ 1 , 2 ] } } , 5 , [ ] , null ] ,'
        b' "id" : [ ] } , "payload" : { "certificates" : [ 1 , 2 ] } } , "status" : "assigned" } '
    )
    assert bundle.extract(body, PemSink()) == (json.loads(body), [])
    assert bundle.extract(b"[]", PemSink())[0] == [] and bundle.extract(b" 7 ", PemSink())[0] == 7
    assert bundle.extract(b'"text"', PemSink())[0] == "text"
    deep = b'{"a":' * 400 + b"[" * 400 + b"]" * 400 + b"}" * 400  # one byte a level while it streams
    assert bundle.extract(deep, PemSink())[0] == json.loads(deep)
    chain = b'{"registrationState": {"issuedCertificateChain": %s}}'
    entries = b'{"registrationState": {"trustBundle": {"certificates": %s}}}'
    for bad in (
        b"",
        b"{",
        b'{"a": [1}',
        b'{"a": tru}',
        b'{"a": 1}x',
        b'{"a": 1} {}',
        b'{"a": "\xc0\xaf"}',  # an overlong "/": MicroPython's decoder would take it
        chain % b'["a",]',
        chain % b'[,"a"]',
        chain % b'["a",,"b"]',
        chain % b'["a" "b"]',
        entries % b"[{},]",
        entries % b"[{} {}]",
        entries % b"[{}}",
        b'{"a": [1}}',  # MicroPython's json.loads would take it
        b"{}}",
    ):
        assert _message(bundle.extract, bad, PemSink()) == "response body is not valid JSON", bad
    # A repeated key above an array parsed in pieces: which one is meant?
    repeated = "response body holds registrationState.issuedCertificateChain more than once"
    for bad in (
        b'{"registrationState": {"issuedCertificateChain": ["a"], "issuedCertificateChain": ["b"]}}',
        b'{"registrationState": {"issuedCertificateChain": ["a"]}, "registrationState": {}}',
    ):
        assert _message(bundle.extract, bad, PemSink()) == repeated, bad


def _pem_of(der):
    text = binascii.b2a_base64(der).decode().replace("\n", "")
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


def test_a_certificate_the_tls_stack_refuses_is_named():
    # Right PEM and outer DER shape, but the inside is not a certificate: only the TLS stack can tell.
    der = bytearray(list(split(CERT_A))[0][1])
    der[4] = 0x04  # the TBSCertificate SEQUENCE becomes an OCTET STRING
    bad = _pem_of(bytes(der))
    expected = "trustBundle: certificates[1] is not a certificate the TLS stack can load"
    assert _message(bundle.parse, _tb({"certificate": CERT_B}, {"certificate": bad})) == expected
    # Streamed: the extractor takes it (its PEM and DER shape are right), and the check of what the sink wrote, once
    # the DPS connection is closed, refuses it.
    body = _answer({"trustBundle": _tb({"certificate": CERT_B}, {"certificate": bad})})
    sink = PemSink()
    bundle.extract(bytearray(body), sink)
    with open("streamed.pem", "wb") as f:
        f.write(sink.pem)
    assert _message(bundle.check_streamed, "streamed.pem") == expected
    # The same context still judges the next bundle: a good certificate after a refused one is taken.
    assert bundle.parse(_tb({"certificate": CERT_A}))["certificates"][0]["sha256"] == CERT_A_SHA256


def test_extractor_names_a_certificate_missing_before_a_present_one():
    body = _answer({"trustBundle": _tb({"certificate": 5}, {"certificate": CERT_A})})
    assert _message(bundle.extract, bytearray(body), PemSink()) == "trustBundle: certificates[0].certificate is missing"


def test_extractor_refuses_a_certificate_string_json_cannot_read():
    body = b'{"registrationState": {"trustBundle": {"certificates": [{"certificate": "\\q"}]}}}'
    # CPython's json refuses the escape; MicroPython's reads it as text, which holds no certificate.
    assert _message(bundle.extract, bytearray(body), PemSink()) in (
        "trustBundle: certificates[0].certificate is not a valid JSON string",
        "trustBundle: certificates[0].certificate: no certificate found",
    )
