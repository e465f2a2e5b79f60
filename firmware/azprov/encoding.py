# Strict base64 and URL percent-encoding. MicroPython's a2b_base64 silently skips characters it does not know
# (b"!!!!" decodes to b""), so a corrupt key or certificate would pass unnoticed without this check.
import binascii

_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_UNRESERVED = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~"
_HEX = "0123456789ABCDEF"


def b64decode(text):
    # Accepts str or bytes, with or without padding (IoT Hub keys are sometimes unpadded); raises ValueError.
    data = text.encode() if isinstance(text, str) else bytes(text)
    data = data.rstrip(b"=")
    for byte in data:
        if byte not in _B64_ALPHABET:
            raise ValueError("invalid base64 character")
    if len(data) % 4 == 1:
        raise ValueError("invalid base64 length")
    return binascii.a2b_base64(data + b"=" * (-len(data) % 4))


def b64encode(data):
    return binascii.b2a_base64(data)[:-1].decode()


def url_encode(text):
    # RFC 3986 unreserved characters pass; everything else, including "/", becomes %XX (upper case, as Azure SDKs).
    out = []
    for byte in text.encode():
        if byte in _UNRESERVED:
            out.append(chr(byte))
        else:
            out.append("%" + _HEX[byte >> 4] + _HEX[byte & 15])
    return "".join(out)

