# PEM splitting, byte by byte: block text, DER shape, and every error naming the certificate it concerns.
from fixtures import CERT_A, CERT_B

from azprov.encoding import b64encode
from azprov.pem import PemError, PemFile, der_certificates, split

_BEGIN = "-----BEGIN CERTIFICATE-----"
_END = "-----END CERTIFICATE-----"


def _pem(der, width=64, newline="\n"):
    body = b64encode(der)
    lines = [body[i : i + width] for i in range(0, len(body), width)]
    return newline.join([_BEGIN] + lines + [_END]) + newline


def _der(second=0x82, size=70, first=0x30):
    return bytes((first, second)) + bytes(range(size - 2))


def _error(text):
    try:
        list(split(text))
    except PemError as exc:
        return str(exc)
    return None


def test_blocks_come_back_with_lf_endings_and_their_der():
    der = _der()
    for newline in ("\n", "\r\n"):
        blocks = list(split(_pem(der, newline=newline)))
        assert blocks == [(_pem(der), der)], newline
    two = list(split(_pem(_der(0x81)) + "subject=CN=x\n# a comment\n\n" + _pem(_der(0x83), width=76)))
    assert [d for _, d in two] == [_der(0x81), _der(0x83)]
    assert two[1][0] == _pem(_der(0x83), width=76)
    assert list(der_certificates(CERT_A + CERT_B)) == [d for _, d in split(CERT_A + CERT_B)]
    assert len(list(der_certificates(CERT_A + CERT_B))) == 2


def test_lines_with_spaces_around_are_trimmed():
    der = _der()
    text = "\n".join("  " + line + " \t" for line in _pem(der).split("\n"))
    assert list(split(text)) == [(_pem(der), der)]


def test_pem_file_is_read_line_by_line():
    with open("bundle_test.pem", "w") as f:
        f.write("# two roots\n" + CERT_A + CERT_B)
    try:
        assert [d for _, d in split(PemFile("bundle_test.pem"))] == [d for _, d in split(CERT_A + CERT_B)]
        assert list(PemFile("bundle_test.pem"))[0] == "# two roots\n"
    finally:
        import os

        os.remove("bundle_test.pem")


def test_each_error_names_the_certificate():
    good = _pem(_der())
    assert _error("") == "no certificate found"
    assert _error("just text\n") == "no certificate found"
    assert _error(_END + "\n") == "END line without BEGIN"
    assert _error(_BEGIN + "\nMIIB\n") == "certificate 1 has no END line"
    assert _error(good + _BEGIN + "\nMIIB\n") == "certificate 2 has no END line"
    assert _error(good + _BEGIN + "\n" + _BEGIN + "\n") == "certificate 2 has no END line"
    assert _error(good + _BEGIN + "\n!!!!\n" + _END + "\n") == "certificate 2 is not valid base64"
    assert _error(_pem(_der(size=63))) == "certificate 1 is not a DER certificate"
    assert _error(good + _pem(_der(first=0x31))) == "certificate 2 is not a DER certificate"
    for second in (0x80, 0x84, 0x30):
        assert _error(_pem(_der(second))) == "certificate 1 is not a DER certificate", second
    assert _error(_pem(_der(size=64))) is None  # the smallest accepted
