"""The device's own rules for a provisioning file and its CA file, run on the host: one source of truth.

`provision-file validate`, `create` and `fleet` judge a file by running the firmware's `azprov.config` and
`azprov.pem` (firmware/azprov/) under CPython, with a stub `micropython` module as host_tools/bench/fleet_driver.py
does, so the host accepts exactly what the device accepts. Two things differ between CPython and MicroPython and
are evened out here, in the direction of the stricter reading:

- MicroPython's JSON decoder refuses NaN and Infinity (CPython takes them) and takes control characters inside
  strings (CPython's strict mode refuses them): the firmware's `json` is given CPython's decoder with
  `strict=False` and a `parse_constant` that refuses, which reads JSON as MicroPython does.
- Files are read here with a size limit and only when they are regular files (a FIFO or /dev/zero would hang or
  grow without bound).

The JSON schema (provisioning.schema.json) still describes the structure and gives editors and messages their
words; the verdict is the firmware's. tests/provisioning/test_device_agreement.py runs the same generated files
through this module and through the firmware on the MicroPython Unix port and checks the verdicts agree.
"""

from __future__ import annotations

import importlib
import json
import os
import stat
import sys
import types
from pathlib import Path

FIRMWARE_DIR = Path(__file__).resolve().parents[2] / "firmware"


class RuleError(ValueError):
    """A file breaks a device rule; the message names the file and the field."""


class _MicroPythonJson:
    """`json` as MicroPython's decoder reads it (see the module docstring)."""

    @staticmethod
    def _refuse_constant(name):
        raise ValueError(f"{name} is not JSON")

    def loads(self, text):
        return json.loads(text, strict=False, parse_constant=self._refuse_constant)

    def __getattr__(self, name):  # anything else the module may use: CPython's own
        return getattr(json, name)


_modules: types.SimpleNamespace | None = None


def firmware() -> types.SimpleNamespace:
    """The firmware's config, pem and errors modules, imported once from firmware/ under CPython."""
    global _modules
    if _modules is None:
        if "micropython" not in sys.modules:
            sys.modules["micropython"] = types.SimpleNamespace(const=lambda value: value)
        if str(FIRMWARE_DIR) not in sys.path:
            sys.path.append(str(FIRMWARE_DIR))
        config = importlib.import_module("azprov.config")
        pem = importlib.import_module("azprov.pem")
        errors = importlib.import_module("azprov.errors")
        encoding = importlib.import_module("azprov.encoding")
        config.json = _MicroPythonJson()
        _modules = types.SimpleNamespace(config=config, pem=pem, errors=errors, encoding=encoding)
    return _modules


def max_file_bytes() -> int:
    return firmware().config._MAX_FILE_BYTES


def ca_file_limit() -> int:
    """The largest CA file the device takes (azprov.pem.MAX_CA_FILE_BYTES, measured on the 32-bit frozen build)."""
    return firmware().pem.MAX_CA_FILE_BYTES


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; RuleError naming `what` otherwise."""
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise RuleError(f"{path}: {what} does not exist") from None
    except OSError as exc:
        raise RuleError(f"{path}: {what} cannot be read ({exc.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise RuleError(f"{path}: {what} is a folder, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise RuleError(f"{path}: {what} is not a regular file (a device, FIFO or socket)")
    if info.st_size > limit:
        raise RuleError(f"{path}: {what} is larger than {limit} bytes")
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise RuleError(f"{path}: {what} cannot be read ({exc.strerror})") from None
    if len(data) > limit:  # grew since the stat
        raise RuleError(f"{path}: {what} is larger than {limit} bytes")
    return data


def judge_text(text: str, where: str) -> dict:
    """The device's verdict on provisioning-file text: its config (paths resolved as the device does) or RuleError.
    `where` is the file's path as the device would see it (relative paths resolve against its folder)."""
    fw = firmware()
    if len(text.encode("utf-8", "surrogatepass")) > max_file_bytes():
        raise RuleError(f"{where}: provisioning file is larger than {max_file_bytes()} bytes{_largest_field(text)}")
    try:
        return fw.config.parse(text, where)
    except fw.errors.ProvisioningError as exc:
        raise RuleError(exc.message) from None


def _largest_field(text: str) -> str:
    """' (largest field: NAME)' for a too-large file, so the message says what to shorten; '' when unknown."""
    try:
        document = json.loads(text, strict=False)
    except (ValueError, RecursionError):
        return ""
    if not isinstance(document, dict) or not document:
        return ""
    sizes = {}
    for name, value in document.items():
        try:
            sizes[name] = len(json.dumps(value))
        except (ValueError, RecursionError):
            sizes[name] = len(text)
    return f" (largest field: {max(sizes, key=sizes.get)})"


def judge_bytes(data: bytes, where: str) -> dict:
    fw = firmware()
    if len(data) > max_file_bytes():
        raise RuleError(f"{where}: provisioning file is larger than {max_file_bytes()} bytes")
    try:
        fw.encoding.check_utf8(data)
        text = data.decode("utf-8")
    except UnicodeError:
        raise RuleError(f"{where}: provisioning file is not UTF-8") from None
    return judge_text(text, where)


