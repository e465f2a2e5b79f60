# Shared pieces of the device-side tests: fixed test certificates (self-signed P-256 roots, private keys discarded)
# and raises(), the assertion that a call ends in a classified error of one kind.
from azprov.errors import ProvisioningError


class PemSink:
    """A trust bundle sink with store.Incoming's interface that keeps what is written in memory."""

    def __init__(self):
        self.started = 0
        self.pem = b""

    def start(self):
        self.started += 1
        self.pem = b""

    def write(self, piece):
        self.pem += bytes(piece)


def raises(kind, fn, *args):
    """Calls fn(*args); asserts it raises a ProvisioningError of `kind` and returns that error."""
    try:
        fn(*args)
    except ProvisioningError as exc:
        assert exc.kind == kind, (exc.kind, kind)
        return exc
    raise AssertionError("no error raised")


CERT_A = """-----BEGIN CERTIFICATE-----
MIIBtjCCAV2gAwIBAgIUL9BBu1q46RbQRcs+d5QKvoDcaaAwCgYIKoZIzj0EAwIw
MDEXMBUGA1UEAwwOZml4dHVyZS1yb290LWExFTATBgNVBAoMDGF6cHJvdiB0ZXN0
czAgFw0yNjExMjIxNzAyMjhaGA8yMTI2MTAyOTE3MDIyOFowMDEXMBUGA1UEAwwO
Zml4dHVyZS1yb290LWExFTATBgNVBAoMDGF6cHJvdiB0ZXN0czBZMBMGByqGSM49
AgEGCCqGSM49AwEHA0IABOF3fG0l2OKqBqooc4QsyHPXmulkyXXkBbWVwZ6+HbQ8
c44xtbTSb3I91BQme0iusTDTvsSNQD7ogF06wvRNrhCjUzBRMB0GA1UdDgQWBBTr
b7bHLUkjnVPupOaZ/UNbhWsZWDAfBgNVHSMEGDAWgBTrb7bHLUkjnVPupOaZ/UNb
hWsZWDAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0cAMEQCICfCuPQ9FhlX
Vy3hecCPWO7BoWZyqWSNgX/nawyIqy8BAiBEPWUMZkMnWMfI0XeAHjCxB/v1kJTJ
N4Dr8UpYmu8o9A==
-----END CERTIFICATE-----
"""

CERT_A_SHA256 = "82FBD5A28D28F87D33CF05F24CB04D7C994D10E94CE87159AEB3F60FBBAFDF68"

CERT_B = """-----BEGIN CERTIFICATE-----
MIIBtzCCAV2gAwIBAgIUFXyuPo4PYi9NpgpEEYFv9/TPRKMwCgYIKoZIzj0EAwIw
MDEXMBUGA1UEAwwOZml4dHVyZS1yb290LWIxFTATBgNVBAoMDGF6cHJvdiB0ZXN0
czAgFw0yNjExMjIxNzAyMjhaGA8yMTI2MTAyOTE3MDIyOFowMDEXMBUGA1UEAwwO
Zml4dHVyZS1yb290LWIxFTATBgNVBAoMDGF6cHJvdiB0ZXN0czBZMBMGByqGSM49
AgEGCCqGSM49AwEHA0IABNn+ugKRxU+SH238iQctp2VwNtJcc8zl1OoN9pcs6NJ/
uDripV42zVgS+M7bBEbgtQxZo8C2yEmFOG9FEZfCjiOjUzBRMB0GA1UdDgQWBBS6
uNphG4JZeFZfxOKl1247sB+7TzAfBgNVHSMEGDAWgBS6uNphG4JZeFZfxOKl1247
sB+7TzAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCICiSNgM0n1tL
KNdyjIdfdieCwx4KCD6e/5o6Mni33wqQAiEAxM6VVyqzqiPNirTo2qzdyA43XRkx
2+tTS7DceyV4SJY=
-----END CERTIFICATE-----
"""

CERT_B_SHA256 = "E79154A14352C5C0B03A686FE1F082AB3B6242787972CD26550EEFA1C3BDCFBF"

CERT_C = """-----BEGIN CERTIFICATE-----
MIIBtzCCAV2gAwIBAgIUL+evKYXu0tw7YhZsK/4eJGMxEUIwCgYIKoZIzj0EAwIw
MDEXMBUGA1UEAwwOZml4dHVyZS1yb290LWMxFTATBgNVBAoMDGF6cHJvdiB0ZXN0
czAgFw0yNjExMjIxNzAyMjhaGA8yMTI2MTAyOTE3MDIyOFowMDEXMBUGA1UEAwwO
Zml4dHVyZS1yb290LWMxFTATBgNVBAoMDGF6cHJvdiB0ZXN0czBZMBMGByqGSM49
AgEGCCqGSM49AwEHA0IABMxHaI4wt+QcMtgmND/B+omgN9aee7XtHbdgxYWoY6nZ
VPxmbHzBbELilCAFJUVeNi8IUEY+wvlX+KPj2/P2Re2jUzBRMB0GA1UdDgQWBBR8
1f8xXipOp9oW3PNj8eRu4ryvtjAfBgNVHSMEGDAWgBR81f8xXipOp9oW3PNj8eRu
4ryvtjAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIHsaEf1X57bs
XD19lvCVvuRJzWLy5ffbMIjEx5rYUidsAiEArajq0UVzv/56DxELGQr+ATdHd0+C
2iXl7JlErVbZnoI=
-----END CERTIFICATE-----
"""

CERT_C_SHA256 = "D39A08A9433EC48736683217C128BAA4DD100C6009209B06EC293249B97A1B5A"
