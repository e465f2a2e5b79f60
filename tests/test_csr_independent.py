"""The device's P-384 key and CSR (firmware/azprov/csr.py, issue 20) judged by an independent implementation: CPython's
`cryptography` (OpenSSL) must accept the CSR's signature, read the CN and the P-384 public key the device computed,
load the SEC1 private key with the same scalar, and produce the same RFC 6979 signatures. The firmware module is
imported from firmware/ under CPython, as tests/device/conftest.py does for the device tests."""

from __future__ import annotations

import base64
import os
import sys
import types
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.device import csr_fixtures as fx

_FIRMWARE = Path(__file__).resolve().parents[1] / "firmware"
if str(_FIRMWARE) not in sys.path:
    sys.path.insert(0, str(_FIRMWARE))
if "micropython" not in sys.modules:
    sys.modules["micropython"] = types.SimpleNamespace(const=lambda value: value)

from azprov import csr  # noqa: E402 (needs the path and the const() stand-in above)


def _check_csr(request_der: bytes, d: int, common_name: str) -> None:
    request = x509.load_der_x509_csr(request_der)
    assert request.is_signature_valid
    assert request.signature_hash_algorithm.name == "sha256"
    assert request.signature_algorithm_oid.dotted_string == "1.2.840.10045.4.3.2"
    assert request.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == common_name
    assert len(request.subject.rdns) == 1 and len(request.attributes) == 0 and len(request.extensions) == 0
    public = request.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp384r1"
    numbers = public.public_numbers()
    assert (numbers.x, numbers.y) == csr.public_point(d)
    expected = ec.derive_private_key(d, ec.SECP384R1()).public_key().public_numbers()
    assert (numbers.x, numbers.y) == (expected.x, expected.y)
    # the whole request is canonical DER: re-encoding gives the same bytes
    assert request.public_bytes(serialization.Encoding.DER) == request_der


def _check_private_key(key_der: bytes, d: int) -> None:
    key = serialization.load_der_private_key(key_der, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert key.private_numbers().private_value == d
    numbers = key.public_key().public_numbers()
    assert (numbers.x, numbers.y) == csr.public_point(d)
    # SEC1 with the curve and the public key, byte for byte what OpenSSL writes for the same key
    assert key_der == key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )


def test_known_csr_fixture_is_valid():
    # the bytes tests/device/test_csr.py expects the device to produce
    _check_csr(base64.b64decode(fx.CSR_DER), fx.RFC6979_D, fx.COMMON_NAME)


def test_certificate_fixture_is_for_the_fixture_key():
    cert = x509.load_der_x509_certificate(base64.b64decode(fx.CERT_DER))
    numbers = cert.public_key().public_numbers()
    assert (numbers.x, numbers.y) == (fx.RFC6979_UX, fx.RFC6979_UY)


def test_csr_verifies_with_cryptography():
    d = csr.new_key()
    _check_csr(csr.csr_der(d, "sensor-001"), d, "sensor-001")


def test_csr_common_name_beyond_ascii():
    d = csr.new_key()
    _check_csr(csr.csr_der(d, "capteur-é-001"), d, "capteur-é-001")


def test_private_key_der_loads_with_cryptography():
    d = csr.new_key()
    _check_private_key(csr.private_key_der(d), d)


def test_signatures_equal_cryptography_deterministic_ecdsa():
    # RFC 6979 with HMAC-SHA256: OpenSSL's deterministic ECDSA gives the same bytes, and verifies them
    for _ in range(5):
        d = csr.new_key()
        message = os.urandom(100)
        key = ec.derive_private_key(d, ec.SECP384R1())
        signature = csr.sign(d, message)
        assert signature == key.sign(message, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
        key.public_key().verify(signature, message, ec.ECDSA(hashes.SHA256()))


@pytest.mark.parametrize("round_trip", range(20))
def test_random_keys_round_trip(round_trip):
    d = csr.new_key()
    assert 0 < d < csr._N
    name = "device-%02d-%s" % (round_trip, os.urandom(4).hex())
    _check_csr(csr.csr_der(d, name), d, name)
    _check_private_key(csr.private_key_der(d), d)
