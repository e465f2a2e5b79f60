# The trust bundle from a DPS registration result: validate it and turn it into what the device stores.
#
# A bundle may hold many large certificates (10 RSA-4096 roots are about 20 KB of JSON). The Extractor parses the DPS
# answer as it arrives, without ever holding its text: each certificate string is decoded as it streams (JSON escapes,
# PEM armour, base64, a PEM line at a time), hashed, and written to a sink as normalised PEM (the store compares it
# with the stored bundle and writes flash only from the first difference), a 0 taking its place; the rest is parsed a
# piece at a time. The TLS stack's check of each certificate (check_streamed) reads them back from flash once the DPS
# connection is closed and its heap is free. parse() then checks the metadata against what was streamed.
import binascii
import gc
import hashlib
import json

from micropython import const

from azprov import errors
from azprov.encoding import B64_ALPHABET, check_utf8
from azprov.errors import ProvisioningError
from azprov.pem import BEGIN_LINE, END_LINE, PemError, is_der, split

# The largest certificate a bundle may hold, in DER bytes: the largest root in certifi's bundle has 2,007, an
# RSA-4096 root 1.4 to 1.9 KB. Each is loaded whole later (the TLS check, the gateway's context).
DER_MAX = const(2048)
_PEM_DIGITS = const(64)  # base64 digits per PEM line


def _bad(message):
    return ProvisioningError(errors.MALFORMED_RESPONSE, "trustBundle: " + message)


def _meta_text(meta, name):
    value = meta.get(name)
    return value if isinstance(value, str) else None


def _hex(digest):
    return binascii.hexlify(digest).decode().upper()


class _TlsCheck:
    # Base64 and DER framing can be right while the certificate inside is not: the TLS stack is the judge, and
    # asking it before the commit keeps a bundle it would refuse out of the stored state. One context for the whole
    # bundle: creating one costs about 1.7 KB of GC heap each time, while the certificates it parses live outside the
    # GC heap (about 100 bytes of GC heap per RSA-4096 root, measured by `make bench`).
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


def check_with(ctx):
    """Has the TLS stack's checks load the certificates into `ctx` instead of a context of their own; None lets go
    of it. The DPS leg's context, once the registration is done: no connection uses it again, and its 1.7 KB block
    stays where it is, while a new context would need a hole of that size in a heap the answer has fragmented."""
    _TlsCheck._ctx = ctx


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
    return block, _hex(hashlib.sha256(der).digest())


def check_streamed(pem_path):
    """Asks the TLS stack to load each certificate of the PEM file a streamed bundle went to (store.Incoming.path),
    now that the DPS connection is closed; a MALFORMED_RESPONSE error names the first it refuses. The file is what
    _CertificateReader wrote: each certificate's base64 lines are read in one piece and decoded in one call (its line
    ends are skipped), so the heap holds one certificate's text and DER, not its lines and copies of them."""
    try:
        with open(pem_path, "rb") as f:
            index = body = end = 0
            while True:
                line = f.readline()
                if not line:
                    break
                end += len(line)
                if line == BEGIN_LINE:
                    body = end
                elif line == END_LINE:
                    f.seek(body)
                    der = binascii.a2b_base64(f.read(end - len(line) - body))
                    f.seek(end)
                    if not _TlsCheck.accepts(der):
                        raise _bad("certificates[%d] is not a certificate the TLS stack can load" % index)
                    der = None
                    index += 1
    except OSError as exc:  # the file the sink just wrote: flash failing
        raise ProvisioningError(errors.STORAGE, "streamed trust bundle cannot be read back: %s" % exc)
    finally:
        _TlsCheck.release()


