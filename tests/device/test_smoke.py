# The smallest device test: the board runs Python and has what the firmware needs (json, sha256, /lib on the path).
import sys


def test_python_works():
    assert sum(range(5)) == 10


def test_json_round_trip():
    import json

    assert json.loads(json.dumps({"a": [1, 2]})) == {"a": [1, 2]}


def test_sha256_available():
    import binascii
    import hashlib

    digest = binascii.hexlify(hashlib.sha256(b"abc").digest())
    assert digest == b"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", digest


def test_import_path_has_lib():
    if sys.implementation.name != "micropython":
        return  # pytest also runs these files under CPython (tests/device/conftest.py); the path is a board's concern
    assert "/lib" in sys.path or "lib" in sys.path, sys.path
