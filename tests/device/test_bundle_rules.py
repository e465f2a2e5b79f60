# The trust bundle's rules as a user meets them: the exact "trustBundle: ..." message naming the certificate at fault,
# the metadata each stored certificate keeps, and the extractor taking only the bundle's certificates out.
import binascii
import hashlib
import json

from fixtures import CERT_A, CERT_A_SHA256, CERT_B, CERT_B_SHA256

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


class _Sink:
    def __init__(self):
        self.blocks = []

    def start(self):
        pass

    def add(self, block):
        self.blocks.append(block)


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
    sink = _Sink()
    rest, found = bundle.extract(bytearray(_answer(state)), sink)
    assert found == [CERT_A_SHA256] and sink.blocks == [block for block, _ in split(CERT_A)]
    kept = json.loads(rest)["registrationState"]
    assert kept["payload"] == state["payload"] and kept["certificate"] == "top"
    assert kept["trustBundle"]["certificates"] == [{"certificate": 0, "certificateX": "q"}]
    # A key longer than any of the path's is not mistaken for one of them.
    long_key = "registrationState" + "x" * 40
    rest, found = bundle.extract(bytearray(json.dumps({long_key: {"trustBundle": {}}}).encode()), _Sink())
    assert found == [] and json.loads(rest) == {long_key: {"trustBundle": {}}}


def test_extractor_refusals_name_the_certificate():
    entries = [{"certificate": CERT_A}, {"certificate": CERT_A + CERT_B}]
    body = _answer({"trustBundle": _tb(*entries)})
    assert _message(bundle.extract, bytearray(body), _Sink()) == (
        "trustBundle: certificates[1].certificate holds 2 certificates, expected 1"
    )
    # A certificate string without a PEM block.
    body = b'{"registrationState": {"trustBundle": {"certificates": [{"certificate": "x"}]}}}'
    assert (
        _message(bundle.extract, bytearray(body), _Sink())
        == "trustBundle: certificates[0].certificate: no certificate found"
    )


def test_extractor_ends_a_cut_certificate_so_the_rest_is_refused():
    body = _answer({"trustBundle": _tb({"certificate": CERT_A})})
    cut = body[: body.index(b"MII") + 10]
    extractor = bundle.Extractor(_Sink())
    extractor.feed(cut)
    rest = extractor.finish()
    assert rest.endswith(b'"') and extractor.found == []
    try:
        json.loads(rest)
    except ValueError:
        pass
    else:
        raise AssertionError("a cut answer parsed")


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
    body = _answer({"trustBundle": _tb({"certificate": CERT_B}, {"certificate": bad})})
    assert _message(bundle.extract, bytearray(body), _Sink()) == expected
    # The same context still judges the next bundle: a good certificate after a refused one is taken.
    assert bundle.parse(_tb({"certificate": CERT_A}))["certificates"][0]["sha256"] == CERT_A_SHA256


def test_extractor_names_a_certificate_missing_before_a_present_one():
    body = _answer({"trustBundle": _tb({"certificate": 5}, {"certificate": CERT_A})})
    assert _message(bundle.extract, bytearray(body), _Sink()) == "trustBundle: certificates[0].certificate is missing"


def test_extractor_refuses_a_certificate_string_json_cannot_read():
    body = b'{"registrationState": {"trustBundle": {"certificates": [{"certificate": "\\q"}]}}}'
    # CPython's json refuses the escape; MicroPython's reads it as text, which holds no certificate.
    assert _message(bundle.extract, bytearray(body), _Sink()) in (
        "trustBundle: certificates[0].certificate is not a valid JSON string",
        "trustBundle: certificates[0].certificate: no certificate found",
    )
