"""Device keys: the base64 check of a key, and a group enrollment's per-device key derived on the host.

The group key itself never reaches a file or the console; keys never appear in errors.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from host_tools.provisioning.validation import ProvisioningFileError


def decode_key(key_b64: str, what: str) -> bytes:
    try:
        key = base64.b64decode(key_b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ProvisioningFileError(f"{what} is not valid base64") from None  # no value: it is a secret
    if len(key) < 16:
        raise ProvisioningFileError(f"{what} must decode to at least 16 bytes")
    return key


def derive_device_key(group_key_b64: str, registration_id: str) -> str:
    """The per-device key of a DPS group enrollment: base64(HMAC-SHA256(b64decode(group key), utf8(registration id)))."""
    group_key = decode_key(group_key_b64, "group key")
    digest = hmac.new(group_key, registration_id.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")
