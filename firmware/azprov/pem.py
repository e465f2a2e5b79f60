# PEM certificates: normalise, split, and convert to DER. MicroPython's TLS needs DER, one certificate per
# load_verify_locations() call (a concatenation silently loads only the first). Text outside BEGIN/END blocks is
# explanatory text and ignored (RFC 7468 section 2): CA bundles carry "# <name>" or "subject=" lines between blocks.
from micropython import const

from azprov.encoding import b64decode

_BEGIN = "-----BEGIN CERTIFICATE-----"
_END = "-----END CERTIFICATE-----"
# The same armour lines as bytes, for text read as bytes (azprov.bundle), with the line ending PEM is stored with.
BEGIN_LINE = b"-----BEGIN CERTIFICATE-----\n"
END_LINE = b"-----END CERTIFICATE-----\n"
# The largest CA file (dps_ca_file) the device takes. A PEM file is read line by line while the TLS context loads it
# (one certificate in heap at a time), so the file's size costs no heap; what each certificate keeps is what limits
# it: the figure is measured on the 32-bit frozen build at the 100 KB heap an ESP32 has (boards/esp32/README.md).
# `provision-file validate` and `create` use the same figure.
MAX_CA_FILE_BYTES = const(65536)
# A DER file holds one certificate, loaded from one buffer: it costs its size in heap.
MAX_DER_FILE_BYTES = const(16384)


class PemError(ValueError):
    pass


class PemFile:
    """A PEM file read line by line each time it is iterated, so that split() holds one certificate at a time,
    never the whole file (a 10-root bundle is about 20 KB)."""

    def __init__(self, path):
        self.path = path

    def __iter__(self):
        with open(self.path) as f:
            for line in f:
                yield line


def split(text, blocks=True):
    """Yields (pem_block, der) for every certificate in `text` (a str, or lines such as a PemFile); pem_block has
    "\n" line endings and a final newline whatever the input used. Raises PemError naming the problem. With
    blocks=False pem_block is None and no line is kept. Each base64 line is decoded as it comes and the DER joined
    once: the body as one text, and its copies in b64decode(), are blocks of 1-2 KB a fragmented heap may not have."""
    der = None  # the certificate being read, from its BEGIN line to its END line
    lines = None  # its lines (blocks=True)
    count = 0
    for raw in text.split("\n") if isinstance(text, str) else text:
        line = raw.strip()
        if not line:
            continue
        if line == _BEGIN:
            if der is not None:
                raise PemError("certificate %d has no END line" % (count + 1))
            der = _Der()
            lines = [line] if blocks else None
        elif line == _END:
            if der is None:
                raise PemError("END line without BEGIN")
            count += 1
            try:
                data = der.finish()
            except ValueError:
                raise PemError("certificate %d is not valid base64" % count)
            der = None
            if not is_der_certificate(data):
                raise PemError("certificate %d is not a DER certificate" % count)
            if blocks:
                lines.append(line)
                yield "\n".join(lines) + "\n", data
            else:
                yield None, data
            lines = None
        elif der is not None:
            if blocks:
                lines.append(line)
            der.add(line)
    if der is not None:
        raise PemError("certificate %d has no END line" % (count + 1))
    if count == 0:
        raise PemError("no certificate found")


class _Der:
    """One certificate's base64 body decoded a line at a time, with b64decode()'s rules for the body as one text:
    padding only at its very end, unpadded allowed, no other character. A fault is kept for finish() to raise: the
    END line names the certificate. The DER is joined once, from pieces of a line's size."""

    def __init__(self):
        self.pieces = []
        self.carry = ""  # digits of an incomplete group, decoded with the next line
        self.padded = False
        self.bad = False

    def add(self, line):
        if self.bad:
            return
        digits = line.rstrip("=")
        self.bad = self.padded and len(digits) > 0  # digits after padding
        self.padded = self.padded or len(digits) != len(line)
        digits = self.carry + digits
        whole = len(digits) // 4 * 4
        self.carry = digits[whole:]
        try:
            if whole:
                self.pieces.append(b64decode(digits[:whole]))
        except ValueError:
            self.bad = True

    def finish(self):
        if self.bad:
            raise ValueError
        if self.carry:
            self.pieces.append(b64decode(self.carry))
        return b"".join(self.pieces)


def is_der_certificate(der):
    """True when `der` (bytes or a buffer) has a DER certificate's shape: an ASN.1 SEQUENCE with a multi-byte length,
    at least 64 bytes long."""
    return len(der) >= 64 and is_der(der)


def is_der(head):
    """True when a file starting with the bytes `head` is DER: a SEQUENCE with a multi-byte length. No text file
    starts so ("0" followed by a byte of 0x81 or more is not UTF-8)."""
    return len(head) >= 2 and head[0] == 0x30 and head[1] in (0x81, 0x82, 0x83)


def _single_der(data):
    # The file must be exactly one element: its header (tag, length of the length, length) and its contents.
    size = data[1] & 0x7F
    body = 0
    for byte in data[2 : 2 + size]:
        body = (body << 8) | byte
    if len(data) < 64 or 2 + size + body != len(data):
        raise PemError("not a PEM file, nor a single DER certificate")
    return data


def der_certificates(source):
    """The DER certificates of a CA file's contents: PEM text (a str or lines such as a PemFile), or the bytes of a
    DER file holding one certificate (loaded as it is)."""
    if isinstance(source, (bytes, bytearray)):
        yield _single_der(source)
        return
    for _, der in split(source, blocks=False):
        yield der


def open_ca_file(path, field="dps_ca_file"):
    """A CA file named by the provisioning file, as a source for der_certificates() and transport.tls_context(): a
    PemFile (read while the context loads it) or the bytes of a DER certificate. Its size is checked before any
    of it is read; a CONFIGURATION error naming `field` otherwise."""
    import os

    from azprov import errors
    from azprov.errors import ProvisioningError

    try:
        size = os.stat(path)[6]
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError as exc:
        missing = exc.args and exc.args[0] == 2  # ENOENT
        raise ProvisioningError(
            errors.CONFIGURATION, "%s: %s %s" % (field, path, "does not exist" if missing else "cannot be read")
        )
    if size > MAX_CA_FILE_BYTES:
        raise ProvisioningError(
            errors.CONFIGURATION, "%s: %s is larger than %d bytes" % (field, path, MAX_CA_FILE_BYTES)
        )
    if not is_der(head):
        return PemFile(path)
    if size > MAX_DER_FILE_BYTES:
        raise ProvisioningError(
            errors.CONFIGURATION,
            "%s: %s is a DER file larger than %d bytes (one certificate is expected)"
            % (field, path, MAX_DER_FILE_BYTES),
        )
    with open(path, "rb") as f:
        return f.read()
