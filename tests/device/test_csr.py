# The device's P-384 key and CSR (azprov.csr): scalar multiplication against known points, the key's range with a
# stubbed random source, RFC 6979 signatures, and the CSR and private key as the device's own DER reader and TLS
# stack see them. tests/test_csr_independent.py checks the same output with CPython's `cryptography`.
import binascii
import sys

import csr_fixtures as fx

from azprov import csr, der

OID_SECP384R1 = b"\x2b\x81\x04\x00\x22"
ALG_ECDSA_SHA256 = b"\x30\x0a\x06\x08\x2a\x86\x48\xce\x3d\x04\x03\x02"


def _raises_value_error(function, *args):
    try:
        function(*args)
    except ValueError as exc:
        return exc
    raise AssertionError("accepted")


def _stub(*draws):
    """A random source that hands out `draws` in order and records the sizes asked for."""
    asked = []
    queue = list(draws)

    def random_bytes(size):
        asked.append(size)
        return queue.pop(0)

    return random_bytes, asked


def _signature_values(signature):
    outer = der.tlv(signature, 0)
    assert outer[0] == 0x30 and outer[2] == len(signature)
    parts = der.children(signature, outer[1], outer[2])
    assert len(parts) == 2 and parts[0][0] == 0x02 and parts[1][0] == 0x02
    values = []
    for _, start, end in parts:
        body = signature[start:end]
        assert body[0] < 0x80 and not (len(body) > 1 and body[0] == 0 and body[1] < 0x80), "not minimal DER"
        values.append(int.from_bytes(body, "big"))
    return values


def test_one_times_g_is_the_generator():
    assert csr.public_point(1) == (csr._GX, csr._GY)


def test_small_multiples_of_g():
    assert csr.public_point(2) == fx.P384_2G
    assert csr.public_point(3) == fx.P384_3G
    assert csr.public_point(255) == fx.P384_255G


def test_n_minus_one_times_g_is_minus_g():
    assert csr.public_point(csr._N - 1) == (csr._GX, csr._P - csr._GY)


def test_rfc6979_key_pair():
    assert csr.public_point(fx.RFC6979_D) == (fx.RFC6979_UX, fx.RFC6979_UY)


def test_ladder_does_the_same_work_for_every_scalar():
    # One addition and one doubling per bit position, whatever the bits are (leading zeros included).
    real = csr._add
    calls = [0]

    def counting(p1, p2):
        calls[0] += 1
        return real(p1, p2)

    counts = []
    csr._add = counting
    try:
        for d in (1, 2, 0x5555, fx.RFC6979_D, csr._N - 1):
            calls[0] = 0
            csr.public_point(d)
            counts.append(calls[0])
    finally:
        csr._add = real
    assert counts == [2 * 384] * 5, counts


def test_scalars_out_of_range_are_refused():
    for d in (0, -1, csr._N, csr._N + 1):
        _raises_value_error(csr.public_point, d)
        _raises_value_error(csr.private_key_der, d)
        _raises_value_error(csr.sign, d, b"message")


def test_new_key_takes_48_bytes_in_range():
    random_bytes, asked = _stub(b"\x00" * 47 + b"\x01")
    assert csr.new_key(random_bytes) == 1
    random_bytes, asked = _stub((csr._N - 1).to_bytes(48, "big"))
    assert csr.new_key(random_bytes) == csr._N - 1
    assert asked == [48]


def test_new_key_redraws_out_of_range_values():
    # zero, n itself and all-ones are rejected (no reduction mod n: that would bias the key); the next draw is kept
    random_bytes, asked = _stub(b"\x00" * 48, csr._N.to_bytes(48, "big"), b"\xff" * 48, b"\x42" * 48)
    assert csr.new_key(random_bytes) == int.from_bytes(b"\x42" * 48, "big")
    assert asked == [48, 48, 48, 48]


def test_new_key_refuses_a_broken_random_source():
    random_bytes, asked = _stub(*([b"\x00" * 48] * 20))
    _raises_value_error(csr.new_key, random_bytes)
    assert len(asked) == 8
    random_bytes, _ = _stub(b"\x01" * 16)
    assert "16 bytes" in str(_raises_value_error(csr.new_key, random_bytes))


