# A small DER reader for X.509 device certificates and their private keys, without any I/O: it takes bytes and
# returns what the device must check before it connects (the CN that must equal the registration id, the dates,
# the key type, whether a key belongs to a certificate). Only the few ASN.1 shapes those need are understood;
# anything else is a ValueError naming what did not parse.
from micropython import const

_SEQUENCE = const(0x30)
_SET = const(0x31)
_INTEGER = const(0x02)
_BIT_STRING = const(0x03)
_OCTET_STRING = const(0x04)
_OID = const(0x06)
_UTC_TIME = const(0x17)
_GENERALIZED_TIME = const(0x18)
_CONTEXT_0 = const(0xA0)
_CONTEXT_1 = const(0xA1)
_CONTEXT_3 = const(0xA3)
_BOOLEAN = const(0x01)

OID_COMMON_NAME = b"\x55\x04\x03"
OID_EC_PUBLIC_KEY = b"\x2a\x86\x48\xce\x3d\x02\x01"
OID_P256 = b"\x2a\x86\x48\xce\x3d\x03\x01\x07"
OID_RSA = b"\x2a\x86\x48\x86\xf7\x0d\x01\x01\x01"
OID_BASIC_CONSTRAINTS = b"\x55\x1d\x13"


def tlv(data, pos, end=None):
    """(tag, content_start, content_end) of the element at `pos`; ValueError when it does not fit in `end`."""
    if end is None:
        end = len(data)
    if pos + 2 > end:
        raise ValueError("truncated element")
    tag = data[pos]
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 3 or pos + count > end:
            raise ValueError("unsupported length")
        length = 0
        for _ in range(count):
            length = (length << 8) | data[pos]
            pos += 1
    if pos + length > end:
        raise ValueError("element longer than its container")
    return tag, pos, pos + length


def children(data, start, end):
    """The (tag, start, end) of each element inside [start, end)."""
    out = []
    pos = start
    while pos < end:
        element = tlv(data, pos, end)
        out.append(element)
        pos = element[2]
    return out


def _expect(element, tag, what):
    if element[0] != tag:
        raise ValueError(what)
    return element


def split_concatenated(data):
    """Each top-level element of a DER file that holds one or more certificates, as bytes."""
    out = []
    pos = 0
    while pos < len(data):
        tag, start, end = tlv(data, pos)
        if tag != _SEQUENCE:
            raise ValueError("not a DER certificate")
        out.append(bytes(data[pos:end]))
        pos = end
    if not out:
        raise ValueError("no certificate")
    return out


def _days_from_civil(year, month, day):
    # Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm), independent of the port's epoch.
    if month <= 2:
        year -= 1
    era = (year if year >= 0 else year - 399) // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def parse_time(data, element):
    """UTCTime or GeneralizedTime (the Z forms RFC 5280 requires) -> (unix seconds, "YYYY-MM-DDTHH:MM:SSZ")."""
    tag, start, end = element
    text = bytes(data[start:end]).decode()
    if tag == _UTC_TIME and len(text) == 13:
        year = int(text[0:2])
        year += 2000 if year < 50 else 1900
        rest = text[2:]
    elif tag == _GENERALIZED_TIME and len(text) == 15:
        year = int(text[0:4])
        rest = text[4:]
    else:
        raise ValueError("unsupported time")
    if rest[-1] != "Z":
        raise ValueError("time is not UTC")
    month, day, hour, minute, second = (int(rest[i : i + 2]) for i in (0, 2, 4, 6, 8))
    seconds = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
    return seconds, "%04d-%02d-%02dT%02d:%02d:%02dZ" % (year, month, day, hour, minute, second)


def _common_name(data, name):
    # Name ::= SEQUENCE OF SET OF SEQUENCE { type OID, value ANY }; the last CN wins, as OpenSSL prints it.
    found = None
    for rdn in children(data, name[1], name[2]):
        for attribute in children(data, rdn[1], rdn[2]):
            parts = children(data, attribute[1], attribute[2])
            if len(parts) == 2 and parts[0][0] == _OID and data[parts[0][1] : parts[0][2]] == OID_COMMON_NAME:
                found = bytes(data[parts[1][1] : parts[1][2]]).decode()
    return found


def _strip_integer(value):
    # DER INTEGERs carry a leading zero byte when the high bit is set; compare magnitudes without it.
    start = 0
    while start < len(value) - 1 and value[start] == 0:
        start += 1
    return bytes(value[start:])


def _public_key(data, spki):
    """SubjectPublicKeyInfo -> ("ec", curve oid bytes, point bytes) or ("rsa", None, modulus bytes)."""
    algorithm, bits = children(data, spki[1], spki[2])[:2]
    parts = children(data, algorithm[1], algorithm[2])
    oid = bytes(data[parts[0][1] : parts[0][2]])
    _expect(bits, _BIT_STRING, "public key is not a BIT STRING")
    key = bits[1] + 1  # skip the unused-bits byte
    if oid == OID_EC_PUBLIC_KEY:
        curve = bytes(data[parts[1][1] : parts[1][2]]) if len(parts) > 1 and parts[1][0] == _OID else None
        return "ec", curve, bytes(data[key : bits[2]])
    if oid == OID_RSA:
        rsa = tlv(data, key, bits[2])
        modulus = children(data, rsa[1], rsa[2])[0]
        return "rsa", None, _strip_integer(data[modulus[1] : modulus[2]])
    return "other", None, b""


