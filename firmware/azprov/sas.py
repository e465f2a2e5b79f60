# Shared access signatures for DPS and IoT Hub, computed on the device. There is no hmac module in MicroPython,
# so HMAC-SHA256 is built on hashlib.sha256 (RFC 2104).
import hashlib

from micropython import const

from azprov.encoding import b64decode, b64encode, url_encode

_BLOCK = const(64)


def hmac_sha256(key, message):
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key + b"\x00" * (_BLOCK - len(key))
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    inner.update(message)
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    outer.update(inner.digest())
    return outer.digest()


def sign(key_b64, message):
    return b64encode(hmac_sha256(b64decode(key_b64), message.encode()))


def derive_device_key(group_key_b64, registration_id):
    # Group enrollments: each device's key is the HMAC of its registration id under the group key.
    return sign(group_key_b64, registration_id)


def token(resource, key_b64, expiry, key_name=None):
    encoded = url_encode(resource)
    signature = sign(key_b64, "%s\n%d" % (encoded, expiry))
    out = "SharedAccessSignature sr=%s&sig=%s&se=%d" % (encoded, url_encode(signature), expiry)
    if key_name:
        out += "&skn=" + key_name
    return out


def dps_token(id_scope, registration_id, key_b64, expiry):
    return token("%s/registrations/%s" % (id_scope, registration_id), key_b64, expiry, "registration")


def hub_token(hub_host, device_id, key_b64, expiry):
    return token("%s/devices/%s" % (hub_host, device_id), key_b64, expiry)
