# The trust bundle from a DPS registration result: validate it and turn it into what the device stores.
import binascii
import hashlib

from azprov import errors
from azprov.errors import ProvisioningError
from azprov.pem import PemError, split


def _bad(message):
    return ProvisioningError(errors.MALFORMED_RESPONSE, "trustBundle: " + message)


def _meta_text(meta, name):
    value = meta.get(name)
    return value if isinstance(value, str) else None


class _TlsCheck:
    # Base64 and DER framing can be right while the certificate inside is not: the TLS stack is the judge, and
    # asking it now keeps a bundle it would refuse out of flash.
    def __init__(self):
        import ssl

        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)

    def accepts(self, der):
        try:
            self._ctx.load_verify_locations(cadata=der)
            return True
        except (ValueError, OSError):  # MicroPython: ValueError("invalid cert"); CPython: ssl.SSLError
            return False


def parse(trust_bundle):
    """registrationState.trustBundle -> None (no bundle) or a dict with id, etag, pem (all certificates,
    "\n" endings), pem_sha256 and certificates (metadata per certificate; sha256 computed here and checked against
    the service's thumbprint when given)."""
    if trust_bundle is None:
        return None
    if not isinstance(trust_bundle, dict):
        raise _bad("is not an object")
    entries = trust_bundle.get("certificates")
    if not isinstance(entries, list) or not entries:
        raise _bad("certificates is missing or empty")
    bundle_id = trust_bundle.get("id")
    etag = trust_bundle.get("etag")
    if not isinstance(bundle_id, str) or not isinstance(etag, str) or not etag:
        raise _bad("id or etag is missing")
    blocks = []
    certificates = []
    tls = _TlsCheck()
    for index, entry in enumerate(entries):
        where = "certificates[%d]" % index
        if not isinstance(entry, dict) or not isinstance(entry.get("certificate"), str):
            raise _bad(where + ".certificate is missing")
        meta = entry.get("metadata")
        if meta is not None and not isinstance(meta, dict):
            raise _bad(where + ".metadata is not an object")
        meta = meta or {}
        try:
            found = list(split(entry["certificate"]))
        except PemError as exc:
            raise _bad("%s.certificate: %s" % (where, exc))
        if len(found) != 1:
            raise _bad(where + ".certificate holds %d certificates, expected 1" % len(found))
        block, der = found[0]
        sha256 = binascii.hexlify(hashlib.sha256(der).digest()).decode().upper()
        claimed = _meta_text(meta, "sha256Thumbprint")
        if claimed and claimed.upper() != sha256:
            raise _bad(where + " does not match its sha256Thumbprint")
        if not tls.accepts(der):
            raise _bad(where + " is not a certificate the TLS stack can load")
        blocks.append(block)
        certificates.append(
            {
                "subject": _meta_text(meta, "subjectName"),
                "issuer": _meta_text(meta, "issuerName"),
                "sha1": _meta_text(meta, "sha1Thumbprint"),
                "sha256": sha256,
                "serial": _meta_text(meta, "serialNumber"),
                "not_before": _meta_text(meta, "notBeforeUtc"),
                "not_after": _meta_text(meta, "notAfterUtc"),
            }
        )
    pem = "".join(blocks)
    return {
        "id": bundle_id,
        "etag": etag,
        "pem": pem,
        "pem_sha256": binascii.hexlify(hashlib.sha256(pem.encode()).digest()).decode(),
        "certificates": certificates,
    }
