# SAS: the public test vectors from the Azure SDKs (shared/reference/dps-mqtt-protocol.md, section 2).
from azprov import sas
from azprov.encoding import b64decode, url_encode


def test_signature_vector_from_sdk_tests():
    assert (
        sas.sign("NMgJDvdKTxjLi+xBxxkDDEwDJxEvOE5u8BiT0mVgPeg=", "sign this message")
        == "8NJRMT83CcplGrAGaUVIUM/md5914KpWVNngSVoF9/M="
    )


def test_derived_group_key_vector():
    assert (
        sas.derive_device_key("NMgJDvdKTxjLi+xBxxkDDEwDJxEvOE5u8BiT0mVgPeg=", "sign this message")
        == "8NJRMT83CcplGrAGaUVIUM/md5914KpWVNngSVoF9/M="
    )


def test_signature_vector_password():
    assert sas.sign("cGFzc3dvcmQ=", "string-to-sign") == "o1n1hiIVgzVA2+krq9ty1Z4xsIJKJZP3dYT8MOi65Y4="


def test_hub_token_vector_with_unpadded_key():
    assert sas.hub_token("host", "device", "key", 12345) == (
        "SharedAccessSignature sr=host%2Fdevices%2Fdevice&sig=wM3XiP6gD960IxP7J5WHqnxQHEcWC6YaQCtoMT%2BkKHc%3D&se=12345"
    )


# Whole tokens, computed outside this code base (CPython hmac and `openssl dgst -sha256 -mac HMAC`, which agree):
# the expected strings are literals, so a wrong string-to-sign, encoding, field order or expiry fails here.
def test_dps_token_vector():
    assert sas.dps_token("0neFEEDC0DE", "myRegistrationId", "cGFzc3dvcmQ=", 1578941692) == (
        "SharedAccessSignature sr=0neFEEDC0DE%2Fregistrations%2FmyRegistrationId"
        "&sig=eeEVsgumyW7Un3F3zAWHeAArx%2BcEkANX1Artqfd9XH0%3D&se=1578941692&skn=registration"
    )


def test_dps_token_vector_with_32_byte_key():
    assert sas.dps_token("0ne00TEST01", "sensor-001", "NMgJDvdKTxjLi+xBxxkDDEwDJxEvOE5u8BiT0mVgPeg=", 1800000000) == (
        "SharedAccessSignature sr=0ne00TEST01%2Fregistrations%2Fsensor-001"
        "&sig=yoxRnN12Sc1dSC1FnuJuRlgwACazfa3L5Zps7A0bc6c%3D&se=1800000000&skn=registration"
    )


def test_hub_token_vector():
    assert sas.hub_token(
        "test-hub.azure-devices.net", "sensor-001", "NMgJDvdKTxjLi+xBxxkDDEwDJxEvOE5u8BiT0mVgPeg=", 1800003600
    ) == (
        "SharedAccessSignature sr=test-hub.azure-devices.net%2Fdevices%2Fsensor-001"
        "&sig=EVjZs9T5pCgKvIhAc5rYn9iU4fi0ktelSaoV64whGz0%3D&se=1800003600"
    )


def test_derived_device_key_vector():
    assert (
        sas.derive_device_key("NMgJDvdKTxjLi+xBxxkDDEwDJxEvOE5u8BiT0mVgPeg=", "fleet-a-0007")
        == "91JRbDUPJRN7n3btKp0ummLAcN8pBUqtjns5xyk5nJI="
    )


def test_hmac_long_key_is_hashed_first():
    # RFC 4231 test case 6: a 131-byte key.
    key = b"\xaa" * 131
    digest = sas.hmac_sha256(key, b"Test Using Larger Than Block-Size Key - Hash Key First")
    assert digest == bytes.fromhex("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")


def test_url_encode_reserved_characters():
    assert url_encode("a+b/c=d e~f_g.h-i") == "a%2Bb%2Fc%3Dd%20e~f_g.h-i"


def test_b64decode_rejects_garbage():
    for bad in ("!!!!", "abc$", "a"):
        try:
            b64decode(bad)
        except ValueError:
            continue
        raise AssertionError("accepted " + bad)
