# The trust bundle from a DPS registration result: validate it and turn it into what the device stores.
#
# A bundle may hold many large certificates (10 RSA-4096 roots are about 20 KB of JSON). extract() takes them out
# of the received response before json.loads sees it: each certificate string is checked, handed to a sink (the
# store writes it to flash) and overwritten in the response buffer by a 0, so the parsed JSON holds only the small
# rest and the certificates are never in heap twice. parse() then checks the metadata against what was streamed.
import binascii
import hashlib
import json

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
    # asking it now keeps a bundle it would refuse out of flash. One context for the whole bundle: creating one
    # costs about 1.7 KB of GC heap each time, while the certificates it parses live outside the GC heap (about
    # 100 bytes of GC heap per RSA-4096 root, measured by `make bench`).
    _ctx = None

    @classmethod
    def accepts(cls, der):
        import ssl

        try:
            if cls._ctx is None:
                cls._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            cls._ctx.load_verify_locations(cadata=der)
            return True
        except (ValueError, OSError):  # MicroPython: ValueError("invalid cert"); CPython: ssl.SSLError
            return False

    @classmethod
    def release(cls):
        cls._ctx = None


def _certificate(text, where):
    """(pem_block, sha256 hex upper) of the one certificate in `text`; a MALFORMED_RESPONSE error otherwise."""
    try:
        found = list(split(text))
    except PemError as exc:
        raise _bad("%s.certificate: %s" % (where, exc))
    if len(found) != 1:
        raise _bad(where + ".certificate holds %d certificates, expected 1" % len(found))
    block, der = found[0]
    if not _TlsCheck.accepts(der):
        raise _bad(where + " is not a certificate the TLS stack can load")
    return block, binascii.hexlify(hashlib.sha256(der).digest()).decode().upper()


# Where the certificates are in a DPS response: registrationState.trustBundle.certificates[i].certificate.
_PATH = (b"registrationState", b"trustBundle", b"certificates", None, b"certificate")
_SPACE = b" \t\r\n"


def _string_end(buf, i):
    # buf[i] is the opening quote; the index after the closing one (a quote after an odd run of backslashes is
    # escaped). Unterminated: len(buf), and json.loads will refuse the body.
    while True:
        i = buf.find(b'"', i + 1)
        if i < 0:
            return len(buf)
        slashes = 0
        while buf[i - 1 - slashes] == 0x5C:
            slashes += 1
        if not slashes & 1:
            return i + 1


def _next_char(buf, i):
    n = len(buf)
    while i < n and buf[i] in _SPACE:
        i += 1
    return buf[i] if i < n else None


def extract(body, sink):
    """Streams the trust bundle's certificates out of a DPS response `body` (a bytearray, changed in place).

    Each certificate string is checked (one PEM certificate the TLS stack loads), passed to sink.add(pem_block) and
    replaced in `body` by `0` and spaces (still valid JSON, same length). Returns the sha256 (hex, upper case) of
    each certificate in order, [] when there is none. Malformed JSON is left to json.loads, which sees it next."""
    if not isinstance(body, bytearray) or body.find(b'"certificates"') < 0:
        return []
    found = []
    stack = []  # per open container: [is_object, key (bytes) or index]
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c == 0x7B or c == 0x5B:  # { [
            stack.append([c == 0x7B, None if c == 0x7B else 0])
            i += 1
        elif c == 0x7D or c == 0x5D:  # } ]
            if stack:
                stack.pop()
            i += 1
        elif c == 0x2C:  # ,
            if stack and not stack[-1][0]:
                stack[-1][1] += 1
            i += 1
        elif c == 0x22:  # "
            end = _string_end(body, i)
            if stack and stack[-1][0] and _next_char(body, end) == 0x3A:  # an object key
                stack[-1][1] = bytes(body[i + 1 : end - 1])
            elif len(stack) == len(_PATH) and all(want is None or got[1] == want for got, want in zip(stack, _PATH)):
                where = "certificates[%d]" % len(found)
                if stack[3][1] != len(found):
                    raise _bad(where + ".certificate is missing")
                try:
                    text = json.loads(body[i:end])
                except ValueError:
                    raise _bad(where + ".certificate is not a valid JSON string")
                block, sha256 = _certificate(text, where)
                text = None
                sink.add(block)
                found.append(sha256)
                body[i:end] = b"0" + b" " * (end - i - 1)
            i = end
        else:
            i += 1
    _TlsCheck.release()
    return found


def parse(trust_bundle, streamed=None, streamed_sha256=None):
    """registrationState.trustBundle -> None (no bundle) or a dict with id, etag, pem (all certificates,
    "\n" endings; None when they were streamed to flash by extract()), pem_sha256 and certificates (metadata per
    certificate; sha256 computed here and checked against the service's thumbprint when given).

    `streamed`: the sha256 list extract() returned for this response, and `streamed_sha256` the sha256 of the PEM
    the sink wrote; the entries' certificates are then the 0 extract() left in their place."""
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
    streamed = streamed or []
    if streamed and len(streamed) != len(entries):
        raise _bad("%d certificates listed, %d found" % (len(entries), len(streamed)))
    blocks = []
    certificates = []
    for index, entry in enumerate(entries):
        where = "certificates[%d]" % index
        value = entry.get("certificate") if isinstance(entry, dict) else None
        if not (isinstance(value, str) and not streamed) and not (value == 0 and streamed):
            raise _bad(where + ".certificate is missing")
        meta = entry.get("metadata")
        if meta is not None and not isinstance(meta, dict):
            raise _bad(where + ".metadata is not an object")
        meta = meta or {}
        if streamed:
            sha256 = streamed[index]
        else:
            block, sha256 = _certificate(value, where)
            blocks.append(block)
        claimed = _meta_text(meta, "sha256Thumbprint")
        if claimed and claimed.upper() != sha256:
            raise _bad(where + " does not match its sha256Thumbprint")
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
    _TlsCheck.release()
    if streamed:
        pem, pem_sha256 = None, streamed_sha256
    else:
        pem = "".join(blocks)
        pem_sha256 = binascii.hexlify(hashlib.sha256(pem.encode()).digest()).decode()
    return {"id": bundle_id, "etag": etag, "pem": pem, "pem_sha256": pem_sha256, "certificates": certificates}
