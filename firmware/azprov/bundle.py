# The trust bundle from a DPS registration result: validate it and turn it into what the device stores.
#
# A bundle may hold many large certificates (10 RSA-4096 roots are about 20 KB of JSON). extract() takes them out
# of the received response before json.loads sees it: each certificate string is checked, handed to a sink (the
# store writes it to flash) and overwritten in the response buffer by a 0, so the parsed JSON holds only the small
# rest and the certificates are never in heap twice. parse() then checks the metadata against what was streamed.
import binascii
import hashlib
import json

from micropython import const

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
        try:
            cls.prepare()
            cls._ctx.load_verify_locations(cadata=der)
            return True
        except (ValueError, OSError):  # MicroPython: ValueError("invalid cert"); CPython: ssl.SSLError
            return False

    @classmethod
    def prepare(cls):
        """Makes the context now: its one block (about 1.7 KB) is found before the DPS connection fragments the heap,
        not while the answer streams in (measured: a 42 KB heap then has 15 KB free but no 1.7 KB block)."""
        import ssl

        if cls._ctx is None:
            cls._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)

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
_KEY_MAX = const(32)  # longer keys are kept only as their first bytes: none of _PATH's is that long


class Extractor:
    """Takes the trust bundle's certificates out of a DPS response fed in pieces (feed(), e.g. as they arrive from
    the socket): each certificate string is checked (one PEM certificate the TLS stack loads) and passed to
    sink.add(pem_block); everything else is kept, with `0` in place of each certificate string. finish() returns
    that rest (still JSON: json.loads then builds only the small part) and `found` holds each certificate's sha256
    (hex, upper case). Only one certificate is ever in heap. Malformed JSON is left to json.loads, which sees the
    rest next."""

    def __init__(self, sink, capacity=0):
        self.sink = sink
        self.found = []
        # `capacity`: room reserved for the rest up front. A bytearray grown by extend()/append() is reallocated
        # every few bytes, each time in a new block the size of the whole: on a fragmented heap the rest of a 4.6 KB
        # answer then finds no 2 KB block while 13 KB are free (measured on the 32-bit build). Emptying it by slice
        # assignment keeps the room.
        self.rest = bytearray(capacity)
        if capacity:
            self.rest[:] = b""
        self._stack = []  # per open container: [is_object, key (bytes) or index, expecting a key]
        self._string = None  # bytearray of the string being read (a key, or a certificate), else None
        self._in_string = False
        self._escaped = False
        self._capture = False  # the string being read is a certificate: not copied to rest

    def _at_certificate(self):
        stack = self._stack
        if len(stack) != len(_PATH):
            return False
        for frame, want in zip(stack, _PATH):
            if want is not None and frame[1] != want:
                return False
        return True

    def _string_done(self):
        text = self._string
        self._string = None
        if self._capture:
            self._capture = False
            where = "certificates[%d]" % len(self.found)
            if self._stack[3][1] != len(self.found):
                raise _bad(where + ".certificate is missing")
            try:
                value = json.loads(text)
            except ValueError:
                raise _bad(where + ".certificate is not a valid JSON string")
            text = None
            block, sha256 = _certificate(value, where)
            value = None
            self.sink.add(block)
            self.found.append(sha256)
            self.rest.extend(b"0")
        else:
            # An object key (feed() reads no other string into _string). One longer than _KEY_MAX arrives cut to
            # its first bytes, which match none of _PATH's keys.
            self._stack[-1][1] = bytes(text[1:-1])

    def feed(self, chunk):
        i, n = 0, len(chunk)
        rest = self.rest
        while i < n:
            if self._in_string:
                # Jump to the next quote or backslash: the bytes between are plain string content.
                j = i
                if not self._escaped:
                    while j < n and chunk[j] != 0x22 and chunk[j] != 0x5C:
                        j += 1
                    part = chunk[i:j]
                    if self._string is not None:
                        if self._capture or len(self._string) < _KEY_MAX + 2:
                            self._string.extend(part)
                    if not self._capture:
                        rest.extend(part)
                    if j == n:
                        return
                    i = j
                c = chunk[i]
                if self._string is not None and (self._capture or len(self._string) < _KEY_MAX + 2):
                    self._string.append(c)
                if not self._capture:
                    rest.append(c)
                i += 1
                if self._escaped:
                    self._escaped = False
                elif c == 0x5C:
                    self._escaped = True
                elif c == 0x22:
                    self._in_string = False
                    if self._string is not None:
                        self._string_done()
                continue
            c = chunk[i]
            i += 1
            stack = self._stack
            if c == 0x22:  # "
                self._in_string = True
                frame = stack[-1] if stack else None
                if frame is not None and frame[0] and frame[2]:
                    self._string = bytearray(b'"')
                    rest.append(c)
                elif self._at_certificate():
                    self._capture = True
                    self._string = bytearray(b'"')
                else:
                    rest.append(c)
                continue
            rest.append(c)
            if c == 0x7B:  # {
                stack.append([True, None, True])
            elif c == 0x5B:  # [
                stack.append([False, 0, False])
            elif c == 0x7D or c == 0x5D:  # } ]
                if stack:
                    stack.pop()
            elif c == 0x2C and stack:  # ,
                if stack[-1][0]:
                    stack[-1][2] = True
                else:
                    stack[-1][1] += 1
            elif c == 0x3A and stack:  # :
                stack[-1][2] = False

    def finish(self):
        _TlsCheck.release()
        if self._capture:  # the body ended inside a certificate string: json.loads refuses the rest
            self.rest.extend(b'"')
        return self.rest


def extract(body, sink):
    """A whole DPS response body -> (the body without its certificates, their sha256 list); see Extractor."""
    extractor = Extractor(sink)
    extractor.feed(body)
    return extractor.finish(), extractor.found


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
