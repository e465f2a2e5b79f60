# X.509 identity: the DER reader, PEM or DER files, key forms, and every refusal naming its field before anything
# connects; the CONNECT rewrite that leaves the password out.
import binascii

import x509_fixtures as fx

from azprov import der, errors, identity, transport
from azprov.errors import ProvisioningError

NOW = 1796000000  # 2026-12-01, after the firmware release


def _der(name):
    return binascii.a2b_base64("".join(getattr(fx, name)))


def _pem(label, data):
    text = binascii.b2a_base64(data).decode().replace("\n", "")
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    return "-----BEGIN %s-----\n%s\n-----END %s-----\n" % (label, "\n".join(lines), label)


def _write(path, data):
    with open(path, "wb" if isinstance(data, (bytes, bytearray)) else "w") as f:
        f.write(data)
    return path


def _refused(function, *args):
    try:
        function(*args)
    except ProvisioningError as exc:
        return exc
    raise AssertionError("accepted")


def test_der_reader_reads_cn_dates_and_keys():
    info = der.certificate(_der("EC_CERT_DER"))
    assert info["common_name"] == "dev-ec" and info["issuer_common_name"] == "fixture x509 root"
    assert info["not_after"] == fx.EC_CERT_NOT_AFTER and info["not_after_text"] == fx.EC_CERT_NOT_AFTER_TEXT
    assert info["key_type"] == "ec" and info["key_bits"] == 256 and len(info["public_key"]) == 65
    rsa = der.certificate(_der("RSA_CERT_DER"))
    assert rsa["common_name"] == "dev-rsa" and rsa["key_type"] == "rsa" and rsa["key_bits"] == 2048
    assert rsa["not_after_text"] == fx.RSA_CERT_NOT_AFTER_TEXT  # GeneralizedTime (after 2049)
    for name in ("EC_SEC1_DER", "EC_PKCS8_DER"):
        key = der.private_key(_der(name))
        assert key["key_type"] == "ec" and key["public_key"] == info["public_key"], name
    for name in ("RSA_PKCS1_DER", "RSA_PKCS8_DER"):
        key = der.private_key(_der(name))
        assert key["key_type"] == "rsa" and key["public_key"] == rsa["public_key"], name
    assert der.private_key(_der("EC_ENCRYPTED_PKCS8_DER"))["key_type"] == "encrypted"
    assert der.private_key(_der("P384_PKCS8_DER"))["key_bits"] != 256
    for bad in (b"", b"\x30\x03\x02\x01", b"\x04\x02ab", _der("EC_CERT_DER")[:100]):
        for function in (der.certificate, der.private_key):
            try:
                function(bad)
            except ValueError:
                continue
            raise AssertionError("parsed garbage")


def test_good_identities_in_every_form():
    cases = [
        (_der("EC_CERT_DER"), _der("EC_SEC1_DER"), "dev-ec"),
        (_pem("CERTIFICATE", _der("EC_CERT_DER")), _pem("EC PRIVATE KEY", _der("EC_SEC1_DER")), "dev-ec"),
        (_pem("CERTIFICATE", _der("EC_CERT_DER")), _pem("PRIVATE KEY", _der("EC_PKCS8_DER")), "dev-ec"),
        (_der("RSA_CERT_DER"), _der("RSA_PKCS1_DER"), "dev-rsa"),
        (_pem("CERTIFICATE", _der("RSA_CERT_DER")), _pem("RSA PRIVATE KEY", _der("RSA_PKCS1_DER")), "dev-rsa"),
        (_der("RSA_CERT_DER"), _pem("PRIVATE KEY", _der("RSA_PKCS8_DER")), "dev-rsa"),
    ]
    for cert, key, cn in cases:
        certificates = identity.read_certificates(_write("device.crt", cert))
        key_der = identity.read_private_key(_write("device.key", key))
        assert identity.check(certificates, key_der, cn, NOW)["common_name"] == cn
    # A chain file: device certificate first, then the intermediates, in PEM or as concatenated DER.
    chain = _pem("CERTIFICATE", _der("EC_CERT_DER")) + _pem("CERTIFICATE", _der("ROOT_DER"))
    assert identity.read_certificates(_write("chain.pem", chain)) == [_der("EC_CERT_DER"), _der("ROOT_DER")]
    blob = _der("EC_CERT_DER") + _der("ROOT_DER")
    assert identity.read_certificates(_write("chain.der", blob)) == [_der("EC_CERT_DER"), _der("ROOT_DER")]


def test_each_bad_file_is_a_configuration_error_naming_the_field():
    ec_cert = [_der("EC_CERT_DER")]
    cases = [
        (identity.read_certificates, ("missing.crt",), "certificate_file"),
        (identity.read_certificates, (_write("junk.crt", b"\x30\x82\x01"),), "certificate_file"),
        (identity.read_certificates, (_write("nocert.pem", _pem("PRIVATE KEY", b"\x30\x00")),), "certificate_file"),
        (identity.read_private_key, ("missing.key",), "private_key_file"),
        (identity.read_private_key, (_write("enc.pem", _pem("ENCRYPTED PRIVATE KEY", b"\x30\x00")),), "encrypted"),
        (identity.check, ([b"\x30\x03\x02\x01\x00"], _der("EC_SEC1_DER"), "dev-ec", NOW), "certificate_file"),
        (identity.check, (ec_cert, _der("EC_ENCRYPTED_PKCS8_DER"), "dev-ec", NOW), "encrypted"),
        (identity.check, (ec_cert, _der("P384_PKCS8_DER"), "dev-ec", NOW), "private_key_file"),
        (identity.check, (ec_cert, _der("OTHER_EC_SEC1_DER"), "dev-ec", NOW), "does not belong"),
        (identity.check, (ec_cert, _der("RSA_PKCS1_DER"), "dev-ec", NOW), "does not belong"),
        (identity.check, (ec_cert, b"\x30\x03\x02\x01\x00", "dev-ec", NOW), "private_key_file"),
    ]
    legacy = "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAAA\n"
    cases.append(
        (identity.read_private_key, (_write("legacy.pem", legacy + "-----END EC PRIVATE KEY-----\n"),), "encrypted")
    )
    for function, args, expected in cases:
        exc = _refused(function, *args)
        assert exc.kind == errors.CONFIGURATION, (expected, exc.kind)
        assert expected in exc.message, (expected, exc.message)
    # A missing file: the field first, then the file (issue 21: "names the file but not the field").
    assert _refused(identity.read_certificates, "missing.crt").message == "certificate_file: missing.crt does not exist"
    assert _refused(identity.read_private_key, "missing.key").message == "private_key_file: missing.key does not exist"


