"""The secrets scan: searches outputs and files for anything that authenticates a device, independently of what the
firmware meant to send. Its inputs are the keys, every SAS token the emulator actually received on the wire
(`--record-credentials`), the private keys of a PKI folder, and the device keys a signature is checked against.

What it reports (`Finding`s, never the secret itself):
- a key, in plain or percent-encoded form;
- a received token, its signature (plain or percent-encoded), or the words `SharedAccessSignature` / `sig=`;
- private key material: a PEM `PRIVATE KEY` block or any base64 line of one of the PKI's private keys;
- any base64 string of HMAC-SHA256 length (32 bytes), whatever its expiry or encoding: it is reported as
  `verified signature` when it verifies under a device key for a device resource and an expiry anywhere in a
  window around the run (so a signature made with another expiry is still recognised), else as
  `HMAC-length base64` (nothing legitimate the device or emulator writes has that shape).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

# 43 base64 characters and one "=" is exactly 32 bytes; the percent-encoded form spells "+", "/" and "=" as %2B,
# %2F and %3D.
_B64_32 = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{43}=")
_B64_32_ENCODED = re.compile(r"(?<![A-Za-z0-9%])(?:[A-Za-z0-9]|%2[BbFf]){43}%3[Dd]")
_PEM_PRIVATE = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")


@dataclass(frozen=True)
class Finding:
    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclass
class Signer:
    """A device key and the resources it signs for (`{scope}/registrations/{id}`, `{hub}/devices/{id}`)."""

    key_b64: str
    resources: list[str]


def _encoded(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def token_signature(token: str) -> str | None:
    fields = dict(urllib.parse.parse_qsl(token.partition(" ")[2]))
    return fields.get("sig")


def private_key_lines(folder: Path) -> set[str]:
    """What gives away the private keys in `folder` (recursively): each base64 line of a PEM private key that no
    certificate there also holds (an EC key's PEM ends with its public key, which its certificate carries too), and
    each key's private value in hex."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key_lines, public_text, values = set(), "", set()
    for path in folder.rglob("*.pem"):
        text = path.read_text(errors="replace")
        if "PRIVATE KEY" not in text:
            public_text += text
            continue
        key_lines.update(line.strip() for line in text.splitlines() if len(line.strip()) >= 40 and "-----" not in line)
        key = load_pem_private_key(text.encode(), None)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            values.add("%x" % key.private_numbers().private_value)
        elif isinstance(key, rsa.RSAPrivateKey):
            values.add("%x" % key.private_numbers().d)
    return {line for line in key_lines if line not in public_text} | values


def _verifies(candidate: bytes, signers: list[Signer], expiries: range) -> bool:
    for signer in signers:
        key = base64.b64decode(signer.key_b64)
        for resource in signer.resources:
            prefix = f"{_encoded(resource)}\n".encode()
            for expiry in expiries:
                mac = hmac.new(key, prefix + str(expiry).encode(), hashlib.sha256).digest()
                if hmac.compare_digest(mac, candidate):
                    return True
    return False


def issued_key_forms(state_json: Path) -> set[str]:
    """What gives away the private key of an operational certificate a device stored after certificate issuance
    (state.json's identity entry): the key's base64, every line of its PEM form, its DER in hex and the private
    scalar in decimal and hex."""
    import json

    from cryptography.hazmat.primitives import serialization

    identity = json.loads(Path(state_json).read_text()).get("identity")
    if not identity:
        return set()
    der = base64.b64decode(identity["key"])
    key = serialization.load_der_private_key(der, None)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    value = key.private_numbers().private_value
    forms = {identity["key"], der.hex(), str(value), format(value, "x")}
    forms.update(line for line in pem.splitlines() if line and not line.startswith("-----"))
    return forms


def scan(
    texts: dict[str, str],
    keys: list[str],
    received: list[dict],
    signers: list[Signer],
    expiries: range,
    private_lines: set[str] = frozenset(),
) -> list[Finding]:
    """Everything in `texts` (name -> content) that is or reveals a secret."""
    needles: dict[str, str] = {}
    for key in keys:
        needles[key] = "a key"
        needles[_encoded(key)] = "a key (percent-encoded)"
    for record in received:
        token = record.get("password")
        if not token:
            continue
        needles[token] = f"a token received by the {record['endpoint']}"
        sig = token_signature(token)
        if sig:
            needles[sig] = f"the signature of a token received by the {record['endpoint']}"
            needles[_encoded(sig)] = f"the signature of a token received by the {record['endpoint']} (encoded)"
    for line in private_lines:
        needles[line] = "a line of a private key"
    needles["SharedAccessSignature"] = "the word SharedAccessSignature"
    needles["sig="] = "a sig= field"

    findings: list[Finding] = []
    checked: dict[bytes, bool] = {}
    for where, text in texts.items():
        for needle, what in needles.items():
            if needle in text:
                findings.append(Finding(where, what))
        if _PEM_PRIVATE.search(text):
            findings.append(Finding(where, "a PEM private key"))
        candidates = _B64_32.findall(text) + [urllib.parse.unquote(m) for m in _B64_32_ENCODED.findall(text)]
        for candidate in candidates:
            try:
                raw = base64.b64decode(candidate, validate=True)
            except (binascii.Error, ValueError):
                continue
            if len(raw) != 32:
                continue
            if raw not in checked:
                checked[raw] = _verifies(raw, signers, expiries)
            findings.append(Finding(where, "a verified signature" if checked[raw] else "HMAC-length base64"))
    return findings
