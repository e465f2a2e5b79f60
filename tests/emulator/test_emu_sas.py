"""The emulator's own SAS verifier, against the public vectors of reference section 2, and its rejections."""

import pytest

from host_tools.emulator.sas import (
    SasError,
    derive_device_key,
    encode_resource,
    generate_sas_token,
    parse_sas_token,
    sign,
    verify_sas_token,
)

NOW = 1_700_000_000
KEY = "NMgJDvdKTxjLi+xBxxkDDEwDJxEvOE5u8BiT0mVgPeg="
DPS_RESOURCE = "0ne00000001/registrations/dev-1"


def test_public_signing_vectors():
    assert sign(KEY, "sign this message") == "8NJRMT83CcplGrAGaUVIUM/md5914KpWVNngSVoF9/M="
    assert sign("cGFzc3dvcmQ=", "string-to-sign") == "o1n1hiIVgzVA2+krq9ty1Z4xsIJKJZP3dYT8MOi65Y4="


def test_group_key_derivation_vector():
    # The derived key is the registration id signed with the group key: same vector as above.
    assert derive_device_key(KEY, "sign this message") == "8NJRMT83CcplGrAGaUVIUM/md5914KpWVNngSVoF9/M="


def test_hub_token_vector_with_unpadded_key():
    assert generate_sas_token("host/devices/device", "key", 12345) == (
        "SharedAccessSignature sr=host%2Fdevices%2Fdevice&sig=wM3XiP6gD960IxP7J5WHqnxQHEcWC6YaQCtoMT%2BkKHc%3D&se=12345"
    )


def test_embedded_c_sdk_string_to_sign_form():
    string_to_sign = encode_resource("0neFEEDC0DE/registrations/myRegistrationId", lower_hex=True) + "\n1578941692"
    assert string_to_sign == "0neFEEDC0DE%2fregistrations%2fmyRegistrationId\n1578941692"


def verify_dps(token, key=KEY, now=NOW, **kwargs):
    return verify_sas_token(
        token, key, expected_resources=[DPS_RESOURCE], allowed_key_names=(None, "registration"), now=now, **kwargs
    )


@pytest.mark.parametrize("skn", ["registration", None])
@pytest.mark.parametrize("lower_hex", [False, True])
def test_dps_token_forms_accepted(skn, lower_hex):
    token = generate_sas_token(DPS_RESOURCE, KEY, NOW + 60, skn, lower_hex=lower_hex)
    assert ("%2f" in token) is lower_hex
    parsed = verify_dps(token)
    assert parsed.resource == DPS_RESOURCE and parsed.key_name == skn
    assert "sig" not in repr(parsed).lower().replace("signature", "")  # repr keeps the signature out


def test_signature_is_checked_over_sr_as_sent():
    # Signed over `%2F` but sent with `%2f`: same resource once decoded, but not what was signed.
    token = generate_sas_token(DPS_RESOURCE, KEY, NOW + 60, "registration")
    tampered = token.replace("%2F", "%2f")
    with pytest.raises(SasError) as info:
        verify_dps(tampered)
    assert info.value.reason == "bad_signature"


@pytest.mark.parametrize(
    "token_kwargs, verify_kwargs, reason",
    [
        ({"key_b64": "cGFzc3dvcmQ="}, {}, "bad_signature"),
        ({"expiry": NOW - 1}, {}, "expired"),
        ({"expiry": NOW}, {}, "expired"),
        ({"resource": "0ne00000001/registrations/dev-2"}, {}, "wrong_resource"),
        ({"resource": "0ne00000002/registrations/dev-1"}, {}, "wrong_resource"),
        ({"key_name": "iothubowner"}, {}, "wrong_key_name"),
    ],
)
def test_rejections(token_kwargs, verify_kwargs, reason):
    args = {"resource": DPS_RESOURCE, "key_b64": KEY, "expiry": NOW + 60, "key_name": "registration", **token_kwargs}
    token = generate_sas_token(**args)
    with pytest.raises(SasError) as info:
        verify_dps(token, **verify_kwargs)
    assert info.value.reason == reason


def test_clock_skew_allowance():
    token = generate_sas_token(DPS_RESOURCE, KEY, NOW - 30, None)
    with pytest.raises(SasError):
        verify_dps(token)
    verify_dps(token, clock_skew_s=60)


def test_hub_token_host_is_case_insensitive_and_skn_refused():
    token = generate_sas_token("My-Hub.azure-devices.net/devices/dev-1", KEY, NOW + 60)
    verify_sas_token(token, KEY, expected_resources=["my-hub.azure-devices.net/devices/dev-1"], now=NOW)
    with pytest.raises(SasError) as info:
        verify_sas_token(token, KEY, expected_resources=["my-hub.azure-devices.net/devices/DEV-1"], now=NOW)
    assert info.value.reason == "wrong_resource"
    with_skn = generate_sas_token("hub/devices/dev-1", KEY, NOW + 60, "device")
    with pytest.raises(SasError) as info:
        verify_sas_token(with_skn, KEY, expected_resources=["hub/devices/dev-1"], now=NOW)
    assert info.value.reason == "wrong_key_name"


@pytest.mark.parametrize(
    "token",
    [
        "sr=a&sig=b&se=1",
        "SharedAccessSignature sr=a&se=1",
        "SharedAccessSignature sr=a&sig=AAAA&se=soon",
        "SharedAccessSignature sr=a&sig=AAAA&se=1&se=2",
        "SharedAccessSignature sr=a&sig=%%%&se=1",
        "SharedAccessSignature sr=a&sig&se=1",
    ],
)
def test_malformed_tokens(token):
    with pytest.raises(SasError) as info:
        parse_sas_token(token)
    assert info.value.reason == "malformed"


def test_bad_key_is_classified():
    with pytest.raises(SasError) as info:
        sign("not base64!", "x")
    assert info.value.reason == "bad_key"
