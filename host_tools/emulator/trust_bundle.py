"""The `trustBundle` object of a DPS registration result, shaped as the service sends it (reference section 4).

Details that matter to a parser and are reproduced on purpose:
- PEM inside the JSON uses `\\r\\n` line endings with a trailing `\\r\\n`;
- subject/issuer names are written `CN=..., OU=..., O=..., C=...` (most specific first, `, ` separated);
- thumbprints and serial numbers are upper-case hex without separators;
- certificate dates end in `Z` (`notBeforeUtc`), bundle dates do not (`createdDateTime`);
- the etag contains literal double quotes and is derived from the content, so any change of the
  certificates (or of the bundle id) yields a new etag while an unchanged bundle keeps its etag.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import threading

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

# Short names as the service's (.NET) X500 distinguished-name strings print them.
_SHORT_NAMES = {
    NameOID.COMMON_NAME: "CN",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.LOCALITY_NAME: "L",
    NameOID.STATE_OR_PROVINCE_NAME: "S",
    NameOID.COUNTRY_NAME: "C",
    NameOID.EMAIL_ADDRESS: "E",
    NameOID.STREET_ADDRESS: "STREET",
    NameOID.DOMAIN_COMPONENT: "DC",
    NameOID.SERIAL_NUMBER: "SERIALNUMBER",
    NameOID.TITLE: "T",
    NameOID.GIVEN_NAME: "G",
    NameOID.SURNAME: "SN",
}
_NEEDS_QUOTES = set(',+="\n<>#;')


def format_name(name: x509.Name) -> str:
    """`CN=leaf, OU=unit, O=org, C=US`: relative names in reverse encoding order, quoted when needed."""
    parts = []
    for rdn in reversed(name.rdns):
        for attribute in rdn:
            label = _SHORT_NAMES.get(attribute.oid, f"OID.{attribute.oid.dotted_string}")
            value = attribute.value if isinstance(attribute.value, str) else attribute.value.hex()
            if any(ch in _NEEDS_QUOTES for ch in value) or value != value.strip():
                value = '"' + value.replace('"', '""') + '"'
            parts.append(f"{label}={value}")
    return ", ".join(parts)


def serial_hex(cert: x509.Certificate) -> str:
    """The serial as the big-endian two's-complement bytes in upper-case hex (leading 00 when the top bit is set)."""
    number = cert.serial_number
    length = max(1, (number.bit_length() + 8) // 8)  # +8 (not +7) keeps room for the sign bit
    return number.to_bytes(length, "big", signed=True).hex().upper()


def utc_with_z(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def dotnet_datetime(moment: dt.datetime, suffix: str = "") -> str:
    """`2021-09-08T03:27:35.7833333` (seven fractional digits, as .NET round-trip dates print)."""
    moment = moment.astimezone(dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}0" + suffix


def pem_text(cert: x509.Certificate, line_length: int = 64, newline: str = "\r\n") -> str:
    """PEM with the given base64 line length and line ending, ending with a line ending."""
    body = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")
    lines = ["-----BEGIN CERTIFICATE-----"]
    lines += [body[i : i + line_length] for i in range(0, len(body), line_length)]
    lines.append("-----END CERTIFICATE-----")
    return newline.join(lines) + newline


def certificate_entry(cert: x509.Certificate, line_length: int = 64, newline: str = "\r\n") -> dict:
    der = cert.public_bytes(serialization.Encoding.DER)
    return {
        "certificate": pem_text(cert, line_length, newline),
        "metadata": {
            "subjectName": format_name(cert.subject),
            "issuerName": format_name(cert.issuer),
            "sha1Thumbprint": hashlib.sha1(der).hexdigest().upper(),
            "sha256Thumbprint": hashlib.sha256(der).hexdigest().upper(),
            "serialNumber": serial_hex(cert),
            "notBeforeUtc": utc_with_z(cert.not_valid_before_utc),
            "notAfterUtc": utc_with_z(cert.not_valid_after_utc),
            "version": cert.version.value + 1,  # v3 is encoded as 2
        },
    }


def content_etag(bundle_id: str, certs: list[x509.Certificate]) -> str:
    """A quoted, GUID-shaped etag that depends only on the bundle id and the certificates (in order)."""
    digest = hashlib.sha256(bundle_id.encode("utf-8"))
    for cert in certs:
        digest.update(hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest())
    h = digest.hexdigest()
    return f'"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"'


class TrustBundleRegistry:
    """Remembers when each bundle id was first seen and when its content last changed, so the dates in the
    result behave like the service's: `createdDateTime` is stable, `lastModifiedDateTime` moves with the etag."""

    def __init__(self, clock=None):
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._seen: dict[str, tuple[str, dt.datetime, dt.datetime]] = {}
        self._lock = threading.Lock()

    def build(
        self, bundle_id: str, certs: list[x509.Certificate], line_length: int = 64, newline: str = "\r\n"
    ) -> dict:
        etag = content_etag(bundle_id, certs)
        with self._lock:
            now = self._clock()
            previous = self._seen.get(bundle_id)
            if previous is None:
                created = modified = now
            else:
                created = previous[1]
                modified = previous[2] if previous[0] == etag else now
            self._seen[bundle_id] = (etag, created, modified)
        return {
            "certificates": [certificate_entry(cert, line_length, newline) for cert in certs],
            "id": bundle_id,
            "createdDateTime": dotnet_datetime(created),
            "lastModifiedDateTime": dotnet_datetime(modified),
            "etag": etag,
        }
