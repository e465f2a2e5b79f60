# Strict base64, percent-encoding and the UTF-8 check, byte by byte: vectors from RFC 4648 and RFC 3629 (not computed
# with the code under test).
from azprov.encoding import b64decode, b64encode, check_utf8, url_encode


def _refused(check, value, error):
    try:
        check(value)
    except error:
        return True
    return False


def test_b64_rfc4648_vectors_both_ways():
    vectors = (
        (b"", ""),
        (b"f", "Zg=="),
        (b"fo", "Zm8="),
        (b"foo", "Zm9v"),
        (b"foob", "Zm9vYg=="),
        (b"fooba", "Zm9vYmE="),
        (b"foobar", "Zm9vYmFy"),
    )
    for raw, text in vectors:
        assert b64encode(raw) == text
        assert b64decode(text) == raw
        assert b64decode(text.encode()) == raw  # bytes too
        assert b64decode(text.rstrip("=")) == raw  # unpadded, as some IoT Hub keys are
    assert b64decode(bytearray(b"Zm8=")) == b"fo"
    assert b64decode("+/+/") == b"\xfb\xff\xbf"
    assert b64decode("AAAX") == b"\x00\x00\x17"  # only "=" is stripped from the end


def test_b64_refuses_foreign_characters_and_impossible_lengths():
    for bad in ("Zm9v!", "Zm 9v", "Zm9v\n", "Zm-_", "Zm9vY", "Z", "Zm9v=Zm9v", b"Zm\x009v"):
        assert _refused(b64decode, bad, ValueError), bad


def test_url_encode_every_class_of_character():
    assert url_encode("AZaz09-_.~") == "AZaz09-_.~"
    assert url_encode(" /?#[]@!$&'()*+,;=%") == "%20%2F%3F%23%5B%5D%40%21%24%26%27%28%29%2A%2B%2C%3B%3D%25"
    assert url_encode("\n") == "%0A"
    assert url_encode("é") == "%C3%A9"  # UTF-8 bytes, upper-case hex
    assert url_encode("\u20ac") == "%E2%82%AC"
    assert url_encode("\x7f") == "%7F"
    assert url_encode("") == ""


def test_check_utf8_accepts_every_valid_form():
    for good in (
        b"",
        b"plain ascii",
        "é".encode(),
        "\u0800".encode(),  # E0 A0 80: lowest 3-byte form
        b"\xed\x9f\xbf",  # U+D7FF: last before the surrogates
        b"\xef\xbf\xbd",  # U+FFFD
        "\U00010000".encode(),  # F0 90 80 80
        b"\xf4\x8f\xbf\xbf",  # U+10FFFF, the last code point
        b"\xe0\xbf\xbf",
        b"\xf0\xbf\xbf\xbf",
        b"\xed\x80\x80",
        b"\xf4\x80\x80\x80",
        bytearray("ok é".encode()),
    ):
        check_utf8(good)


def test_check_utf8_refuses_what_only_a_lax_decoder_takes():
    for bad in (
        b"\xc0\xaf",  # overlong "/"
        b"\xc1\xbf",
        b"a\xf5\x80\x80\x80",  # past U+10FFFF
        b"\xf6",
        b"\xf7",
        b"\xf8",
        b"\xf9",
        b"\xfa",
        b"\xfb",
        b"\xfc",
        b"\xfd",
        b"\xfe",
        b"\xff",
        b"\xe0\x80\x80",  # overlong 3-byte
        b"\xe0\x9f\xbf",
        b"\xe0\xc0\x80",
        b"\xed\xa0\x80",  # encoded surrogate U+D800
        b"\xed\xbf\xbf",
        b"\xed\x7f\x80",
        b"\xf0\x80\x80\x80",  # overlong 4-byte
        b"\xf0\x8f\xbf\xbf",
        b"\xf0\xc0\x80\x80",
        b"\xf4\x90\x80\x80",  # U+110000
        b"\xf4\x7f\x80\x80",
        b"ok\xe0",  # a narrow lead as the last byte
        b"ok\xed",
        b"ok\xf0",
        b"ok\xf4",
        b"\xe0\xa0\x80\xe0\x80\x80",  # the second occurrence is the bad one
        b"\xed\x80\x80\xed\xa0\x80",
        b"\xf0\x90\x80\x80\xf0\x80\x80\x80",
        b"\xf4\x80\x80\x80\xf4\x90\x80\x80",
        bytearray(b"\xc0\xaf"),
    ):
        assert _refused(check_utf8, bad, UnicodeError), bad


def test_b64_refusals_say_which_rule_broke():
    # The text reaches the user: a private key file with bad base64 is reported with it (azprov.identity).
    for bad, message in (
        ("Zm9v!", "invalid base64 character"),
        (b"Zm9v\n", "invalid base64 character"),
        ("Zm9vY", "invalid base64 length"),
    ):
        try:
            b64decode(bad)
        except ValueError as exc:
            assert str(exc) == message, (bad, str(exc))
        else:
            raise AssertionError("accepted %r" % (bad,))
