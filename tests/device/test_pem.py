# PEM splitting, byte by byte: block text, DER shape, and every error naming the certificate it concerns.
from fixtures import CERT_A, CERT_B

from azprov import errors, pem, transport
from azprov.encoding import b64decode, b64encode
from azprov.errors import ProvisioningError
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


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return path


def _remove(*paths):
    import os

    for path in paths:
        try:
            os.remove(path)
        except OSError:
            pass


def _ca_error(path):
    """The CONFIGURATION error for a dps_ca_file, from reading it or from loading it into a TLS context."""
    try:
        transport.tls_context((pem.open_ca_file(path),))
    except ProvisioningError as exc:
        assert exc.kind == errors.CONFIGURATION, exc.kind
        assert exc.message.startswith("dps_ca_file: "), exc.message
        return exc.message
    raise AssertionError("accepted")


def _der_of(pem_text):
    return b64decode("".join(line for line in pem_text.split("\n") if line and not line.startswith("-----")))


def test_a_ca_file_is_bounded_before_it_is_read_and_names_its_field():
    # Issue 21, item 2: a 50 MB CA file ended in out_of_memory with no field named.
    limit = pem.MAX_CA_FILE_BYTES
    try:
        with open("big_ca.pem", "w") as f:
            f.write(CERT_A)
            f.write("#" * (limit - len(CERT_A)))
        assert isinstance(pem.open_ca_file("big_ca.pem"), PemFile)  # at the limit: read while the context loads it
        with open("big_ca.pem", "a") as f:
            f.write("#")
        assert _ca_error("big_ca.pem") == "dps_ca_file: big_ca.pem is larger than %d bytes" % limit
        assert _ca_error("no_such_ca.pem") == "dps_ca_file: no_such_ca.pem does not exist"
    finally:
        _remove("big_ca.pem")


def test_a_ca_file_may_be_one_der_certificate():
    # Issue 21, item 2: a DER file was "cannot be read" without a word about the PEM that was expected.
    der = _der_of(CERT_A)
    try:
        source = pem.open_ca_file(_write("ca.der", der))
        assert bytes(source) == der and list(der_certificates(source)) == [der]
        assert transport.tls_context((source,))[1] == 1  # loaded as it is
        _write("two.der", der + _der_of(CERT_B))  # DER holds one certificate: a chain is PEM's job
        _write("cut.der", der[:-1])
        for path in ("two.der", "cut.der"):
            message = _ca_error(path)
            assert "not a PEM file, nor a single DER certificate" in message and "is expected" in message, message
        _write("huge.der", der[:2] + bytes(pem.MAX_DER_FILE_BYTES))
        assert _ca_error("huge.der") == (
            "dps_ca_file: huge.der is a DER file larger than %d bytes (one certificate is expected)"
            % pem.MAX_DER_FILE_BYTES
        )
        _write("junk.bin", bytes(range(256)) * 4)  # neither text nor DER
        assert "(a PEM file of certificates, or one DER certificate, is expected)" in _ca_error("junk.bin")
        _write("text.txt", b"no certificates here\n")
        assert _ca_error("text.txt") == (
            "dps_ca_file: no certificate found (a PEM file of certificates, or one DER certificate, is expected)"
        )
    finally:
        _remove("ca.der", "two.der", "cut.der", "huge.der", "junk.bin", "text.txt")


def test_a_pem_ca_file_is_read_while_the_context_loads_it():
    try:
        source = pem.open_ca_file(_write("two.pem", (CERT_A + CERT_B).encode()))
        assert isinstance(source, PemFile)
        assert list(der_certificates(source)) == [_der_of(CERT_A), _der_of(CERT_B)]
    finally:
        _remove("two.pem")
