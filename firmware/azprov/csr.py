# The device's own NIST P-384 key and its PKCS#10 certificate signing request, for DPS certificate issuance. No
# MicroPython port exposes EC key generation or CSR writing, so both are done here on the port's arbitrary-precision
# integers. Pure functions, no I/O:
#   d = new_key()                 private scalar in [1, n-1]
#   public_point(d)               (x, y), affine integers
#   sign(d, message)              DER ECDSA signature (ecdsa-with-SHA256, RFC 6979 nonce)
#   csr_der(d, common_name)       DER CertificationRequest, CN = common_name (the registration id)
#   private_key_der(d)            DER SEC1 ECPrivateKey, as ssl.SSLContext.load_cert_chain takes it
#
# Timing: the scalar multiplication is a Montgomery ladder over complete projective formulas, so every bit of the
# scalar costs the same sequence of field operations (one addition, one doubling) with no branch on the bit and no
# special case for the point at infinity. That is all MicroPython allows: its bignum multiply, divide and modulo
# take time that depends on the operands' values and lengths, and every result is a fresh heap object (allocation and
# garbage collection time vary too). So this gives no constant-time guarantee; it removes the grossest leak (a
# per-bit difference in the work done) and nothing finer. Keep the key off devices where a local attacker can time
# many signatures precisely.
from micropython import const

_BYTES = const(48)  # P-384 coordinates and scalars
_MAX_DRAWS = const(8)  # each draw is rejected with probability about 2**-190: 8 failures means a broken source

# NIST P-384 (FIPS 186-4 D.1.2.4 / SEC 2 secp384r1): y^2 = x^3 - 3x + b over GF(p), prime group order n.
# Big integers cannot be const() on every port, so these are plain module globals, loaded into locals when hot.
_P = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFFFF0000000000000000FFFFFFFF
_B = 0xB3312FA7E23EE7E4988E056BE3F82D19181D9C6EFE8141120314088F5013875AC656398D8A2ED19D2A85C8EDD3EC2AEF
_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973
_GX = 0xAA87CA22BE8B05378EB1C71EF320AD746E1D3B628BA79B9859F741E082542A385502F25DBF55296C3A545E3872760AB7
_GY = 0x3617DE4A96262C6F5D9E98BF9292DC29F8F41DBD289A147CE9DA3113B5F0B8C00A60B1CE1D7E819D7A431D7C90EA0E5F

# DER pieces, whole elements (tag, length, value).
_OID_EC_PUBLIC_KEY = b"\x06\x07\x2a\x86\x48\xce\x3d\x02\x01"  # 1.2.840.10045.2.1
_OID_SECP384R1 = b"\x06\x05\x2b\x81\x04\x00\x22"  # 1.3.132.0.34
# 1.2.840.10045.4.3.2. SHA-256, not SHA-384 (the natural pair for P-384): MicroPython's hashlib has only sha1 and
# sha256 on the ports we build. The pairing is valid X.509/PKCS#10 (RFC 5758 does not tie hash to curve) and DPS
# does not state which algorithm it wants; a SHA-256 digest is simply used whole (it is shorter than n).
_ALG_ECDSA_SHA256 = b"\x30\x0a\x06\x08\x2a\x86\x48\xce\x3d\x04\x03\x02"
_OID_COMMON_NAME = b"\x06\x03\x55\x04\x03"  # 2.5.4.3


def _add(p1, p2):
    # Complete addition on a = -3 curves in homogeneous projective coordinates (X:Y:Z), x = X/Z, y = Y/Z (Renes,
    # Costello, Batina 2016, Algorithm 4). Correct for every pair of inputs, equal points and the point at
    # infinity (0:1:0) included, so the ladder needs no branch. Sums are left unreduced (Python integers do not
    # overflow); only products are reduced mod p.
    p = _P
    b = _B
    x1, y1, z1 = p1
    x2, y2, z2 = p2
    t0 = x1 * x2 % p
    t1 = y1 * y2 % p
    t2 = z1 * z2 % p
    t3 = (x1 + y1) * (x2 + y2) % p - t0 - t1
    t4 = (y1 + z1) * (y2 + z2) % p - t1 - t2
    y3 = (x1 + z1) * (x2 + z2) % p - t0 - t2
    x3 = y3 - b * t2 % p
    x3 = 3 * x3
    z3 = t1 - x3
    x3 = t1 + x3
    y3 = b * y3 % p
    t2 = 3 * t2
    y3 = 3 * (y3 - t2 - t0)
    t0 = 3 * t0 - t2
    return (
        (x3 * t3 - t4 * y3) % p,
        (x3 * z3 + t0 * y3) % p,
        (z3 * t4 + t3 * t0) % p,
    )


def _multiply(k, x, y):
    # Montgomery ladder over all 384 bit positions: R0 = [prefix]P, R1 = R0 + P throughout. Each step adds the two
    # and doubles the one the bit selects; the selection is tuple indexing, not a branch.
    r0 = (0, 1, 0)
    r1 = (x, y, 1)
    for i in range(_BYTES * 8 - 1, -1, -1):
        bit = (k >> i) & 1
        both = (r0, r1)
        total = _add(r0, r1)
        twice = _add(both[bit], both[bit])
        r0 = (twice, total)[bit]
        r1 = (total, twice)[bit]
    z = r0[2]
    if not z:
        raise ValueError("point at infinity")
    inverse = pow(z, _P - 2, _P)  # Fermat: pow(z, -1, p) is missing on MicroPython
    return r0[0] * inverse % _P, r0[1] * inverse % _P


