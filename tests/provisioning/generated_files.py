"""Generated provisioning files, valid and invalid, each in its own folder with its CA file: the input of the
differential test (validate vs the device) and of the host tools' bulk bad-input test.

Every field the schema knows (so fields added later are covered without a change here) gets every value of a pool of
wrong types, edges and odd strings, and is also left out; then come whole-file cases: sizes around the device's limit,
nesting, encodings, JSON the two decoders read differently, and CA files with comments, garbage and no certificate.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

from host_tools.provisioning.device_rules import firmware
from host_tools.provisioning.dps_roots import public_dps_roots_pem
from host_tools.provisioning.validation import load_schema
from tests.host_helpers import DEVICE_KEY

CA_NAME = "certs/ca.pem"
TEMPLATE = {
    "dps_host": "localhost",
    "dps_port": 8883,
    "id_scope": "0ne00AAAAAA",
    "registration_id": "sensor-001",
    "symmetric_key": DEVICE_KEY,
    "dps_ca_file": CA_NAME,
    "registration_timeout_s": 60,
}
SECRETS = (DEVICE_KEY, "wifi-secret-pw")
VALUES = [
    None,
    True,
    False,
    0,
    1,
    -1,
    4,
    5,
    2,
    1740,
    1741,
    8883,
    8883.0,
    65535,
    65536,
    10**20,
    1.5,
    "",
    " ",
    "x",
    "8883",
    "0ne00AAAAAA",
    "0NE00AAAAAA",
    "0ne00AAAA",
    "sensor-001",
    "sensor.",
    "bad id!",
    "host/name",
    "-host",
    "../../etc",
    "state/../x",
    "localhost",
    "127.0.0.1",
    "global.azure-devices-provisioning.net",
    DEVICE_KEY,
    "c2hvcnQ=",
    "not base64!",
    "debug",
    "loud",
    CA_NAME,
    "certs/missing.pem",
    "caf\u00e9",
    "\ud800",
    "x" * 129,
    "a" * 254,
    [],
    [1, "two"],
    {},
    {"ssid": "net"},
    {"ssid": "net", "password": "wifi-secret-pw"},
    {"ssid": "", "password": "p"},
    {"ssid": "net", "password": "p" * 65},
    {"ssid": "net", "colour": "blue"},
    {"nested": {"deeper": [1, 2, {"x": None}]}},
]


@dataclass
class GeneratedFile:
    name: str
    data: bytes  # the provisioning file
    ca: bytes | None  # the CA file at certs/ca.pem (None: none written)

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "provisioning.json"
        path.write_bytes(self.data)
        if self.ca is not None:
            (folder / "certs").mkdir(exist_ok=True)
            (folder / CA_NAME).write_bytes(self.ca)
        return path


def _nest(depth: int) -> str:
    """JSON text nesting `depth` levels (objects and lists in turn), built as text: too deep for json.dumps."""
    opening = "".join('{"k": ' if level % 2 == 0 else "[" for level in range(depth))
    closing = "".join("}" if level % 2 == 0 else "]" for level in reversed(range(depth)))
    return opening + "1" + closing


def generated_files() -> list[GeneratedFile]:
    good_ca = public_dps_roots_pem().encode()  # "# name" comment lines between the certificates, as create writes
    files: list[GeneratedFile] = []

    def add(name: str, document=None, data: bytes | None = None, ca: bytes | None = good_ca) -> None:
        if data is None:
            data = json.dumps(document, indent=2, ensure_ascii=False).encode("utf-8", "surrogatepass")
        files.append(GeneratedFile(name, data, ca))

    add("template", TEMPLATE)
    for field in sorted(set(load_schema()["properties"]) | set(TEMPLATE)):
        document = {k: v for k, v in TEMPLATE.items() if k != field}
        add(f"{field}=absent", document)
        for index, value in enumerate(VALUES):
            add(f"{field}=v{index}", {**TEMPLATE, field: value})

    # sizes around the device's 8192-byte limit, and the 20 KB payload of issue 14
    base = len(json.dumps({**TEMPLATE, "payload": ""}, indent=2).encode())
    for size in (8000, 8192, 8193, 20_000):
        add(f"payload-bytes-{size}", {**TEMPLATE, "payload": "p" * (size - base)})
    for depth in (5, 30, 31, 32, 33, 100, 600, 1000, 1500, 2000):
        add(
            f"payload-depth-{depth}",
            None,
            json.dumps(TEMPLATE).replace("{", '{"payload": ' + _nest(depth) + ", ", 1).encode(),
        )
    add("unknown-deep", None, json.dumps(TEMPLATE).replace("{", '{"extra": ' + _nest(1200) + ", ", 1).encode())
    add("array-depth-4000", None, b"[" * 4000 + b"]" * 4000)

    text = json.dumps(TEMPLATE)
    add("nan-port", None, text.replace('"dps_port": 8883', '"dps_port": NaN').encode())
    add("nan-payload", None, text.replace("{", '{"payload": NaN, ', 1).encode())
    add("infinity-payload", None, text.replace("{", '{"payload": -Infinity, ', 1).encode())
    add("control-char-in-payload", None, text.replace("{", '{"payload": "a\tb", ', 1).encode())
    add("duplicate-field", None, text.replace("{", '{"dps_port": "x", ', 1).encode())
    add("bom", None, b"\xef\xbb\xbf" + text.encode())
    add("not-utf8", None, text.replace("sensor-001", "sensor-\xff").encode("latin-1"))
    add("overlong-utf8", None, text.encode().replace(b"sensor-001", b"sensor\xc0\xaf001"))
    add("utf16", None, text.encode("utf-16"))
    add("empty", None, b"")
    add("truncated", None, text.encode()[:-7])
    add("trailing-garbage", None, text.encode() + b" x")
    add("top-array", None, b"[1, 2]")
    add("top-string", None, b'"provisioning"')
    add("top-null", None, b"null")
    add("nul-bytes", None, b"\x00" * 64)

    # CA files: the device's PEM reader decides
    document = TEMPLATE
    certificates = good_ca.decode().split("\n# ")
    block = certificates[0].split("\n", 1)[1]  # the first certificate without its comment line
    b64_lines = block.strip().split("\n")[1:-1]
    add("ca-comment-lines-only", document, ca=b"# DigiCert Global Root G2\n# nothing else\n")
    add("ca-empty", document, ca=b"")
    add("ca-absent", document, ca=None)
    add("ca-no-comments", document, ca=block.encode())
    add("ca-explanatory-text", document, ca=b"subject=CN=x\nissuer=CN=x\n" + block.encode() + b"\nbye\n")
    add("ca-crlf", document, ca=block.replace("\n", "\r\n").encode())
    add("ca-truncated", document, ca=block[: len(block) // 2].encode())
    add("ca-end-without-begin", document, ca=b"-----END CERTIFICATE-----\n")
    add(
        "ca-bad-base64",
        document,
        ca=("-----BEGIN CERTIFICATE-----\n!!!!" + b64_lines[0][4:] + "\n-----END CERTIFICATE-----\n").encode(),
    )
    add(
        "ca-not-a-certificate",
        document,
        ca=b"-----BEGIN CERTIFICATE-----\n" + b"MII" + b"A" * 200 + b"\n-----END CERTIFICATE-----\n",
    )
    broken = list(b64_lines)
    broken[len(broken) // 2] = "A" * len(broken[len(broken) // 2])
    add(
        "ca-corrupt-der",
        document,
        ca=("-----BEGIN CERTIFICATE-----\n" + "\n".join(broken) + "\n-----END CERTIFICATE-----\n").encode(),
    )
    add("ca-private-key-block", document, ca=b"-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n")
    # A single DER certificate is taken as it is; two, or a cut one, are neither PEM nor one DER certificate.
    der = base64.b64decode("".join(b64_lines))
    add("ca-der", document, ca=der)
    add("ca-der-two", document, ca=der + der)
    add("ca-der-cut", document, ca=der[:-1])
    add("ca-binary", document, ca=bytes(range(256)))
    # The size limit, checked before the file is read (comment lines pad the file, which is otherwise good).
    limit = firmware().pem.MAX_CA_FILE_BYTES
    padding = b"# padding\n" * ((limit - len(good_ca)) // 10)
    add("ca-at-limit", document, ca=good_ca + padding + b"#" * (limit - len(good_ca) - len(padding) - 1) + b"\n")
    add("ca-over-limit", document, ca=good_ca + padding + b"#" * (limit - len(good_ca) - len(padding)) + b"\n")
    return files