def _is_ca(data, extensions):
    # extensions [3] EXPLICIT SEQUENCE OF Extension { extnID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING };
    # basicConstraints' value: SEQUENCE { cA BOOLEAN DEFAULT FALSE, pathLenConstraint INTEGER OPTIONAL }.
    outer = _expect(tlv(data, extensions[1], extensions[2]), _SEQUENCE, "malformed extensions")
    for _, start, end in children(data, outer[1], outer[2]):
        parts = children(data, start, end)
        if bytes(data[parts[0][1] : parts[0][2]]) != OID_BASIC_CONSTRAINTS:
            continue
        value = _expect(parts[-1], _OCTET_STRING, "malformed basicConstraints")
        inner = _expect(tlv(data, value[1], value[2]), _SEQUENCE, "malformed basicConstraints")
        flags = children(data, inner[1], inner[2])
        return bool(flags) and flags[0][0] == _BOOLEAN and data[flags[0][1]] != 0
    return False


def certificate(der):
    """What the device checks in a DER certificate: a dict with common_name, issuer_common_name, not_before,
    not_after (unix seconds), not_after_text, key_type ("ec", "rsa" or "other"), curve (EC curve OID), public_key
    (EC point or RSA modulus), key_bits and ca (basicConstraints cA). ValueError when it is not a certificate."""
    try:
        outer = _expect(tlv(der, 0), _SEQUENCE, "not a certificate")
        tbs = _expect(children(der, outer[1], outer[2])[0], _SEQUENCE, "no tbsCertificate")
        fields = children(der, tbs[1], tbs[2])
        if fields[0][0] == _CONTEXT_0:  # explicit version
            fields = fields[1:]
        # serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo
        issuer, validity, subject, spki = fields[2], fields[3], fields[4], fields[5]
        for element in (issuer, validity, subject, spki):
            _expect(element, _SEQUENCE, "malformed tbsCertificate")
        not_before, not_after = children(der, validity[1], validity[2])
        key_type, curve, public_key = _public_key(der, spki)
        before = parse_time(der, not_before)
        after = parse_time(der, not_after)
        info = {
            "common_name": _common_name(der, subject),
            "issuer_common_name": _common_name(der, issuer),
            "not_before": before[0],
            "not_after": after[0],
            "not_after_text": after[1],
            "key_type": key_type,
            "curve": curve,
            "public_key": public_key,
            "ca": any(f[0] == _CONTEXT_3 and _is_ca(der, f) for f in fields[6:]),
        }
    except (IndexError, UnicodeError) as exc:
        raise ValueError("malformed certificate (%s)" % type(exc).__name__)
    info["key_bits"] = len(public_key) * 8 if key_type == "rsa" else (256 if curve == OID_P256 else 0)
    return info


def _ec_private(data, element, curve):
    # SEC1 ECPrivateKey ::= SEQUENCE { version 1, privateKey OCTET STRING, [0] parameters, [1] publicKey }
    parts = children(data, element[1], element[2])
    _expect(parts[1], _OCTET_STRING, "malformed EC key")
    point = None
    for tag, start, end in parts[2:]:
        if tag == _CONTEXT_0:
            inner = tlv(data, start, end)
            curve = bytes(data[inner[1] : inner[2]])
        elif tag == _CONTEXT_1:
            bits = _expect(tlv(data, start, end), _BIT_STRING, "malformed EC public key")
            point = bytes(data[bits[1] + 1 : bits[2]])
    return {"key_type": "ec", "curve": curve, "public_key": point, "key_bits": 256 if curve == OID_P256 else 0}


def _rsa_private(data, element):
    # PKCS#1 RSAPrivateKey ::= SEQUENCE { version, modulus, publicExponent, ... }
    parts = children(data, element[1], element[2])
    modulus = _expect(parts[1], _INTEGER, "malformed RSA key")
    value = _strip_integer(data[modulus[1] : modulus[2]])
    return {"key_type": "rsa", "curve": None, "public_key": value, "key_bits": len(value) * 8}


def private_key(der):
    """A DER private key in SEC1 (EC), PKCS#1 (RSA) or unencrypted PKCS#8 form -> dict with key_type ("ec", "rsa",
    "other" or "encrypted"), curve, public_key (EC point when the key carries it, RSA modulus; None when absent)
    and key_bits. ValueError when it is not a private key."""
    try:
        outer = _expect(tlv(der, 0), _SEQUENCE, "not a private key")
        if outer[2] != len(der):
            raise ValueError("trailing bytes after the private key")
        parts = children(der, outer[1], outer[2])
        if parts[0][0] == _SEQUENCE:
            # EncryptedPrivateKeyInfo ::= SEQUENCE { encryptionAlgorithm, encryptedData OCTET STRING }
            return {"key_type": "encrypted", "curve": None, "public_key": None, "key_bits": 0}
        _expect(parts[0], _INTEGER, "not a private key")
        if parts[1][0] == _OCTET_STRING:
            return _ec_private(der, outer, None)
        if parts[1][0] == _SEQUENCE:
            # PKCS#8 PrivateKeyInfo ::= SEQUENCE { version, AlgorithmIdentifier, privateKey OCTET STRING, ... }
            algorithm = children(der, parts[1][1], parts[1][2])
            oid = bytes(der[algorithm[0][1] : algorithm[0][2]])
            inner = _expect(parts[2], _OCTET_STRING, "malformed PKCS#8 key")
            element = tlv(der, inner[1], inner[2])
            if oid == OID_EC_PUBLIC_KEY:
                curve = bytes(der[algorithm[1][1] : algorithm[1][2]]) if len(algorithm) > 1 else None
                return _ec_private(der, element, curve)
            if oid == OID_RSA:
                return _rsa_private(der, element)
            return {"key_type": "other", "curve": None, "public_key": None, "key_bits": 0}
        if parts[1][0] == _INTEGER and len(parts) >= 9:
            return _rsa_private(der, outer)
    except IndexError:
        pass
    raise ValueError("not a private key in SEC1, PKCS#1 or PKCS#8 form")