# Where the reader is in a certificate's PEM text ...
_OUTSIDE = const(0)  # before the BEGIN line: explanatory text, ignored (RFC 7468 section 2), as pem.split does
_BODY = const(1)
_AFTER = const(2)  # past the END line: only whitespace, text, or more certificates (refused)
# ... and in the current line.
_LINE_START = const(0)  # whitespace only so far
_LINE_TEXT = const(1)  # an armour line or explanatory text: its start is kept, to be compared at its end
_LINE_DIGITS = const(2)  # base64 digits of the body
# What _CertificateReader._byte() found, besides a base64 digit's value (0 to 63).
_NOTHING = const(-1)
_CLOSED = const(-2)  # the closing quote of the string


def _space(c):
    return c == 0x20 or 0x09 <= c <= 0x0D  # what str.strip() removes in ASCII


class _CertificateReader:
    """One certificate string of a DPS answer, read as it streams (feed()): JSON escapes undone, the PEM armour lines
    recognised, the base64 body checked and decoded a PEM line at a time (the DER hashed: `sha256`), and written to
    `sink` as normalised PEM (64 digits a line, "\n" endings) from buffers made once, so that a certificate leaves no
    garbage between the answer's other objects. Takes exactly what pem.split() takes for one certificate, in ASCII;
    refusals are MALFORMED_RESPONSE errors naming the certificate, in pem.split()'s words."""

    def __init__(self, sink):
        self.sink = sink
        self._line = bytearray(len(BEGIN_LINE) - 1)  # the longest line compared: the BEGIN line
        self._out = bytearray(_PEM_DIGITS + 1)  # the PEM line being written: its base64 digits and "\n"
        self._out[_PEM_DIGITS] = 0x0A
        self._out_view = memoryview(self._out)
        self._der = bytearray(_PEM_DIGITS * 3 // 4)  # the DER bytes of that line, to be hashed
        self._head = bytearray(2)  # the certificate's first DER bytes: its shape is checked at the END line
        self._values = bytearray(b"\xff" * 128)  # base64 digit values by ASCII code; 0xFF: not a digit
        for value, char in enumerate(B64_ALPHABET):
            self._values[char] = value

    def start(self, where):
        self.where = where
        self.sha256 = hashlib.sha256()
        self.size = 0  # DER bytes hashed
        self._digits_out = 0  # base64 digits in _out
        self._acc = self._bits = 0  # base64 bits not yet a whole byte
        self._padding = False  # "=" seen: only more of it may follow
        self._state = _OUTSIDE
        self._begins = 0
        self._escape = 0  # 0: none; 1: after a backslash; 2 to 5: 2 + the hex digits of a \u escape read so far
        self._code = 0
        self._new_line()

    def _new_line(self):
        self._mode = _LINE_START
        self._kept = 0
        self._long = False  # a non-space past the room of _line: compares equal to no armour line
        self._gap = False  # a space after the line's digits: one more digit would be inside the line
        self._digits = False  # the next byte, if a plain base64 digit, needs no other check (feed()'s fast path)

    def _bad_pem(self, problem):
        return _bad("%s.certificate: certificate 1 %s" % (self.where, problem))

    def _bad_string(self, problem):
        return _bad("%s.certificate is %s" % (self.where, problem))

    def feed(self, chunk, i, n):
        """Reads the string's bytes in chunk[i:n]; returns the index past its closing quote, or -1 when the chunk
        ends first. Raises at the first byte no certificate string holds."""
        out = self._out
        der = self._der
        values = self._values
        digits, acc, bits = self._digits_out, self._acc, self._bits
        while i < n:
            c = chunk[i]
            i += 1
            value = values[c] if self._digits and c < 0x80 else 0xFF
            if value > 63:
                self._digits_out, self._acc, self._bits = digits, acc, bits
                value = self._byte(c)
                digits = self._digits_out
                if value < 0:
                    if value == _CLOSED:
                        return i
                    continue
                c = B64_ALPHABET[value]  # a digit that came escaped ("\/") is written as itself
            out[digits] = c
            acc = (acc << 6 | value) & 0xFFF
            bits += 6
            if bits >= 8:
                bits -= 8
                der[(digits * 3) >> 2] = acc >> bits & 0xFF
            digits += 1
            if digits == _PEM_DIGITS:
                self._digits_out = digits
                self._write_line()
                digits = 0
        self._digits_out, self._acc, self._bits = digits, acc, bits
        return -1

    def _write_line(self):
        # The digits in _out as one PEM line (padded when it is the last); their DER bytes hashed.
        digits = self._digits_out
        size = digits * 3 >> 2
        if not self.size:
            self._head[0] = self._der[0]
            self._head[1] = self._der[1] if size > 1 else 0
            self.sink.write(BEGIN_LINE)
        self.size += size
        if self.size > DER_MAX:
            raise self._bad_string("larger than %d bytes (DER)" % DER_MAX)
        if digits == _PEM_DIGITS:
            self.sha256.update(self._der)
            self.sink.write(self._out)
        else:
            self.sha256.update(memoryview(self._der)[:size])
            end = digits
            while end & 3:
                self._out[end] = 0x3D  # =
                end += 1
            self._out[end] = 0x0A
            self.sink.write(self._out_view[: end + 1])
            self._out[_PEM_DIGITS] = 0x0A
        self._digits_out = 0

    def _byte(self, c):
        # One byte of the JSON string that is not a plain digit of a base64 line.
        escape = self._escape
        if escape == 0:
            if c == 0x22:  # "
                self._close()
                return _CLOSED
            if c == 0x5C:  # backslash
                self._escape = 1
                self._digits = False
                return _NOTHING
            if c < 0x20:
                raise self._bad_string("not a valid JSON string")
            if c >= 0x80:
                raise self._bad_string("not ASCII text")
            return self._text(c)
        if escape == 1:
            self._escape = 0
            if c == 0x75:  # \uXXXX
                self._escape = 2
                self._code = 0
                return _NOTHING
            if c == 0x6E:
                c = 0x0A
            elif c == 0x72:
                c = 0x0D
            elif c == 0x74:
                c = 0x09
            elif c == 0x62:
                c = 0x08
            elif c == 0x66:
                c = 0x0C
            elif c != 0x22 and c != 0x5C and c != 0x2F:  # \" \\ \/ stand for themselves
                raise self._bad_string("not a valid JSON string")
            return self._text(c)
        if 0x30 <= c <= 0x39:
            digit = c - 0x30
        elif 0x61 <= c | 0x20 <= 0x66:  # a-f, A-F
            digit = (c | 0x20) - 0x57
        else:
            raise self._bad_string("not a valid JSON string")
        self._code = self._code << 4 | digit
        if escape < 5:
            self._escape = escape + 1
            return _NOTHING
        self._escape = 0
        if self._code >= 0x80:
            raise self._bad_string("not ASCII text")
        return self._text(self._code)

    def _text(self, c):
        # One ASCII character of the PEM text.
        if c == 0x0A:
            self._end_line()
            return _NOTHING
        mode = self._mode
        if _space(c):
            if mode == _LINE_DIGITS:
                self._gap = True
                self._digits = False
            elif mode == _LINE_TEXT:
                self._keep(c, True)
            return _NOTHING
        if mode == _LINE_START:
            # A body line starting with "-" can only be the END line: no base64 digit is "-".
            mode = self._mode = _LINE_DIGITS if self._state == _BODY and c != 0x2D else _LINE_TEXT
        if mode == _LINE_TEXT:
            self._keep(c, False)
            return _NOTHING
        if self._gap:
            raise self._bad_pem("is not valid base64")
        if c == 0x3D:  # =
            self._padding = True
            self._digits = False  # only "=" may follow: no digit takes the fast path
            return _NOTHING
        value = self._values[c]
        if value > 63 or self._padding:
            raise self._bad_pem("is not valid base64")
        self._digits = True
        return value

    def _keep(self, c, space):
        if self._kept < len(self._line):
            self._line[self._kept] = c
            self._kept += 1
        elif not space:
            self._long = True

    def _end_line(self):
        mode = self._mode
        armour = self._armour() if mode == _LINE_TEXT else None
        self._new_line()
        state = self._state
        if armour is BEGIN_LINE:
            if state == _BODY:
                raise self._bad_pem("has no END line")
            if state == _OUTSIDE:
                self._state = _BODY
            self._begins += 1
        elif armour is END_LINE:
            if state == _BODY:
                self._end_body()
            elif state == _OUTSIDE or self._begins == 1:
                raise _bad("%s.certificate: END line without BEGIN" % self.where)
        elif state == _BODY and mode == _LINE_TEXT:  # a body line starting with "-", not the END line
            raise self._bad_pem("is not valid base64")

    def _armour(self):
        # BEGIN_LINE or END_LINE when the text line just read is one of them (spaces around it aside), else None.
        if self._long:
            return None
        kept = self._kept
        while kept and _space(self._line[kept - 1]):
            kept -= 1
        line = memoryview(self._line)[:kept]
        for armour in (BEGIN_LINE, END_LINE):
            if kept == len(armour) - 1 and line == memoryview(armour)[:kept]:
                return armour
        return None

    def _end_body(self):
        if self._bits == 6:  # 4k + 1 digits: not base64
            raise self._bad_pem("is not valid base64")
        if self._digits_out:
            self._write_line()
        # A DER certificate: an ASN.1 SEQUENCE with a multi-byte length (pem.is_der_certificate).
        if self.size < 64 or not is_der(self._head):
            raise self._bad_pem("is not a DER certificate")
        self.sink.write(END_LINE)
        self._state = _AFTER

    def _close(self):
        self._end_line()
        if self._state == _OUTSIDE:
            raise _bad("%s.certificate: no certificate found" % self.where)
        if self._state == _BODY:
            raise self._bad_pem("has no END line")
        if self._begins > 1:
            raise _bad("%s.certificate holds %d certificates, expected 1" % (self.where, self._begins))


# The keys the Extractor follows, by code, and its paths through the answer (None: an array's element).
_KEYS = (b"registrationState", b"trustBundle", b"certificates", b"certificate", b"issuedCertificateChain")
_KEY_MAX = const(32)  # longer keys are kept only as their first bytes: none of _KEYS is that long
# The certificate strings: registrationState.trustBundle.certificates[i].certificate.
_CERTIFICATE_PATH = (0, 1, 2, None, 3)
# Arrays whose elements are parsed one at a time, as each ends (their text leaves the rest then): the bundle's
# certificate entries and the issued chain. Neither can be inside the other: one is read at a time.
_ARRAY_PATHS = ((0, 1, 2), (0, 4))
# An open container on the Extractor's stack is one byte (an answer may nest thousands deep): _OBJECT for an object,
# with _EXPECTING_KEY while a key may come and, in _KEY_CODE, 1 + the code of its member's key (0: none of _KEYS).
_OBJECT = const(0x80)
_EXPECTING_KEY = const(0x40)
_KEY_CODE = const(0x07)


def _not_json():
    return ProvisioningError(errors.MALFORMED_RESPONSE, "response body is not valid JSON")


def _repeated(path):
    # A key given twice (JSON leaves which one counts to the reader): the answer is not taken.
    name = ".".join(_KEYS[code].decode() for code in path)
    return ProvisioningError(errors.MALFORMED_RESPONSE, "response body holds %s more than once" % name)


def _loads(text, start=0):
    # As azprov.dps reads a whole body: the lax UTF-8 forms MicroPython's decoder lets through are refused too. The
    # text from `start` is parsed where it lies: MicroPython's json.loads takes any buffer, so a bundle element is
    # not copied out of the answer's text first (the copy was the last block to fail at the DPS answer's peak).
    try:
        check_utf8(text, start=start)
        if start:
            text = memoryview(text)[start:]
        try:
            return json.loads(text)
        except TypeError:  # CPython's json (the host tests) takes str, bytes and bytearray only
            return json.loads(bytes(text))
    except (ValueError, UnicodeError):
        raise _not_json()


class Extractor:
    """Parses a DPS response fed in pieces (feed(), e.g. as they arrive from the socket) without holding its text:
    each certificate string of the trust bundle is read as it streams (_CertificateReader: one PEM certificate,
    written to sink.write() as normalised PEM a line at a time) and left as 0 in its place; each element of the
    bundle's certificate list and of the issued chain is parsed as it ends; the rest of the text (`rest`, a few
    hundred bytes) is parsed by finish(), which returns the whole answer as json.loads would give it, certificates
    as 0. `found` holds each certificate's sha256 (hex, upper case). The TLS stack has not seen the certificates yet
    (check_streamed). Malformed JSON is a MALFORMED_RESPONSE error."""

    def __init__(self, sink, rest=None):
        self.found = []
        # `rest`: a bytearray whose room was made up front (before the DPS connection fragments the heap), emptied
        # here by slice assignment, which keeps the room. Grown by extend()/append() past it, a bytearray is
        # reallocated every few bytes, each time in a new block the size of the whole.
        self.rest = bytearray() if rest is None else rest
        self.rest[:] = b""
        self._reader = _CertificateReader(sink)
        self._stack = bytearray()
        self._key = bytearray(_KEY_MAX)
        self._key_length = -1  # bytes of the object key being read (counted past _KEY_MAX), -1: not in a key
        self._in_string = False
        self._escaped = False
        self._capture = False  # the string being read is a certificate: read by _reader, not copied to rest
        # The _ARRAY_PATHS array being read (its index there, -1: none), its depth, the index of its element, where
        # that element's text starts in the rest and whether it has begun; what was parsed of each such array.
        self._array = -1
        self._array_depth = 0
        self._index = 0
        self._element_start = 0
        self._element_seen = False
        self._elements = ([], [])
        self._seen = [False, False]  # ... and whether it was read

    def _on(self, path):
        # Whether the value about to be read is at the end of `path`.
        stack = self._stack
        if len(stack) != len(path):
            return False
        for depth in range(len(path)):
            want = path[depth]
            frame = stack[depth]
            if frame & _OBJECT if want is None else frame & (_OBJECT | _KEY_CODE) != _OBJECT | want + 1:
                return False
        return True

    def _keep_key(self, part):
        length = self._key_length
        room = _KEY_MAX - length
        if room > 0:
            take = min(room, len(part))
            self._key[length : length + take] = part[:take]
        self._key_length = length + len(part)

    def _key_done(self):
        length = self._key_length
        self._key_length = -1
        code = 0
        if length <= _KEY_MAX:
            key = memoryview(self._key)[:length]
            for index, name in enumerate(_KEYS):
                if len(name) == length and key == name:
                    code = index + 1
        self._stack[-1] = self._stack[-1] & ~_KEY_CODE | code

    def _start_certificate(self):
        index = len(self.found)
        if self._index != index:  # the certificates array is the one being read
            raise _bad("certificates[%d].certificate is missing" % index)
        self._capture = True
        self._reader.start("certificates[%d]" % index)

    def _open(self, is_object):
        if is_object:
            self._stack.append(_OBJECT | _EXPECTING_KEY)
            return
        for index, path in enumerate(_ARRAY_PATHS):
            if self._on(path):
                if self._seen[index]:
                    raise _repeated(path)
                self._seen[index] = True
                self._array = index
                self._array_depth = len(self._stack) + 1
                self._index = 0
                self._element_start = len(self.rest)
                self._element_seen = False
        self._stack.append(0)

    def _element_done(self):
        # An element of the _ARRAY_PATHS array ended: parsed, and its text dropped from the rest.
        rest = self.rest
        start = self._element_start
        gc.collect()  # the element's objects are made low in the heap, not past the garbage its text left
        self._elements[self._array].append(_loads(rest, start))
        rest[start:] = b""
        self._element_seen = False

    def feed(self, chunk):
        i, n = 0, len(chunk)
        rest = self.rest
        stack = self._stack
        while i < n:
            if self._capture:
                i = self._reader.feed(chunk, i, n)
                if i < 0:
                    return
                self._capture = False
                gc.collect()  # what lives on is made below the certificate's garbage, not past it
                self.found.append(_hex(self._reader.sha256.digest()))
                rest.extend(b"0")
                continue
            if self._in_string:
                # Jump to the next quote or backslash: the bytes between are plain string content.
                j = i
                if not self._escaped:
                    while j < n and chunk[j] != 0x22 and chunk[j] != 0x5C:
                        j += 1
                    part = chunk[i:j]
                    rest.extend(part)
                    if self._key_length >= 0:
                        self._keep_key(part)
                    if j == n:
                        return
                    i = j
                c = chunk[i]
                i += 1
                rest.append(c)
                if self._escaped:
                    self._escaped = False
                elif c == 0x5C:
                    self._escaped = True
                elif c == 0x22:
                    self._in_string = False
                    if self._key_length >= 0:
                        self._key_done()
                    continue
                if self._key_length >= 0:
                    self._keep_key(chunk[i - 1 : i])
                continue
            c = chunk[i]
            i += 1
            frame = stack[-1] if stack else 0
            if self._array >= 0 and len(stack) == self._array_depth:
                # Directly in an _ARRAY_PATHS array: its commas are not copied, each element is parsed as it ends.
                if c == 0x2C or c == 0x5D:  # , ]
                    if self._element_seen:
                        self._element_done()
                    elif c == 0x2C or self._index:  # "[," or ",,", or ",]"
                        raise _not_json()
                    if c == 0x2C:
                        self._index += 1
                        continue
                    self._array = -1
                elif not (c == 0x20 or c == 0x0A or c == 0x0D or c == 0x09):
                    self._element_seen = True
            if c == 0x22:  # "
                if frame & _EXPECTING_KEY:
                    self._key_length = 0
                elif self._on(_CERTIFICATE_PATH):
                    self._start_certificate()
                    continue
                self._in_string = True
                rest.append(c)
                continue
            rest.append(c)
            if c == 0x7B or c == 0x5B:  # { [
                self._open(c == 0x7B)
            elif c == 0x7D or c == 0x5D:  # } ]
                # MicroPython's json.loads takes "[1}" as [1]: the answer's brackets are checked here.
                if not stack or bool(frame & _OBJECT) != (c == 0x7D):
                    raise _not_json()
                stack[-1:] = b""
            elif c == 0x2C and frame & _OBJECT:  # ,
                stack[-1] = frame | _EXPECTING_KEY
            elif c == 0x3A and frame & _OBJECT:  # :
                stack[-1] = frame & ~_EXPECTING_KEY

    def finish(self):
        """The answer, parsed; a MALFORMED_RESPONSE error when it is not JSON (ended early, for one)."""
        if self._capture or self._in_string or self._stack:
            raise _not_json()
        value = _loads(self.rest)
        for path, elements in zip(_ARRAY_PATHS, self._elements):
            if not elements:
                continue
            node = value
            for code in path:
                node = node.get(_KEYS[code].decode()) if isinstance(node, dict) else None
            if not isinstance(node, list) or node:  # a key repeated above it: the array read is not the one kept
                raise _repeated(path)
            node.extend(elements)
        return value


def extract(body, sink):
    """A whole DPS response body -> (its parsed value, the sha256 list of its certificates); see Extractor."""
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
    if streamed:
        pem, pem_sha256 = None, streamed_sha256  # checked by the TLS stack in check_streamed, once the answer is parsed
    else:
        _TlsCheck.release()
        pem = "".join(blocks)
        pem_sha256 = binascii.hexlify(hashlib.sha256(pem.encode()).digest()).decode()
    return {"id": bundle_id, "etag": etag, "pem": pem, "pem_sha256": pem_sha256, "certificates": certificates}
