# Trust bundle parsing: every certificate kept, PEM normalised, thumbprints checked, bad input classified.
import json

from fixtures import CERT_A, CERT_A_SHA256, CERT_B, CERT_B_SHA256, CERT_C, raises

from azprov import bundle, errors
from azprov.pem import PemError, der_certificates, split


def _entry(pem, sha256=None, crlf=True):
    text = pem.replace("\n", "\r\n") if crlf else pem
    meta = {
        "subjectName": "CN=fixture",
        "issuerName": "CN=fixture",
        "sha1Thumbprint": "AB" * 20,
        "serialNumber": "6620A198A418AD45",
        "notBeforeUtc": "2019-08-24T14:15:22Z",
        "notAfterUtc": "2039-08-24T14:15:22Z",
        "version": 3,
    }
    if sha256:
        meta["sha256Thumbprint"] = sha256
    return {"certificate": text, "metadata": meta}


def _bundle(*entries):
    return {
        "certificates": list(entries),
        "id": "TestTrustBundle-1",
        "createdDateTime": "2021-09-08T04:19:05",
        "lastModifiedDateTime": "2021-09-08T04:19:05",
        "etag": '"5301e830-0000-0300-0000-613864190000"',
    }


def test_null_bundle():
    assert bundle.parse(None) is None


def test_three_certificates_crlf_and_lf_kept_and_normalised():
    parsed = bundle.parse(_bundle(_entry(CERT_A, CERT_A_SHA256), _entry(CERT_B, crlf=False), _entry(CERT_C)))
    assert len(parsed["certificates"]) == 3
    assert "\r" not in parsed["pem"]
    assert parsed["pem"] == CERT_A + CERT_B + CERT_C
    assert parsed["certificates"][0]["sha256"] == CERT_A_SHA256
    assert parsed["certificates"][1]["sha256"] == CERT_B_SHA256
    assert parsed["etag"] == '"5301e830-0000-0300-0000-613864190000"'
    assert parsed["certificates"][0]["not_after"] == "2039-08-24T14:15:22Z"
    assert len(list(der_certificates(parsed["pem"]))) == 3


def test_lower_case_thumbprint_accepted():
    assert bundle.parse(_bundle(_entry(CERT_A, CERT_A_SHA256.lower())))


def test_thumbprint_mismatch_rejected():
    exc = raises(errors.MALFORMED_RESPONSE, bundle.parse, _bundle(_entry(CERT_A, CERT_B_SHA256)))
    assert "sha256Thumbprint" in exc.message


def test_structural_errors():
    for bad in (
        "x",
        {},
        {"certificates": []},
        {"certificates": [{}], "id": "i", "etag": "e"},
        {"certificates": [_entry(CERT_A)], "etag": "e"},
        {"certificates": [{"certificate": 5}], "id": "i", "etag": "e"},
        {"certificates": [{"certificate": CERT_A, "metadata": "m"}], "id": "i", "etag": "e"},
    ):
        raises(errors.MALFORMED_RESPONSE, bundle.parse, bad)


def test_bad_pem_rejected():
    body = CERT_A.split("\n")
    broken_b64 = "\n".join([body[0], "!!!!" + body[1][4:]] + body[2:])
    truncated = "\n".join(body[:3])
    two_in_one = CERT_A + CERT_B
    for text in (
        broken_b64,
        truncated,
        "hello",
        "",
        two_in_one,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    ):
        raises(errors.MALFORMED_RESPONSE, bundle.parse, _bundle({"certificate": text}))


def test_split_errors_name_problem():
    try:
        list(split("-----END CERTIFICATE-----"))
    except PemError as exc:
        assert "END" in str(exc)
    else:
        raise AssertionError("accepted")


def test_bundle_json_round_trip_from_service_shape():
    text = json.dumps({"trustBundle": _bundle(_entry(CERT_B, CERT_B_SHA256))})
    parsed = bundle.parse(json.loads(text)["trustBundle"])
    assert parsed["pem"] == CERT_B


def test_text_outside_certificate_blocks_ignored():
    # As in the CA file `provision-file create` writes from certifi: a "# name" line before each certificate.
    text = "# DigiCert Global Root G2\n" + CERT_A + "\nsubject=CN=fixture B\r\n" + CERT_B + "trailing words\n"
    blocks = [block for block, _ in split(text)]
    assert blocks == [CERT_A, CERT_B], blocks
    assert len(list(der_certificates(text))) == 2
    try:
        list(split("# only a comment\n"))
    except PemError as exc:
        assert "no certificate" in str(exc)
    else:
        raise AssertionError("a file without a certificate was accepted")


# --- streaming: certificates taken out of the DPS answer as it arrives (bundle.Extractor) -------------------------


class _Sink:
    def __init__(self):
        self.blocks = []

    def start(self):
        self.blocks = []

    def add(self, block):
        self.blocks.append(block)


def _answer(trust_bundle, payload=None):
    state = {"assignedHub": "h", "deviceId": "d", "payload": payload, "trustBundle": trust_bundle}
    return json.dumps({"operationId": "o", "status": "assigned", "registrationState": state}).encode()


def test_extractor_streams_certificates_in_any_piece_size():
    tb = _bundle(_entry(CERT_A, CERT_A_SHA256), _entry(CERT_B, CERT_B_SHA256, crlf=False))
    # A decoy: the same key names elsewhere (payload) are not the bundle's and stay where they are.
    payload = {"certificates": [{"certificate": 'not a cert \\" with quote'}], "x": 'a"b\\\\'}
    body = _answer(tb, payload)
    whole_sink = _Sink()
    whole_rest, whole_found = bundle.extract(bytearray(body), whole_sink)
    assert whole_found == [CERT_A_SHA256, CERT_B_SHA256]
    assert whole_sink.blocks == [block for block, _ in split(CERT_A + CERT_B)]
    assert len(whole_rest) < len(body) - 1000  # the certificates are not in the rest
    rest = json.loads(whole_rest)
    assert rest["registrationState"]["payload"] == payload
    assert [c["certificate"] for c in rest["registrationState"]["trustBundle"]["certificates"]] == [0, 0]
    for size in (1, 2, 3, 7, 64, 511, 4096):
        sink = _Sink()
        extractor = bundle.Extractor(sink)
        for start in range(0, len(body), size):
            extractor.feed(memoryview(body)[start : start + size])
        assert extractor.finish() == whole_rest, size
        assert extractor.found == whole_found and sink.blocks == whole_sink.blocks, size
    parsed = bundle.parse(rest["registrationState"]["trustBundle"], whole_found, "f" * 64)
    assert parsed["pem"] is None and parsed["pem_sha256"] == "f" * 64
    assert [c["sha256"] for c in parsed["certificates"]] == [CERT_A_SHA256, CERT_B_SHA256]


def test_extractor_refuses_a_bad_certificate_and_a_wrong_thumbprint():
    sink = _Sink()
    bad = _answer(_bundle(_entry(CERT_A), _entry(CERT_A.replace("MII", "MIX"))))
    assert "certificates[1]" in raises(errors.MALFORMED_RESPONSE, bundle.extract, bytearray(bad), sink).message
    rest, found = bundle.extract(bytearray(_answer(_bundle(_entry(CERT_A, CERT_B_SHA256)))), _Sink())
    tb = json.loads(rest)["registrationState"]["trustBundle"]
    assert "sha256Thumbprint" in raises(errors.MALFORMED_RESPONSE, bundle.parse, tb, found, "0" * 64).message
