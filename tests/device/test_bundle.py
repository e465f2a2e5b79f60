# Trust bundle parsing: every certificate kept, PEM normalised, thumbprints checked, bad input classified.
import json

from fixtures import CERT_A, CERT_A_SHA256, CERT_B, CERT_B_SHA256, CERT_C, PemSink, raises

from azprov import bundle, errors
from azprov.encoding import b64encode
from azprov.errors import ProvisioningError
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


def _answer(trust_bundle, payload=None):
    state = {"assignedHub": "h", "deviceId": "d", "payload": payload, "trustBundle": trust_bundle}
    return json.dumps({"operationId": "o", "status": "assigned", "registrationState": state}).encode()


def test_extractor_streams_certificates_in_any_piece_size():
    tb = _bundle(_entry(CERT_A, CERT_A_SHA256), _entry(CERT_B, CERT_B_SHA256, crlf=False))
    # A decoy: the same key names elsewhere (payload) are not the bundle's and stay where they are.
    payload = {
        "certificates": [{"certificate": 'not a cert \\" with quote'}],
        "x": 'a"b\\\\',
        "n": [1.5, -2, True, None],
    }
    body = _answer(tb, payload)
    whole_sink = PemSink()
    whole_value, whole_found = bundle.extract(bytearray(body), whole_sink)
    assert whole_found == [CERT_A_SHA256, CERT_B_SHA256]
    assert whole_sink.pem == (CERT_A + CERT_B).encode()
    # The answer as json.loads gives it, with a 0 in place of each certificate.
    expected = json.loads(body)
    for entry in expected["registrationState"]["trustBundle"]["certificates"]:
        entry["certificate"] = 0
    assert whole_value == expected
    for size in (1, 2, 3, 7, 64, 511, 4096):
        sink = PemSink()
        extractor = bundle.Extractor(sink)
        for start in range(0, len(body), size):
            extractor.feed(memoryview(body)[start : start + size])
        assert extractor.finish() == whole_value, size
        assert extractor.found == whole_found and sink.pem == whole_sink.pem, size
    parsed = bundle.parse(whole_value["registrationState"]["trustBundle"], whole_found, "f" * 64)
    assert parsed["pem"] is None and parsed["pem_sha256"] == "f" * 64
    assert [c["sha256"] for c in parsed["certificates"]] == [CERT_A_SHA256, CERT_B_SHA256]


def test_extractor_refuses_a_bad_certificate_and_a_wrong_thumbprint():
    sink = PemSink()
    bad = _answer(_bundle(_entry(CERT_A), _entry(CERT_A.replace("MII", "MIX"))))
    assert "certificates[1]" in raises(errors.MALFORMED_RESPONSE, bundle.extract, bytearray(bad), sink).message
    value, found = bundle.extract(bytearray(_answer(_bundle(_entry(CERT_A, CERT_B_SHA256)))), PemSink())
    tb = value["registrationState"]["trustBundle"]
    assert "sha256Thumbprint" in raises(errors.MALFORMED_RESPONSE, bundle.parse, tb, found, "0" * 64).message


# --- the streamed certificate reader takes exactly what pem.split() takes -----------------------------------------


def _streamed(pem_text):
    """(sha256 list, PEM written) of a certificate string read as it streams, or the refusal's message."""
    sink = PemSink()
    try:
        _, found = bundle.extract(bytearray(_answer(_bundle({"certificate": pem_text}))), sink)
    except ProvisioningError as exc:
        return exc.message
    return found, sink.pem


def _whole(pem_text):
    """The same from the string parsed whole (pem.split), or the refusal's message."""
    try:
        parsed = bundle.parse(_bundle({"certificate": pem_text}))
    except ProvisioningError as exc:
        return exc.message
    return [c["sha256"] for c in parsed["certificates"]], parsed["pem"]