def test_cn_mismatch_names_both_and_expiry_is_judged_with_a_set_clock():
    exc = _refused(identity.check, [_der("EC_CERT_DER")], _der("EC_SEC1_DER"), "sensor-9", NOW)
    assert exc.kind == errors.CONFIGURATION
    assert "sensor-9" in exc.message and "dev-ec" in exc.message and "registration_id" in exc.message
    expired = _refused(identity.check, [_der("EC_EXPIRED_CERT_DER")], _der("EC_SEC1_DER"), "dev-ec", NOW)
    assert expired.kind == errors.AUTHENTICATION and "not_after" in expired.message
    # No clock (an ESP32 before NTP): the dates cannot be judged, the rest is checked.
    assert identity.check([_der("EC_EXPIRED_CERT_DER")], _der("EC_SEC1_DER"), "dev-ec", None)
    # Expiring within the window: accepted (the warning line is checked end to end).
    assert identity.check([_der("EC_CERT_DER")], _der("EC_SEC1_DER"), "dev-ec", fx.EC_CERT_NOT_AFTER - 86400, 30)


def test_no_key_bytes_in_any_message():
    key = _der("OTHER_EC_SEC1_DER")
    exc = _refused(identity.check, [_der("EC_CERT_DER")], key, "dev-ec", NOW)
    text = binascii.b2a_base64(key).decode().strip()
    assert text[:16] not in exc.message and binascii.hexlify(key).decode()[:16] not in exc.message


def test_connect_without_password():
    # umqtt.simple's CONNECT with user "u" and an empty password: flags 0xC2 and a zero-length password at the end.
    packet = bytearray(b"\x10\x14\x00\x04MQTT\x04\xc2\x00\x3c\x00\x03dev\x00\x01u\x00\x00")
    out = transport.drop_empty_password(packet)
    assert bytes(out) == b"\x10\x12\x00\x04MQTT\x04\x82\x00\x3c\x00\x03dev\x00\x01u"
    # A packet with a real password, or anything else, passes unchanged.
    with_password = bytearray(b"\x10\x15\x00\x04MQTT\x04\xc2\x00\x3c\x00\x03dev\x00\x01u\x00\x01p")
    assert transport.drop_empty_password(with_password) == with_password
    assert transport.drop_empty_password(bytearray(b"\x30\x00")) == bytearray(b"\x30\x00")
    # A long user name: the remaining length takes two bytes before and after.
    user = b"u" * 200
    body = b"\x00\x04MQTT\x04\xc2\x00\x3c\x00\x03dev" + bytes((0, 200)) + user + b"\x00\x00"
    long_packet = bytearray(b"\x10" + bytes((len(body) & 0x7F | 0x80, len(body) >> 7)) + body)
    out = transport.drop_empty_password(long_packet)
    size = len(body) - 2
    assert bytes(out[:3]) == b"\x10" + bytes((size & 0x7F | 0x80, size >> 7)) and out[10] == 0x82


def test_a_certificate_file_in_the_wrong_order_names_certificate_file():
    # Issue 21, item 3: the intermediate (here the CA) first was reported as "private_key_file: does not belong".
    assert der.certificate(_der("ROOT_DER"))["ca"] and not der.certificate(_der("EC_CERT_DER"))["ca"]
    swapped = [_der("ROOT_DER"), _der("EC_CERT_DER")]
    exc = _refused(identity.check, swapped, _der("EC_SEC1_DER"), "dev-ec", NOW)
    assert exc.kind == errors.CONFIGURATION
    assert exc.message == (
        "certificate_file: the device certificate (the one private_key_file belongs to) is certificate 2 of 2; "
        "it must come first, then its intermediates"
    ), exc.message
    # A PKCS#8 key read from a PEM file, the same verdict.
    key = identity.read_private_key(_write("device.key", _pem("PRIVATE KEY", _der("EC_PKCS8_DER"))))
    certificates = identity.read_certificates(_write("swapped.pem", "".join(_pem("CERTIFICATE", c) for c in swapped)))
    assert "is certificate 2 of 2" in _refused(identity.check, certificates, key, "dev-ec", NOW).message
    # A CA first, then a device certificate this key does not belong to: the CA is named.
    ca_first = _refused(identity.check, [_der("ROOT_DER"), _der("RSA_CERT_DER")], _der("EC_SEC1_DER"), "dev-ec", NOW)
    assert ca_first.message == (
        "certificate_file: the first certificate (CN=fixture x509 root) is a CA; the device certificate must come "
        "first, then its intermediates"
    ), ca_first.message
    # The right order with a key of another device is still the key's fault.
    other = _refused(identity.check, [_der("EC_CERT_DER"), _der("ROOT_DER")], _der("OTHER_EC_SEC1_DER"), "dev-ec", NOW)
    assert other.message.startswith("private_key_file: does not belong"), other.message
