# PEM certificates: normalise, split, and convert to DER. MicroPython's TLS needs DER, one certificate per
# load_verify_locations() call (a concatenation silently loads only the first). Text outside BEGIN/END blocks is
# explanatory text and ignored (RFC 7468 section 2): CA bundles carry "# <name>" or "subject=" lines between blocks.
from azprov.encoding import b64decode

_BEGIN = "-----BEGIN CERTIFICATE-----"
_END = "-----END CERTIFICATE-----"


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


def split(text):
    """Yields (pem_block, der) for every certificate in `text` (a str, or lines such as a PemFile); pem_block has
    "\n" line endings and a final newline whatever the input used. Raises PemError naming the problem."""
    lines = None
    body = None
    count = 0
    for raw in text.split("\n") if isinstance(text, str) else text:
        line = raw.strip()
        if not line:
            continue
        if line == _BEGIN:
            if lines is not None:
                raise PemError("certificate %d has no END line" % (count + 1))
            lines = [line]
            body = []
        elif line == _END:
            if lines is None:
                raise PemError("END line without BEGIN")
            lines.append(line)
            count += 1
            try:
                der = b64decode("".join(body))
            except ValueError:
                raise PemError("certificate %d is not valid base64" % count)
            # A DER certificate is an ASN.1 SEQUENCE with a multi-byte length.
            if len(der) < 64 or der[0] != 0x30 or der[1] not in (0x81, 0x82, 0x83):
                raise PemError("certificate %d is not a DER certificate" % count)
            yield "\n".join(lines) + "\n", der
            lines = None
            body = None
        elif lines is not None:
            lines.append(line)
            body.append(line)
    if lines is not None:
        raise PemError("certificate %d has no END line" % (count + 1))
    if count == 0:
        raise PemError("no certificate found")


def der_certificates(text):
    for _, der in split(text):
        yield der