def _variants():
    lines = CERT_A.rstrip("\n").split("\n")
    body = lines[1:-1]
    flat = "".join(body)
    begin, end = lines[0], lines[-1]
    yield CERT_A
    yield CERT_A.replace("\n", "\r\n")
    yield "\n".join([begin] + [flat[i : i + 76] for i in range(0, len(flat), 76)] + [end])
    yield "\n".join([begin, flat, end])
    yield "\n".join([begin] + [flat[i : i + 5] for i in range(0, len(flat), 5)] + [end]) + "\n\n"
    yield "\n".join("  " + line + " \t" for line in lines)
    yield "\n".join([begin, ""] + body + ["  ", end])
    yield "# a root\nsubject=CN=x\n" + CERT_A + "trailing words\n"
    yield begin + "\n" + flat.rstrip("=") + "\n" + end  # unpadded
    yield begin + "\n" + flat + "==\n" + end  # more padding
    yield begin + "\n" + flat.rstrip("=") + "=\n=\n" + end  # padding over two lines
    # refused
    yield ""
    yield "  \r\n"
    yield "no pem here"
    yield CERT_A + CERT_A
    yield CERT_A + begin + "\n"
    yield CERT_A + end + "\n"
    yield end + "\n" + CERT_A
    yield CERT_A.replace(end, "")
    yield CERT_A.replace(begin, "")
    yield CERT_A.replace(begin, begin.lower())
    yield CERT_A.replace(begin, begin + " x")
    yield CERT_A.replace("\n", "\r")
    yield "\n".join([begin] + body[:2] + [begin] + body[2:] + [end])
    yield "\n".join([begin] + body[:2] + ["-----"] + body[2:] + [end])
    yield "\n".join([begin, body[0] + " " + body[1]] + body[2:] + [end])
    yield "\n".join([begin, body[0][:10] + "!" + body[0][10:]] + body[1:] + [end])
    yield "\n".join([begin, body[0][:10] + "=" + body[0][10:]] + body[1:] + [end])
    yield "\n".join([begin, body[0][:-2] + "=="] + body[1:] + [end])  # padding, then more digits on the next lines
    yield "\n".join([begin, flat.rstrip("=") + "AAA"] + [end])  # 4k + 1 digits
    yield "\n".join([begin, flat.rstrip("=")[:-1] + "=A"] + [end])
    yield "\n".join([begin, flat.replace("+", "-").replace("/", "_")] + [end])  # URL-safe alphabet
    yield "\n".join([begin, "AAAA" * 30, end])  # base64, but not DER
    yield "\n".join([begin, flat[:80], end])  # a DER start, too short
    yield "\n".join([begin, end])


def test_the_streamed_reader_takes_what_pem_split_takes():
    for text in _variants():
        streamed, whole = _streamed(text), _whole(text)
        if isinstance(whole, str):
            # Refused too, in the same words, except that a second certificate is named as such however it is cut.
            assert isinstance(streamed, str), (text, streamed, whole)
            assert streamed == whole or streamed.endswith("holds 2 certificates, expected 1"), (text, streamed, whole)
            continue
        found, pem = streamed
        assert found == whole[0] and found == [CERT_A_SHA256], (text, streamed)
        # Whatever line lengths, endings and padding came in, the PEM written is the normalised one.
        assert pem == CERT_A.encode(), (text, pem)


def test_json_escapes_in_a_certificate_string_are_undone():
    # \/ and \u escapes stand for what they escape (a serializer may write "/" and "+" so), \r\n too.
    escaped = json.dumps(CERT_A)[1:-1].replace("M", "\\u004d").replace("/", "\\/").replace("+", "\\u002B")
    body = _answer(_bundle({"certificate": 0})).replace(
        b'"certificate": 0', b'"certificate": "' + escaped.encode() + b'"'
    )
    sink = PemSink()
    assert bundle.extract(bytearray(body), sink)[1] == [CERT_A_SHA256] and sink.pem == CERT_A.encode()


def _raw_certificate(raw):
    """The message of the refusal of an answer whose certificate string is `raw` (bytes, as they stand in JSON)."""
    body = _answer(_bundle({"certificate": 0})).replace(b'"certificate": 0', b'"certificate": "' + raw + b'"')
    return raises(errors.MALFORMED_RESPONSE, bundle.extract, bytearray(body), PemSink()).message


def test_what_no_certificate_string_holds_is_refused_naming_it():
    where = "trustBundle: certificates[0].certificate "
    text = json.dumps(CERT_A)[1:-1].encode()
    assert _raw_certificate(b"# \xc3\xa9\\n" + text) == where + "is not ASCII text"
    assert _raw_certificate(b"# \\u00e9\\n" + text) == where + "is not ASCII text"
    assert _raw_certificate(b"# \x01\\n" + text) == where + "is not a valid JSON string"
    assert _raw_certificate(b"# \\q\\n" + text) == where + "is not a valid JSON string"
    assert _raw_certificate(b"# \\u00g0\\n" + text) == where + "is not a valid JSON string"


def test_a_certificate_larger_than_the_device_takes_is_refused_naming_it():
    # DER_MAX bytes of DER are taken (the largest root in use is about 2 KB), one more line is not.
    der = bytes((0x30, 0x82)) + bytes(bundle.DER_MAX - 2)
    encoded = b64encode(der)
    pem = "-----BEGIN CERTIFICATE-----\n" + encoded + "\n-----END CERTIFICATE-----\n"
    assert (
        _streamed(pem)[1]
        == pem.replace(encoded, "\n".join(encoded[i : i + 64] for i in range(0, len(encoded), 64))).encode()
    )
    bigger = b64encode(der + bytes(48))
    message = _streamed(pem.replace(encoded, bigger))
    assert message == "trustBundle: certificates[0].certificate is larger than %d bytes (DER)" % bundle.DER_MAX
