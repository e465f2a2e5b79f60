"""Shared access signature (SAS) tokens: the emulator's own verifier, plus a signer for tests and demos.

Written from the wire facts (reference section 2), not from an SDK, so it can serve as an independent oracle:

- the HMAC is checked over the `sr` value exactly as the client sent it (SDKs differ in `%2f` vs `%2F`), and
  only afterwards is `sr` percent-decoded and compared with the expected resource;
- `sig` arrives percent-encoded and is compared as raw HMAC bytes (constant time);
- DPS accepts `skn=registration` or no `skn`; a hub device token carries no `skn`;
- a token whose `se` is in the past (beyond the allowed clock skew) is expired.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
import urllib.parse
from dataclasses import dataclass

SAS_PREFIX = "SharedAccessSignature "


class SasError(ValueError):
    """A token was refused. `reason` is one of: malformed, bad_key, bad_signature, expired, wrong_resource,
    wrong_key_name."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class SasToken:
    raw_sr: str  # as sent: the signed form
    resource: str  # percent-decoded
    signature: bytes  # decoded HMAC bytes
    expiry: int
    raw_expiry: str
    key_name: str | None

    def __repr__(self):  # the signature is a credential: keep it out of logs and assertion messages
        return f"SasToken(resource={self.resource!r}, expiry={self.expiry}, key_name={self.key_name!r})"


def decode_key(key_b64: str) -> bytes:
    """Decode a base64 key, tolerating missing padding (some tools drop it) but nothing else."""
    text = key_b64.strip()
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SasError("bad_key", "key is not valid base64") from exc


def sign(key_b64: str, message: str) -> str:
    """base64(HMAC-SHA256(base64decode(key), utf8(message)))."""
    digest = hmac.new(decode_key(key_b64), message.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def derive_device_key(group_key_b64: str, registration_id: str) -> str:
    """The per-device key of a group enrollment: the registration id signed with the group key."""
    return sign(group_key_b64, registration_id)


def encode_resource(resource: str, lower_hex: bool = False) -> str:
    """Percent-encode a resource URI for `sr` (every reserved character, `/` included)."""
    encoded = urllib.parse.quote(resource, safe="")
    if lower_hex:
        # The embedded C SDK form: `%2f` instead of `%2F`.
        encoded = re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), encoded)
    return encoded


def generate_sas_token(
    resource: str, key_b64: str, expiry: int, key_name: str | None = None, lower_hex: bool = False
) -> str:
    """Build a token the way a device does. For tests and demos; the emulator itself only verifies."""
    sr = encode_resource(resource, lower_hex=lower_hex)
    signature = sign(key_b64, f"{sr}\n{expiry}")
    token = f"{SAS_PREFIX}sr={sr}&sig={urllib.parse.quote(signature, safe='')}&se={expiry}"
    if key_name is not None:
        token += f"&skn={key_name}"
    return token


def parse_sas_token(token: str) -> SasToken:
    """Split a token into its fields without checking the signature."""
    if not isinstance(token, str) or not token.startswith(SAS_PREFIX):
        raise SasError("malformed", "password is not a SharedAccessSignature token")
    fields: dict[str, str] = {}
    for part in token[len(SAS_PREFIX) :].split("&"):
        name, sep, value = part.partition("=")
        if not sep or not name:
            raise SasError("malformed", f"token field {name or part!r} has no value")
        if name in fields:
            raise SasError("malformed", f"token field {name!r} appears twice")
        fields[name] = value
    for required in ("sr", "sig", "se"):
        if required not in fields:
            raise SasError("malformed", f"token has no {required!r} field")
    raw_expiry = fields["se"]
    if not raw_expiry.isdigit():
        raise SasError("malformed", "token expiry 'se' is not an integer")
    try:
        signature = base64.b64decode(urllib.parse.unquote(fields["sig"]), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SasError("malformed", "token signature 'sig' is not base64") from exc
    key_name = urllib.parse.unquote(fields["skn"]) if "skn" in fields else None
    return SasToken(
        raw_sr=fields["sr"],
        resource=urllib.parse.unquote(fields["sr"]),
        signature=signature,
        expiry=int(raw_expiry),
        raw_expiry=raw_expiry,
        key_name=key_name,
    )


def signature_matches(token: SasToken, key_b64: str) -> bool:
    """Whether the token was signed with this key (over `sr` and `se` exactly as sent)."""
    expected = hmac.new(decode_key(key_b64), f"{token.raw_sr}\n{token.raw_expiry}".encode(), hashlib.sha256).digest()
    return hmac.compare_digest(expected, token.signature)


def resource_matches(token: SasToken, expected_resources) -> bool:
    """Host names are case-insensitive; the path after the host is compared exactly."""

    def normalise(resource: str) -> tuple[str, str]:
        host, _, path = resource.strip("/").partition("/")
        return host.lower(), path

    return normalise(token.resource) in {normalise(r) for r in expected_resources}


def check_token(
    token: SasToken, *, expected_resources, allowed_key_names=(None,), now: float | None = None, clock_skew_s: float = 0
) -> None:
    """Everything except the signature: resource, key name and expiry. Raises SasError."""
    if not resource_matches(token, expected_resources):
        raise SasError(
            "wrong_resource", f"token resource {token.resource!r} is not one of {sorted(expected_resources)}"
        )
    if token.key_name not in allowed_key_names:
        raise SasError("wrong_key_name", f"token key name {token.key_name!r} is not accepted here")
    now = time.time() if now is None else now
    if token.expiry + clock_skew_s <= now:
        raise SasError("expired", f"token expired {int(now - token.expiry)} s ago")


def verify_sas_token(
    token_text: str,
    key_b64: str,
    *,
    expected_resources,
    allowed_key_names=(None,),
    now: float | None = None,
    clock_skew_s: float = 0,
) -> SasToken:
    """Parse and fully verify a token against one key. Returns the parsed token or raises SasError."""
    token = parse_sas_token(token_text)
    if not signature_matches(token, key_b64):
        raise SasError("bad_signature", "token signature does not match the key")
    check_token(
        token,
        expected_resources=expected_resources,
        allowed_key_names=allowed_key_names,
        now=now,
        clock_skew_s=clock_skew_s,
    )
    return token