def test_new_key_default_source():
    first, second = csr.new_key(), csr.new_key()
    assert 0 < first < csr._N and 0 < second < csr._N and first != second


def test_signatures_match_rfc6979_vectors():
    for message, r, s in fx.RFC6979_SHA256:
        assert _signature_values(csr.sign(fx.RFC6979_D, message)) == [r, s], message


def test_csr_is_the_known_bytes():
    assert csr.csr_der(fx.RFC6979_D, fx.COMMON_NAME) == binascii.a2b_base64(fx.CSR_DER)


def test_csr_parses_with_der_reader():
    d = csr.new_key()
    request = csr.csr_der(d, "reg-id.with_chars:42")
    outer = der.tlv(request, 0)
    assert outer[0] == 0x30 and outer[2] == len(request)
    info, algorithm, signature = der.children(request, outer[1], outer[2])
    assert request[algorithm[1] - 2 : algorithm[2]] == ALG_ECDSA_SHA256
    version, subject, spki, attributes = der.children(request, info[1], info[2])
    assert request[version[1] - 2 : version[2]] == b"\x02\x01\x00"
    assert der._common_name(request, subject) == "reg-id.with_chars:42"
    rdn = der.children(request, subject[1], subject[2])[0]
    attribute = der.children(request, rdn[1], rdn[2])[0]
    assert der.children(request, attribute[1], attribute[2])[1][0] == 0x0C  # UTF8String
    x, y = csr.public_point(d)
    point = b"\x04" + x.to_bytes(48, "big") + y.to_bytes(48, "big")
    assert der._public_key(request, spki) == ("ec", OID_SECP384R1, point)
    assert attributes[0] == 0xA0 and attributes[1] == attributes[2]  # [0], empty
    assert signature[0] == 0x03 and request[signature[1]] == 0  # BIT STRING, no unused bits
    r, s = _signature_values(request[signature[1] + 1 : signature[2]])
    assert 0 < r < csr._N and 0 < s < csr._N
    # signed over the DER of certificationRequestInfo, exactly as it appears in the request
    assert request[signature[1] + 1 : signature[2]] == csr.sign(d, request[outer[1] : info[2]])


def test_csr_refuses_an_empty_common_name():
    _raises_value_error(csr.csr_der, 1, "")


def test_private_key_parses_with_der_reader():
    key = csr.private_key_der(fx.RFC6979_D)
    info = der.private_key(key)
    point = b"\x04" + fx.RFC6979_UX.to_bytes(48, "big") + fx.RFC6979_UY.to_bytes(48, "big")
    assert info["key_type"] == "ec" and info["curve"] == OID_SECP384R1 and info["public_key"] == point
    assert der.certificate(binascii.a2b_base64(fx.CERT_DER))["public_key"] == point
    outer = der.tlv(key, 0)
    version, scalar = der.children(key, outer[1], outer[2])[:2]
    assert key[version[1] : version[2]] == b"\x01"
    assert int.from_bytes(key[scalar[1] : scalar[2]], "big") == fx.RFC6979_D and scalar[2] - scalar[1] == 48


def test_private_key_loads_with_its_certificate_into_tls():
    cert = binascii.a2b_base64(fx.CERT_DER)
    key = csr.private_key_der(fx.RFC6979_D)
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if sys.implementation.name == "micropython":
        # DER, as azprov.transport hands it over; raises ValueError("invalid key") when mbedTLS lacks secp384r1.
        # (mbedTLS does not check here that key and certificate belong together: test_private_key_parses_with_der_
        # reader does.)
        ctx.load_cert_chain(cert, key)
    else:
        # CPython's OpenSSL reads PEM files and does check that the key belongs to the certificate.
        with open("cert.pem", "w") as f:
            f.write(_pem("CERTIFICATE", cert))
        with open("key.pem", "w") as f:
            f.write(_pem("EC PRIVATE KEY", key))
        ctx.load_cert_chain("cert.pem", "key.pem")


def _pem(label, data):
    text = binascii.b2a_base64(data).decode().replace("\n", "")
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    return "-----BEGIN %s-----\n%s\n-----END %s-----\n" % (label, "\n".join(lines), label)