def load_der_certificate(der: bytes):
    """cryptography's certificate from DER, as mbedTLS reads it: a serial number that is zero or negative (several
    public roots in certifi's bundle have one, e.g. Go Daddy Root Certificate Authority - G2) is accepted without
    cryptography's CryptographyDeprecationWarning, which the device would not give either. Any other warning, and
    every error (ValueError), is passed on."""
    import warnings

    from cryptography import x509
    from cryptography.utils import CryptographyDeprecationWarning

    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"Parsed a serial number which wasn't positive", category=CryptographyDeprecationWarning
        )
        return x509.load_der_x509_certificate(der)


def judge_ca_text(text: str, where: str) -> int:
    """The device's verdict on a CA file's text: how many certificates it loads, or RuleError."""
    fw = firmware()
    count = 0
    try:
        for der in fw.pem.der_certificates(text):
            count += 1
            try:
                load_der_certificate(der)  # what mbedTLS's load_verify_locations checks
            except ValueError:
                raise fw.pem.PemError(f"certificate {count} is not a valid X.509 certificate") from None
    except fw.pem.PemError as exc:
        raise RuleError(f"{where}: {exc}") from None
    return count


_CA_FORMS = "a PEM file of certificates, or one DER certificate, is expected"


def judge_ca_bytes(data: bytes, where: str) -> int:
    """The device's verdict on a CA file's bytes (azprov.pem.open_ca_file's forms): PEM text, or a DER file holding
    one certificate. How many certificates it loads, or RuleError."""
    fw = firmware()
    if fw.pem.is_der(data[:2]):
        if len(data) > fw.pem.MAX_DER_FILE_BYTES:
            raise RuleError(
                f"{where}: is a DER file larger than {fw.pem.MAX_DER_FILE_BYTES} bytes (one certificate is expected)"
            )
        try:
            (der,) = fw.pem.der_certificates(data)
        except fw.pem.PemError as exc:
            raise RuleError(f"{where}: {exc} ({_CA_FORMS})") from None
        try:
            load_der_certificate(der)
        except ValueError:
            raise RuleError(f"{where}: certificate 1 is not a valid X.509 certificate") from None
        return 1
    try:
        text = data.decode("utf-8")
    except UnicodeError:
        raise RuleError(f"{where}: CA file is neither UTF-8 text nor DER ({_CA_FORMS})") from None
    return judge_ca_text(text, where)


def judge_ca_file(path: Path, field: str = "dps_ca_file", owner: str | Path | None = None) -> int:
    prefix = f"{owner}: {field}: " if owner is not None else ""
    try:
        data = read_bounded(path, ca_file_limit(), "CA file")
        return judge_ca_bytes(data, str(path))
    except RuleError as exc:
        raise RuleError(prefix + str(exc)) from None


def judge_identity(config: dict, owner: str | Path, ca_file: Path | None = None) -> dict:
    """An X.509 provisioning file's certificate and key as the device judges them (azprov.identity: PEM or DER,
    key type, key/certificate match, CN = registration id, expiry), plus what only the host can check: the dates'
    start, that each certificate of the file signs the one before, and with `ca_file` that the chain reaches that
    CA (the enrollment group's root or intermediate). Returns the device certificate's info; RuleError otherwise.
    Messages never hold key material."""
    import datetime as dt

    from cryptography.exceptions import InvalidSignature

    fw = firmware()
    identity = importlib.import_module("azprov.identity")
    der = importlib.import_module("azprov.der")
    for field in ("certificate_file", "private_key_file"):
        try:
            read_bounded(Path(config[field]), identity._MAX_FILE_BYTES, field.replace("_", " "))
        except RuleError as exc:
            raise RuleError(f"{owner}: {field}: {exc}") from None
    now = int(dt.datetime.now(dt.UTC).timestamp())
    try:
        certificates = identity.read_certificates(config["certificate_file"])
        key = identity.read_private_key(config["private_key_file"])
        device = identity.check(certificates, key, config["registration_id"], now, 0)
    except fw.errors.ProvisioningError as exc:
        raise RuleError(f"{owner}: {exc.message}") from None
    chain = [load_der_certificate(c) for c in certificates]
    if device["not_before"] > now:
        raise RuleError(f"{owner}: certificate_file: the device certificate is not valid before its not_before date")
    for child, parent in zip(chain, chain[1:]):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            raise RuleError(
                f"{owner}: certificate_file: {parent.subject.rfc4514_string()} did not sign "
                f"{child.subject.rfc4514_string()} (device certificate first, then its intermediates in order)"
            ) from None
    for cert in chain[1:]:
        info = der.certificate(cert.public_bytes(_der_encoding()))
        if info["not_after"] <= now:
            raise RuleError(f"{owner}: certificate_file: intermediate {info['common_name']!r} has expired")
    if ca_file is not None:
        try:
            anchors = [load_der_certificate(c) for c in identity.read_certificates(str(ca_file), "--ca")]
        except fw.errors.ProvisioningError as exc:
            raise RuleError(f"{owner}: {exc.message}") from None
        last = chain[-1]
        if not any(last == a or _issued_by(last, a) for a in anchors):
            raise RuleError(
                f"{owner}: certificate_file: the chain does not reach the CA in {ca_file} "
                "(another CA, or an intermediate missing from the file)"
            )
    return device


def _der_encoding():
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.DER


def _issued_by(child, parent) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        child.verify_directly_issued_by(parent)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False
