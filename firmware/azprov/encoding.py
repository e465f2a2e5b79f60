# Strict base64 and URL percent-encoding. MicroPython's a2b_base64 silently skips characters it does not know
# (b"!!!!" decodes to b""), so a corrupt key or certificate would pass unnoticed without this check.
import binascii

B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_UNRESERVED = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~"
_HEX = b"0123456789ABCDEF"


def b64decode(text):
    # Accepts str or bytes, with or without padding (IoT Hub keys are sometimes unpadded); raises ValueError.
    data = text.encode() if isinstance(text, str) else bytes(text)
    data = data.rstrip(b"=")
    for byte in data:
        if byte not in B64_ALPHABET:
            raise ValueError("invalid base64 character")
    if len(data) % 4 == 1:
        raise ValueError("invalid base64 length")
    return binascii.a2b_base64(data + b"=" * (-len(data) % 4))


def b64encode(data):
    return binascii.b2a_base64(data)[:-1].decode()


def url_encode(text):
    # RFC 3986 unreserved characters pass; everything else, including "/", becomes %XX (upper case, as Azure SDKs).
    # Bytes are appended to one bytearray (no string per byte), and text that needs no escape is returned as it is.
    data = text.encode()
    for byte in data:
        if byte not in _UNRESERVED:
            break
    else:
        return text
    out = bytearray()
    for byte in data:
        if byte in _UNRESERVED:
            out.append(byte)
        else:
            out.append(0x25)  # %
            out.append(_HEX[byte >> 4])
            out.append(_HEX[byte & 15])
    return out.decode()


# MicroPython's decoder checks UTF-8's structure but lets through overlong forms (b"\xc0\xaf" decodes to "/"),
# encoded surrogates and code points past U+10FFFF, which strict decoders (CPython, the services) reject.
_NEVER_IN_UTF8 = b"\xc0\xc1\xf5\xf6\xf7\xf8\xf9\xfa\xfb\xfc\xfd\xfe\xff"
# lead byte -> the range its next byte must fall in
_NARROW_LEADS = ((0xE0, 0xA0, 0xBF), (0xED, 0x80, 0x9F), (0xF0, 0x90, 0xBF), (0xF4, 0x80, 0x8F))


def check_utf8(data, end=None, more=False, start=0):
    """Raises UnicodeError when `data` (bytes or bytearray; its bytes from `start` to `end`) holds a form only a lax
    decoder accepts. The byte structure itself is left to whoever decodes next (bytes.decode, json.loads): no copy of `data`
    is made. `more`: the text goes on past `end` (a file checked a piece at a time), so a lead byte in the last
    place is checked with the next piece, which the caller starts with it."""
    if end is None:
        end = len(data)
    for byte in _NEVER_IN_UTF8:
        if data.find(bytes((byte,)), start, end) >= 0:
            raise UnicodeError  # every caller reports its own message
    last = end - 1
    for lead, low, high in _NARROW_LEADS:
        marker = bytes((lead,))
        i = data.find(marker, start, end)
        while i >= 0:
            if (i == last and not more) or (i < last and not low <= data[i + 1] <= high):
                raise UnicodeError  # every caller reports its own message
            i = data.find(marker, i + 1, end)