def _check_scalar(d):
    if not 0 < d < _N:
        raise ValueError("private key out of range")


def new_key(random_bytes=None):
    """A fresh private scalar in [1, n-1]: 48 bytes from `random_bytes(48)` (default os.urandom, the ESP32's
    hardware RNG), redrawn while out of range (rejection sampling: uniform, no modulo bias)."""
    if random_bytes is None:
        import os

        random_bytes = os.urandom
    for _ in range(_MAX_DRAWS):
        data = random_bytes(_BYTES)
        if len(data) != _BYTES:
            raise ValueError("random source gave %d bytes" % len(data))
        d = int.from_bytes(data, "big")
        if 0 < d < _N:
            return d
    raise ValueError("random source gives only out-of-range values")


def public_point(d):
    """The public key d*G as affine integers (x, y)."""
    _check_scalar(d)
    return _multiply(d, _GX, _GY)


def _rfc6979_k(d, digest):
    # Deterministic nonce (RFC 6979 section 3.2) with HMAC-SHA256: derived from the key and the message, so signing
    # never depends on the random source being good at that moment, and signatures are reproducible (the RFC's own
    # P-384/SHA-256 vectors test it). A repeated or biased k would give the private key away; this cannot repeat.
    from azprov.sas import hmac_sha256

    h = int.from_bytes(digest, "big") % _N  # bits2octets: 256 bits < qlen, no shift
    seed = d.to_bytes(_BYTES, "big") + h.to_bytes(_BYTES, "big")
    v = b"\x01" * 32
    key = hmac_sha256(b"\x00" * 32, v + b"\x00" + seed)
    v = hmac_sha256(key, v)
    key = hmac_sha256(key, v + b"\x01" + seed)
    v = hmac_sha256(key, v)
    while True:
        v = hmac_sha256(key, v)
        t = v
        v = hmac_sha256(key, v)
        k = int.from_bytes(t + v[:16], "big")  # qlen = 384 bits: two blocks, leftmost 48 bytes
        if 0 < k < _N:
            return k
        key = hmac_sha256(key, v + b"\x00")
        v = hmac_sha256(key, v)


def sign(d, message):
    """ECDSA over P-384 with SHA-256 of `message` (bytes) -> DER Ecdsa-Sig-Value SEQUENCE { r, s }."""
    import hashlib

    _check_scalar(d)
    digest = hashlib.sha256(message).digest()
    e = int.from_bytes(digest, "big")
    k = _rfc6979_k(d, digest)
    r = _multiply(k, _GX, _GY)[0] % _N
    s = pow(k, _N - 2, _N) * (e + r * d) % _N
    if not r or not s:  # probability about 2**-384; RFC 6979 would draw the next k
        raise ValueError("degenerate signature")
    return _tlv(0x30, _integer(r) + _integer(s))


def _tlv(tag, content):
    length = len(content)
    if length < 0x80:
        head = bytes((tag, length))
    elif length < 0x100:
        head = bytes((tag, 0x81, length))
    else:
        head = bytes((tag, 0x82, length >> 8, length & 0xFF))
    return head + content


def _integer(value):
    # Unsigned DER INTEGER: minimal big-endian bytes, a leading zero when the high bit is set.
    data = value.to_bytes(_BYTES + 1, "big")
    start = 0
    while start < _BYTES and data[start] == 0 and data[start + 1] < 0x80:
        start += 1
    return _tlv(0x02, data[start:])


def public_key_bytes(d):
    """The uncompressed public point 04 || x || y, as a certificate's SubjectPublicKeyInfo carries it."""
    x, y = public_point(d)
    return b"\x04" + x.to_bytes(_BYTES, "big") + y.to_bytes(_BYTES, "big")


def _point_bits(d):
    # BIT STRING (no unused bits) of the uncompressed point.
    return _tlv(0x03, b"\x00" + public_key_bytes(d))


def csr_der(d, common_name):
    """PKCS#10 CertificationRequest (DER) for the key d: version 0, subject CN=common_name (UTF8String), the
    P-384 public key, no attributes, signed ecdsa-with-SHA256."""
    name = common_name.encode()
    if not name:
        raise ValueError("empty common name")
    subject = _tlv(0x30, _tlv(0x31, _tlv(0x30, _OID_COMMON_NAME + _tlv(0x0C, name))))
    spki = _tlv(0x30, _tlv(0x30, _OID_EC_PUBLIC_KEY + _OID_SECP384R1) + _point_bits(d))
    info = _tlv(0x30, b"\x02\x01\x00" + subject + spki + b"\xa0\x00")
    signature = sign(d, info)
    return _tlv(0x30, info + _ALG_ECDSA_SHA256 + _tlv(0x03, b"\x00" + signature))


def private_key_der(d):
    """SEC1 ECPrivateKey (DER): version 1, the 48-byte scalar, [0] secp384r1, [1] the public point."""
    _check_scalar(d)
    body = b"\x02\x01\x01" + _tlv(0x04, d.to_bytes(_BYTES, "big"))
    body += _tlv(0xA0, _OID_SECP384R1) + _tlv(0xA1, _point_bits(d))
    return _tlv(0x30, body)
