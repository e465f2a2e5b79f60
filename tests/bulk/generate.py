"""Bad-input cases for tests/test_bad_input_bulk.py, made with hypothesis by mutating valid templates.

Three input classes, each a list of `Case`s (kind D: DPS responses, P: provisioning files, S: stored files), in
categories named after the mutation. Generation is deterministic: every category is one hypothesis run with
`derandomize=True`, generate phase only, no example database, collecting what the strategy draws (nothing is
asserted inside hypothesis; the verdicts come from the device).

The templates are what the real service and firmware produce: DPS 202/200 answers shaped like the emulator's (trust
bundles built from tests/bulk/certs.pem with the emulator's certificate-entry code), a provisioning file as
`host_tools provision-file` writes it, and state.json/trust_bundle.pem pairs as azprov.store commits them.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
import string
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from host_tools.emulator.trust_bundle import certificate_entry, content_etag, format_name, serial_hex

HERE = Path(__file__).resolve().parent
CERTS = x509.load_pem_x509_certificates((HERE / "certs.pem").read_bytes())
# state.json's limit (azprov.store._MAX_STATE_BYTES). The DPS leg has no fixed packet limit (only the free heap),
# so an answer past it is refused only when what it would commit cannot be stored.
MAX_STATE = 16384

REG_ID = "bulk-device"
HUB = "bulk-hub.azure-devices.net"
OP_ID = "4.0b1e7c2d9a3f4e56.7f0c3a1e-5b2d-4c8e-9f1a-2b3c4d5e6f70"
TRACKING = "9f2d1c3e-4b5a-6978-8c9d-0e1f2a3b4c5d"
DATE = "2026-03-01T10:20:30.1234567Z"
KEY = base64.b64encode(bytes(range(32))).decode()
SPLICE = "@@SPLICE@@"


@dataclass
class Case:
    kind: str  # "D" DPS responses (topic, body, ...), "P" a provisioning file, "S" stored files (name, data, ...)
    category: str
    items: list[bytes]
    expect: str | None = None  # "OK <outcome>" or "ERR <kind>" when the right answer is certain

    def record(self, case_id: str) -> bytes:
        out = [f"CASE {self.kind} {case_id} {self.category} {len(self.items)}\n".encode()]
        for item in self.items:
            out.append(b"%d\n" % len(item))
            out.append(item)
        return b"".join(out)


def collect(strategy, count: int) -> list:
    """`count` draws of `strategy`, the same on every run."""
    found = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def draw(value):
        found.append(value)

    draw()
    return found


# --- JSON helpers ----------------------------------------------------------------------------------------------------


def dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


def paths(obj, prefix=()) -> list[tuple]:
    """Every key/index path below obj (not the root itself)."""
    out = []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        out.append(prefix + (key,))
        out.extend(paths(value, prefix + (key,)))
    return out


def set_path(obj, path, value):
    obj = copy.deepcopy(obj)
    target = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return obj


def drop_path(obj, path):
    obj = copy.deepcopy(obj)
    target = obj
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return obj


def splice(obj, path, raw: bytes) -> bytes:
    """obj serialised with the value at path replaced by raw bytes (any text, valid JSON or not)."""
    text = dumps(set_path(obj, path, SPLICE)).encode()
    return text.replace(b'"' + SPLICE.encode() + b'"', raw, 1)


WRONG_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=24),
    st.sampled_from(["", " ", "0", "true", "null", "[]", "{}"]),
    st.lists(st.integers(-5, 5), max_size=4),
    st.dictionaries(st.text(max_size=6), st.integers(), max_size=3),
    st.just([]),
    st.just({}),
)

# Raw JSON text for "huge values": long strings, long numbers, out-of-range floats, deep nesting, wide containers,
# and strings whose stored form grows (raw control characters, which json.dumps writes as \u00XX).
HUGE_RAW = st.one_of(
    st.integers(200, 16000).map(lambda n: json.dumps("x" * n).encode()),
    st.integers(100, 8000).map(lambda n: json.dumps("\u00e9\u20ac" * n, ensure_ascii=False).encode()),
    st.integers(20, 900).map(lambda n: ("9" * n).encode()),
    st.integers(20, 400).map(lambda n: ("-" + "9" * n + "." + "9" * n + "e" + "9" * 5).encode()),
    st.sampled_from(
        [
            b"1e400",
            b"-1e400",
            b"1e-400",
            b"123456789e999999",
            b"-0",
            b"1E+308",
            b"2e308",
            b"0.000000000000000000000000000001",
            b"18446744073709551616",
            b"-9223372036854775809",
        ]
    ),
    st.integers(10, 7000).map(lambda d: b"[" * d + b"]" * d),
    st.integers(10, 3000).map(lambda d: b'{"a":' * d + b"1" + b"}" * d),
    st.integers(100, 5000).map(lambda n: b"[" + b",".join([b"1"] * n) + b"]"),
    st.integers(50, 1000).map(lambda n: b"{" + b",".join(b'"k%d":%d' % (i, i) for i in range(n)) + b"}"),
    st.integers(100, 15000).map(lambda n: b'"' + b"\x01" * n + b'"'),
)


def _nested(depth: int, shape: str) -> bytes:
    if shape == "array":
        return b"[" * depth + b"]" * depth
    if shape == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b'[{"a":' * (depth // 2) + b"[]" + b"}]" * (depth // 2)


# Deep nesting at depths around what a recursive serialiser survives (on the Unix port about 1,000 levels; far fewer
# on an ESP32's small C stack), all small enough for an 8 KB provisioning file or a 16 KB packet.
NESTING = st.tuples(
    st.sampled_from([16, 32, 64, 100, 128, 200, 256, 500, 512, 700, 1000, 1024, 1500, 2000, 2700, 3000, 3500, 4000]),
    st.sampled_from(["array", "object", "mixed"]),
).map(lambda t: _nested(*t))

# Byte sequences no strict UTF-8 decoder accepts whatever follows them: stray and impossible bytes, overlong forms,
# encoded surrogates, code points past U+10FFFF, a lead byte followed by ASCII.
ALWAYS_INVALID_UTF8 = [
    b"\xff",
    b"\xfe",
    b"\x80",
    b"\xbf",
    b"\xc0\xaf",
    b"\xc1\xbf",
    b"\xe0\x80\xaf",
    b"\xed\xa0\x80",
    b"\xed\xbf\xbf",
    b"\xf4\x90\x80\x80",
    b"\xf8\x88\x80\x80\x80",
    b"\xfc\x84\x80\x80\x80\x80",
    b"\xc3\x28",
    b"\xa0\xa1",
]
# Sequences cut short: invalid here because the templates are ASCII, so what follows is never a continuation byte.
TRUNCATED_UTF8 = [b"\xe2\x82", b"\xc3", b"\xf0\x9f\x98"]
BAD_UTF8 = st.one_of(
    st.sampled_from(ALWAYS_INVALID_UTF8 + TRUNCATED_UTF8),
    st.tuples(st.sampled_from(ALWAYS_INVALID_UTF8), st.binary(max_size=6)).map(lambda t: t[0] + t[1]),
)

ODD_STRINGS = st.sampled_from(
    [
        r"\u0000",
        r"\ud800",
        r"\udfff",
        r"\ud83d\ude00",
        r"\u202e",
        r"\ufeff",
        r"\uffff",
        r"\u0000\u0000",
        r"a\u0000b",
        "\u00e9",
        "\u4e2d\u6587",
        r"\"",
        "\\\\",
        r"\n\r\t",
        "\U0001f600",
        r"\u2028\u2029",
    ]
)

JSON_JUNK = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=24,
)


def truncations(data: bytes):
    return st.integers(0, max(0, len(data) - 1)).map(lambda cut: data[:cut])


def insert_at(data: bytes, chunk: bytes):
    return st.integers(0, len(data)).map(lambda pos: data[:pos] + chunk + data[pos:])


# --- certificates ----------------------------------------------------------------------------------------------------


def pem_of(cert, newline="\r\n", line=64) -> str:
    body = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
    lines = ["-----BEGIN CERTIFICATE-----"] + [body[i : i + line] for i in range(0, len(body), line)]
    lines.append("-----END CERTIFICATE-----")
    return newline.join(lines) + newline


def der_from_pem_body(text: str) -> bytes | None:
    body = "".join(
        line.strip() for line in text.replace("\r", "\n").split("\n") if line.strip() and "-----" not in line
    )
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return None


def trust_bundle(certs, bundle_id="bulk-bundle") -> dict:
    return {
        "certificates": [certificate_entry(c) for c in certs],
        "id": bundle_id,
        "createdDateTime": "2026-03-01T10:20:30.1234567",
        "lastModifiedDateTime": "2026-03-01T10:20:30.1234567",
        "etag": content_etag(bundle_id, certs),
    }


# --- DPS responses -----------------------------------------------------------------------------------------------------


def topic(status, rid, retry_after=None) -> bytes:
    text = f"$dps/registrations/res/{status}/?$rid={rid}"
    if retry_after is not None:
        text += f"&retry-after={retry_after}"
    return text.encode()


def assigned_body(certs=CERTS[:2], payload=None, bundle=True) -> dict:
    state = {
        "registrationId": REG_ID,
        "createdDateTimeUtc": DATE,
        "assignedHub": HUB,
        "deviceId": REG_ID,
        "status": "assigned",
        "substatus": "initialAssignment",
        "generationId": TRACKING,
        "lastUpdatedDateTimeUtc": DATE,
        "etag": "IjAxMDAwMDAwLTAwMDAtMDAwMC0wMDAwLTAwMDAwMDAwMDAwMCI=",
    }
    if payload is not None:
        state["payload"] = payload
    state["trustBundle"] = trust_bundle(certs) if bundle else None
    return {"operationId": OP_ID, "status": "assigned", "registrationState": state}


ASSIGNING = {"operationId": OP_ID, "status": "assigning"}
ASSIGNING_STATE = {
    "operationId": OP_ID,
    "status": "assigning",
    "registrationState": {"registrationId": REG_ID, "status": "assigning"},
}
FAILED = {
    "operationId": OP_ID,
    "status": "failed",
    "registrationState": {
        "registrationId": REG_ID,
        "createdDateTimeUtc": DATE,
        "status": "failed",
        "errorCode": 400207,
        "errorMessage": "Custom allocation failed with status code: 400",
        "lastUpdatedDateTimeUtc": DATE,
        "etag": "IjAxIg==",
    },
}
DISABLED = {
    "operationId": OP_ID,
    "status": "disabled",
    "registrationState": {"registrationId": REG_ID, "status": "disabled"},
}


def error_body(status) -> dict:
    return {
        "errorCode": status * 1000 + 1,
        "trackingId": TRACKING,
        "message": f"service answered {status}",
        "timestampUtc": "2026-03-01T10:20:30.1234567Z",
    }


# name -> (messages before the last, (last topic, last body), the unmutated outcome)
DPS_TEMPLATES = {
    "assigned": ([], (topic(200, 1), assigned_body()), "OK stored"),
    "assigned_polled": (
        [(topic(202, 1, 3), ASSIGNING)],
        (topic(200, 2), assigned_body(CERTS, {"site": "north", "floors": [1, 2]})),
        "OK stored",
    ),
    "assigned_no_bundle": ([], (topic(200, 1), assigned_body(bundle=False)), "OK stored"),
    "assigned_after_429": (
        [(topic(429, 1, 1), error_body(429))],
        (topic(200, 2), assigned_body(CERTS[:1])),
        "OK stored",
    ),
    "assigning": ([], (topic(202, 1, 2), ASSIGNING), "OK request"),
    "assigning_state": ([(topic(202, 1, 1), ASSIGNING)], (topic(202, 2, 1), ASSIGNING_STATE), "OK request"),
    "failed": ([], (topic(200, 1), FAILED), "ERR assignment_failed"),
    "disabled": ([], (topic(200, 1), DISABLED), "ERR disabled"),
    "unauthorized": ([], (topic(401, 1), error_body(401)), "ERR authentication"),
    "not_found": ([], (topic(404, 1), error_body(404)), "ERR not_found"),
    "bad_request": ([], (topic(400, 1), error_body(400)), "ERR bad_request"),
    "unavailable": ([], (topic(503, 1, 1), error_body(503)), "OK request"),
}
ASSIGNED_TEMPLATES = [
    name
    for name, t in DPS_TEMPLATES.items()
    if t[1][1].get("status") == "assigned" and t[1][1]["registrationState"].get("trustBundle")
]
JSON_STATUS = (200, 202)


def _status_of(topic_bytes: bytes) -> int:
    return int(topic_bytes.split(b"/")[3])


def dps_case(category, template, last_topic, last_body, expect=None) -> Case:
    before, _, _ = DPS_TEMPLATES[template]
    items = []
    for t, b in before:
        items += [t, dumps(b).encode()]
    body = last_body if isinstance(last_body, bytes) else dumps(last_body).encode()
    items += [last_topic, body]
    return Case("D", category, items, expect)


TEMPLATE_NAMES = st.sampled_from(sorted(DPS_TEMPLATES))


@st.composite
def dps_valid(draw):
    name = draw(TEMPLATE_NAMES)
    t, b = DPS_TEMPLATES[name][1]
    return dps_case("valid", name, t, b, DPS_TEMPLATES[name][2])


@st.composite
def dps_truncated(draw):
    name = draw(TEMPLATE_NAMES)
    t, b = DPS_TEMPLATES[name][1]
    body = draw(truncations(dumps(b).encode()))
    status = _status_of(t)
    expect = "ERR malformed_response" if status in JSON_STATUS else DPS_TEMPLATES[name][2]
    return dps_case("truncated", name, t, body, expect)


@st.composite
def dps_wrong_type(draw):
    name = draw(TEMPLATE_NAMES)
    t, b = DPS_TEMPLATES[name][1]
    path = draw(st.sampled_from(paths(b)))
    return dps_case("wrong_type", name, t, set_path(b, path, draw(WRONG_VALUES)))


def drop_paths(obj, chosen):
    """obj without each chosen path (a path under one already dropped is skipped)."""
    for path in chosen:
        try:
            obj = drop_path(obj, path)
        except (KeyError, IndexError, TypeError):
            pass
    return obj


@st.composite
def dps_missing_field(draw):
    name = draw(TEMPLATE_NAMES)
    t, b = DPS_TEMPLATES[name][1]
    chosen = draw(st.lists(st.sampled_from(paths(b)), min_size=1, max_size=3, unique=True))
    return dps_case("missing_field", name, t, drop_paths(b, chosen))


@st.composite
def dps_huge(draw):
    name = draw(st.sampled_from(ASSIGNED_TEMPLATES + ["assigning", "failed", "unauthorized"]))
    t, b = DPS_TEMPLATES[name][1]
    extra = {"registrationState": {}} if "registrationState" in b else {}
    candidates = paths(b) + [("registrationState", "payload")] * bool(extra) + [("extra",)]
    path = draw(st.sampled_from(candidates))
    return dps_case("huge", name, t, splice(b, path, draw(HUGE_RAW)))


@st.composite
def dps_bad_base64(draw):
    name = draw(st.sampled_from(ASSIGNED_TEMPLATES))
    t, b = DPS_TEMPLATES[name][1]
    entries = b["registrationState"]["trustBundle"]["certificates"]
    index = draw(st.integers(0, len(entries) - 1))
    pem = entries[index]["certificate"]
    head, _, rest = pem.partition("\r\n")
    body, _, tail = rest.rpartition("-----END")
    how = draw(
        st.sampled_from(
            [
                "insert",
                "delete",
                "substitute",
                "padding",
                "random",
                "der_prefix",
                "truncated_der",
                "urlsafe",
                "one_line",
                "short_lines",
            ]
        )
    )
    if how == "insert":
        pos = draw(st.integers(0, len(body)))
        body = (
            body[:pos]
            + draw(
                st.sampled_from(
                    list("!#$%&*(),.:;<>?@[]^_`{|}~-\\\"'\t\x00\x7f")
                    + ["\u00e9", "\u20ac", "\u2028", "=", "==", "===="]
                )
            )
            + body[pos:]
        )
    elif how == "delete":
        pos = draw(st.integers(0, len(body) - 1))
        body = body[:pos] + body[pos + draw(st.integers(1, 3)) :]
    elif how == "substitute":
        pos = draw(st.integers(0, len(body) - 1))
        if body[pos] not in "\r\n":
            body = body[:pos] + draw(st.sampled_from(string.ascii_letters + string.digits + "+/")) + body[pos + 1 :]
    elif how == "padding":
        body = body.rstrip("\r\n=") + draw(st.sampled_from(["", "=", "==", "===", "====", "=A=", "A"])) + "\r\n"
    elif how == "random":
        body = base64.b64encode(draw(st.binary(max_size=700))).decode() + "\r\n"
    elif how == "der_prefix":
        junk = draw(st.binary(min_size=62, max_size=700))
        body = base64.b64encode(b"\x30\x82" + len(junk).to_bytes(2, "big") + junk).decode() + "\r\n"
    elif how == "truncated_der":
        der = CERTS[index].public_bytes(serialization.Encoding.DER)
        body = base64.b64encode(der[: draw(st.integers(0, len(der) - 1))]).decode() + "\r\n"
    elif how == "urlsafe":
        body = body.replace("+", "-").replace("/", "_")
    elif how == "one_line":
        body = body.replace("\r\n", "") + "\r\n"
    else:
        flat = body.replace("\r\n", "")
        width = draw(st.integers(1, 80))
        body = "".join(flat[i : i + width] + "\r\n" for i in range(0, len(flat), width))
    mutated = head + "\r\n" + body + "-----END" + tail
    return dps_case("bad_base64", name, t, _with_certificate(b, index, mutated, draw))


def _with_certificate(body: dict, index: int, pem: str, draw) -> dict:
    """The body with one certificate's PEM replaced and its metadata kept, dropped or made to match."""
    body = copy.deepcopy(body)
    entry = body["registrationState"]["trustBundle"]["certificates"][index]
    entry["certificate"] = pem
    meta = draw(st.sampled_from(["keep", "drop_metadata", "drop_thumbprint", "match"]))
    if meta == "drop_metadata":
        del entry["metadata"]
    elif meta == "drop_thumbprint":
        del entry["metadata"]["sha256Thumbprint"]
    elif meta == "match":
        der = der_from_pem_body(pem)
        if der is not None:
            entry["metadata"]["sha256Thumbprint"] = hashlib.sha256(der).hexdigest().upper()
    return body


PEM_TEXT_MUTATIONS = [
    "header",
    "footer",
    "no_header",
    "no_footer",
    "two_certs",
    "prefix",
    "suffix",
    "cr_only",
    "empty",
    "blank",
    "swapped",
    "private_key",
    "nested",
    "lowercase",
    "spaces",
    "other_eol",
    "mixed_eol",
    "other_cert",
]


@st.composite
def bad_pem_text(draw, pem: str) -> str:
    how = draw(st.sampled_from(PEM_TEXT_MUTATIONS))
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    eol = "\r\n" if "\r\n" in pem else "\n"
    other_eol = "\n" if eol == "\r\n" else "\r\n"
    odd_lines = st.sampled_from(
        [
            "-----BEGIN PUBLIC KEY-----",
            "-----BEGIN X509 CERTIFICATE-----",
            "----BEGIN CERTIFICATE----",
            "-----BEGIN CERTIFICATE",
            "BEGIN CERTIFICATE",
            "-----END CERTIFICATE-----",
            "-----BEGIN TRUSTED CERTIFICATE-----",
            "",
            "-----",
        ]
    )
    if how == "header":
        return pem.replace(begin, draw(odd_lines), 1)
    if how == "footer":
        return pem.replace(end, draw(odd_lines).replace("BEGIN", "END"), 1)
    if how == "no_header":
        return pem.replace(begin, "", 1)
    if how == "no_footer":
        return pem.replace(end, "", 1)
    if how == "two_certs":
        return pem + pem
    if how == "prefix":
        return draw(st.text(min_size=1, max_size=40)) + "\n" + pem
    if how == "suffix":
        return pem + draw(st.text(min_size=1, max_size=40))
    if how == "cr_only":
        return pem.replace(eol, "\r")
    if how == "empty":
        return ""
    if how == "blank":
        return draw(st.sampled_from([" ", "\r\n", "\n\n\n", "\t"]))
    if how == "swapped":
        return pem.replace(begin, "@@").replace(end, begin).replace("@@", end)
    if how == "private_key":
        return pem.replace("CERTIFICATE", "EC PRIVATE KEY")
    if how == "nested":
        return pem.replace(eol, eol + begin + eol, 1)
    if how == "lowercase":
        return pem.replace(begin, begin.lower())
    if how == "spaces":
        return pem.replace(eol, draw(st.sampled_from([" " + eol, eol + " ", "\t" + eol, eol + eol])))
    if how == "other_eol":
        return pem.replace(eol, other_eol)
    if how == "mixed_eol":
        return pem.replace(eol, other_eol, draw(st.integers(1, 5)))
    return pem_of(CERTS[2])  # a valid certificate that is not the one the metadata describes


@st.composite
def dps_bad_pem(draw):
    name = draw(st.sampled_from(ASSIGNED_TEMPLATES))
    t, b = DPS_TEMPLATES[name][1]
    entries = b["registrationState"]["trustBundle"]["certificates"]
    index = draw(st.integers(0, len(entries) - 1))
    mutated = draw(bad_pem_text(entries[index]["certificate"]))
    return dps_case("bad_pem", name, t, _with_certificate(b, index, mutated, draw))


@st.composite
def dps_bad_utf8(draw):
    name = draw(TEMPLATE_NAMES)
    t, b = DPS_TEMPLATES[name][1]
    bad = draw(BAD_UTF8)
    where = draw(st.sampled_from(["body", "body", "string", "topic"]))
    if where == "topic":
        return dps_case("bad_utf8_topic", name, draw(insert_at(t, bad)), b, "ERR malformed_response")
    if where == "string":
        strings = [p for p in paths(b) if isinstance(_get(b, p), str)]
        body = splice(b, draw(st.sampled_from(strings)), b'"' + bad + b'"')
    else:
        body = draw(insert_at(dumps(b).encode(), bad))
    # Even in a field the device ignores: a body that is not UTF-8 is not JSON. (MicroPython's own decoder lets
    # overlong forms and encoded surrogates through; the firmware must not.)
    expect = "ERR malformed_response" if _status_of(t) in JSON_STATUS else DPS_TEMPLATES[name][2]
    return dps_case("bad_utf8", name, t, body, expect)


def _get(obj, path):
    for key in path:
        obj = obj[key]
    return obj


PREFIXES = [
    "$dps/registrations/res/",
    "$dps/registrations/res",
    "$DPS/registrations/res/",
    "$dps/registrations/res//",
    "$dps/registrations/PUT/iotdps-register/",
    "dps/registrations/res/",
    "",
    "$dps/registrations/res/x/",
    "$iothub/twin/res/",
    "$dps/registrations/res/ ",
    "/$dps/registrations/res/",
]
STATUSES = [
    "200",
    "202",
    "201",
    "204",
    "300",
    "399",
    "400",
    "401",
    "404",
    "409",
    "412",
    "428",
    "429",
    "499",
    "500",
    "503",
    "599",
    "600",
    "999",
    "0",
    "-1",
    "-200",
    "+200",
    " 200",
    "200 ",
    "2OO",
    "",
    "0200",
    "200.0",
    "2e2",
    "0x1F",
    "\u0661\u0662\u0663",
    "2_00",
    "9" * 40,
    "-" + "9" * 40,
    "\u0000",
]
PARAM_NAMES = [
    "$rid",
    "$RID",
    "$Rid",
    "retry-after",
    "Retry-After",
    "RETRY-AFTER",
    "retry_after",
    "operationId",
    "",
    "x",
    "rid",
    "$rid$rid",
    " $rid",
]
PARAM_VALUES = [
    "1",
    "2",
    "",
    "01",
    " 1",
    "1 ",
    "-1",
    "0",
    "3",
    "10",
    "99999999999999999999",
    "9" * 400,
    "1.5",
    "1e3",
    "abc",
    "-5",
    "+3",
    "\uff10",
    "1&",
    "=",
    "%31",
]


@st.composite
def dps_topic(draw):
    name = draw(TEMPLATE_NAMES)
    _, b = DPS_TEMPLATES[name][1]
    prefix = draw(st.one_of(st.sampled_from(PREFIXES), st.text(max_size=30)))
    status = draw(st.one_of(st.sampled_from(STATUSES), st.integers(-(10**6), 10**6).map(str)))
    sep = draw(st.sampled_from(["/?", "/", "?", "//?", "/??", "", "/?&"]))
    params = draw(
        st.lists(
            st.tuples(st.sampled_from(PARAM_NAMES), st.one_of(st.sampled_from(PARAM_VALUES), st.text(max_size=8))),
            max_size=6,
        )
    )
    if draw(st.booleans()):
        params.insert(draw(st.integers(0, len(params))), ("$rid", "1"))
    joiner = draw(st.sampled_from(["&", "&", "&&", ";", "&amp;"]))
    query = joiner.join(k if draw(st.integers(0, 9)) == 0 else f"{k}={v}" for k, v in params)
    junk = draw(st.sampled_from(["", "", "", "#", "/extra", "\u00e9", " ", "\x00"]))
    return dps_case("topic", name, (prefix + status + sep + query + junk).encode(), b)


@st.composite
def dps_oversize(draw):
    name = draw(st.sampled_from(ASSIGNED_TEMPLATES + ["assigning"]))
    t, b = DPS_TEMPLATES[name][1]
    target = MAX_STATE + draw(st.integers(-48, 48)) if draw(st.booleans()) else draw(st.integers(16000, 70000))
    filler = draw(st.sampled_from(["x", "\u00e9", "\x01"]))
    path = ("registrationState", "payload") if "registrationState" in b else ("padding",)
    base = len(splice(b, path, b'""'))
    unit = len(filler.encode())
    raw = b'"' + (filler * max(0, (target - base) // unit)).encode() + b'"'
    body = splice(b, path, raw)
    on_topic = draw(st.integers(0, 5)) == 0
    if on_topic:
        return dps_case("oversize", name, t + b"&pad=" + b"p" * max(0, target - len(t) - 5), b)
    # A payload past state.json's limit cannot be committed; a 202's padding is read and ignored.
    expect = "ERR malformed_response" if path[-1] == "payload" and len(raw) > MAX_STATE else None
    return dps_case("oversize", name, t, body, expect)


@st.composite
def dps_json_junk(draw):
    status = draw(st.sampled_from([200, 202, 200, 202, 429, 401]))
    shaped = draw(st.booleans())
    if shaped:
        body = {
            "status": draw(
                st.one_of(
                    st.sampled_from(
                        ["assigned", "assigning", "unassigned", "failed", "disabled", "", "ASSIGNED", "Assigned"]
                    ),
                    JSON_JUNK,
                )
            ),
            "operationId": draw(st.one_of(st.just(OP_ID), JSON_JUNK)),
            "registrationState": draw(st.one_of(st.just(assigned_body()["registrationState"]), JSON_JUNK)),
        }
        body = dict(list(body.items())[: draw(st.integers(1, 3))])
    else:
        body = draw(JSON_JUNK)
    raw = json.dumps(body).encode()
    expect = (
        "ERR malformed_response"
        if status in JSON_STATUS and not isinstance(body, dict) and body not in (None, "", 0, False, [], {})
        else None
    )
    return Case("D", "json_junk", [topic(status, 1, 1 if status == 202 else None), raw], expect)


@st.composite
def dps_unicode(draw):
    name = draw(TEMPLATE_NAMES)
    t, b = DPS_TEMPLATES[name][1]
    strings = [p for p in paths(b) if isinstance(_get(b, p), str)]
    path = draw(st.sampled_from(strings))
    how = draw(st.sampled_from(["escape", "text", "bom", "raw_control"]))
    if how == "bom":
        return dps_case("unicode", name, t, b"\xef\xbb\xbf" + dumps(b).encode())
    if how == "escape":
        original = _get(b, path)
        pos = draw(st.integers(0, len(original)))
        odd = draw(ODD_STRINGS)
        raw = (
            b'"'
            + json.dumps(original[:pos])[1:-1].encode()
            + odd.encode()
            + json.dumps(original[pos:])[1:-1].encode()
            + b'"'
        )
        return dps_case("unicode", name, t, splice(b, path, raw))
    if how == "raw_control":
        return dps_case(
            "unicode",
            name,
            t,
            splice(b, path, b'"' + bytes(draw(st.lists(st.integers(0, 31), min_size=1, max_size=8))) + b'"'),
        )
    text = draw(st.text(st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=40))
    return dps_case("unicode", name, t, dumps(set_path(b, path, text)).encode())


@st.composite
def dps_nesting(draw):
    name = draw(st.sampled_from(ASSIGNED_TEMPLATES + ["assigning", "failed"]))
    t, b = DPS_TEMPLATES[name][1]
    if "registrationState" in b:
        choices = [("registrationState", "payload")] * 4 + [
            ("registrationState", "trustBundle"),
            ("registrationState",),
            ("operationId",),
            ("extra",),
        ]
    else:
        choices = [("operationId",), ("extra",), ("registrationState",)]
    return dps_case("nesting", name, t, splice(b, draw(st.sampled_from(choices)), draw(NESTING)))


DPS_CATEGORIES = {  # category -> (strategy, examples)
    "valid": (dps_valid(), 40),
    "truncated": (dps_truncated(), 1300),
    "wrong_type": (dps_wrong_type(), 1500),
    "missing_field": (dps_missing_field(), 800),
    "huge": (dps_huge(), 1200),
    "bad_base64": (dps_bad_base64(), 1300),
    "bad_pem": (dps_bad_pem(), 1200),
    "bad_utf8": (dps_bad_utf8(), 1300),
    "topic": (dps_topic(), 1800),
    "oversize": (dps_oversize(), 300),
    "json_junk": (dps_json_junk(), 800),
    "unicode": (dps_unicode(), 900),
    "nesting": (dps_nesting(), 300),
}


# --- provisioning files ------------------------------------------------------------------------------------------------

PROVISIONING = {
    "dps_host": "global.azure-devices-provisioning.net",
    "dps_port": 8883,
    "id_scope": "0ne00AAAAAA",
    "registration_id": REG_ID,
    "symmetric_key": KEY,
    "dps_ca_file": "certs/dps-root.pem",
    "payload": {"model": "thermo-1"},
    "gateway_host": "edge-gw.example.local",
    "gateway_port": 8883,
    "storage_dir": "azprov_state",
    "log_level": "info",
    "sas_ttl_s": 3600,
    "force_reprovision": False,
    "telemetry_count": 1,
    "telemetry_interval_s": 10,
    "registration_timeout_s": 120,
    "max_gateway_failures": 3,
    "wifi": {"ssid": "lab", "password": "secret"},
}
PROV_BYTES = json.dumps(PROVISIONING, indent=2).encode()
PROV_FIELDS = sorted(PROVISIONING)


def prov_case(category, data, expect=None) -> Case:
    if not isinstance(data, bytes):
        data = json.dumps(data, indent=2).encode()
    return Case("P", category, [data], expect)


@st.composite
def prov_valid(draw):
    doc = dict(PROVISIONING)
    for name in draw(
        st.lists(
            st.sampled_from(
                [
                    "payload",
                    "gateway_host",
                    "gateway_port",
                    "storage_dir",
                    "log_level",
                    "sas_ttl_s",
                    "wifi",
                    "dps_port",
                    "force_reprovision",
                ]
            ),
            max_size=4,
        )
    ):
        doc.pop(name, None)
    doc["registration_id"] = draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,20}[A-Za-z0-9-]", fullmatch=True))
    return prov_case("valid", doc, "OK config")


@st.composite
def prov_truncated(draw):
    return prov_case("truncated", draw(truncations(PROV_BYTES.rstrip())), "ERR configuration")


@st.composite
def prov_wrong_type(draw):
    doc = dict(PROVISIONING)
    doc[draw(st.sampled_from(PROV_FIELDS))] = draw(WRONG_VALUES)
    return prov_case("wrong_type", doc)


@st.composite
def prov_missing(draw):
    doc = dict(PROVISIONING)
    for name in draw(st.lists(st.sampled_from(PROV_FIELDS), min_size=1, max_size=3, unique=True)):
        del doc[name]
    return prov_case("missing_field", doc)


@st.composite
def prov_huge(draw):
    path = (draw(st.sampled_from(PROV_FIELDS + ["extra"])),)
    if draw(st.booleans()):
        value = draw(
            st.sampled_from(
                [
                    0,
                    -1,
                    65536,
                    65535,
                    1,
                    2**31,
                    2**63,
                    2**64,
                    -(2**63),
                    10**40,
                    4,
                    5,
                    31622400,
                    31622401,
                    1740,
                    1741,
                    2,
                    1,
                ]
            )
        )
        return prov_case("huge", set_path(PROVISIONING, path, value))
    return prov_case("huge", splice(PROVISIONING, path, draw(HUGE_RAW)))


@st.composite
def prov_bad_key(draw):
    key = draw(
        st.one_of(
            st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
            st.binary(min_size=16, max_size=64).map(lambda b: base64.b64encode(b).decode().rstrip("=")),
            st.binary(min_size=16, max_size=64).map(lambda b: base64.urlsafe_b64encode(b).decode()),
            st.text(max_size=60),
            st.tuples(st.integers(0, len(KEY)), st.sampled_from(list("!*-_ .\t\n=\u00e9"))).map(
                lambda t: KEY[: t[0]] + t[1] + KEY[t[0] :]
            ),
            st.integers(1, len(KEY) - 1).map(lambda n: KEY[:n]),
        )
    )
    return prov_case("bad_base64", dict(PROVISIONING, symmetric_key=key))


@st.composite
def prov_registration_id(draw):
    reg = draw(
        st.one_of(
            st.text(max_size=140),
            st.from_regex(r"[A-Za-z0-9._:-]{1,140}", fullmatch=True),
            st.sampled_from(
                [
                    "a" * 128,
                    "a" * 129,
                    "dev.",
                    "dev_",
                    "dev:",
                    "dev-",
                    "-",
                    ".",
                    "",
                    " ",
                    "dev\u00e9",
                    "dev/1",
                    "dev 1",
                    "dev\x00",
                ]
            ),
        )
    )
    return prov_case("registration_id", dict(PROVISIONING, registration_id=reg))


@st.composite
def prov_bad_utf8(draw):
    bad = draw(BAD_UTF8)
    if draw(st.booleans()):
        return prov_case("bad_utf8", draw(insert_at(PROV_BYTES, bad)), "ERR configuration")
    path = (draw(st.sampled_from([f for f in PROV_FIELDS if isinstance(PROVISIONING[f], str)])),)
    return prov_case("bad_utf8", splice(PROVISIONING, path, b'"' + bad + b'"'), "ERR configuration")


@st.composite
def prov_json_junk(draw):
    how = draw(st.sampled_from(["junk", "junk", "bom", "duplicate", "trailing", "nan", "comment"]))
    if how == "junk":
        return prov_case("json_junk", json.dumps(draw(JSON_JUNK)).encode())
    if how == "bom":
        return prov_case("json_junk", b"\xef\xbb\xbf" + PROV_BYTES)
    if how == "duplicate":
        name = draw(st.sampled_from(PROV_FIELDS))
        return prov_case(
            "json_junk",
            PROV_BYTES[:-2] + b',\n  "%s": %s\n}' % (name.encode(), json.dumps(draw(WRONG_VALUES)).encode()),
        )
    if how == "trailing":
        return prov_case("json_junk", PROV_BYTES + draw(st.sampled_from([b",", b"}", b" x", b"\x00", b"{}", b"\n\n"])))
    if how == "nan":
        return prov_case(
            "json_junk",
            splice(
                PROVISIONING,
                (draw(st.sampled_from(PROV_FIELDS)),),
                draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"nan", b"inf"])),
            ),
        )
    return prov_case("json_junk", b"// provisioning\n" + PROV_BYTES)


@st.composite
def prov_unicode(draw):
    path = (draw(st.sampled_from([f for f in PROV_FIELDS if isinstance(PROVISIONING[f], str)])),)
    original = _get(PROVISIONING, path)
    pos = draw(st.integers(0, len(original)))
    odd = draw(ODD_STRINGS).encode()
    raw = b'"' + original[:pos].encode() + odd + original[pos:].encode() + b'"'
    return prov_case("unicode", splice(PROVISIONING, path, raw))


@st.composite
def prov_nesting(draw):
    path = (draw(st.sampled_from(["payload", "payload", "payload", "wifi", "extra", "dps_host"])),)
    return prov_case("nesting", splice(PROVISIONING, path, draw(NESTING)))


PROV_CATEGORIES = {
    "valid": (prov_valid(), 40),
    "truncated": (prov_truncated(), 150),
    "wrong_type": (prov_wrong_type(), 250),
    "missing_field": (prov_missing(), 100),
    "huge": (prov_huge(), 200),
    "bad_base64": (prov_bad_key(), 150),
    "registration_id": (prov_registration_id(), 150),
    "bad_utf8": (prov_bad_utf8(), 120),
    "json_junk": (prov_json_junk(), 100),
    "unicode": (prov_unicode(), 80),
    "nesting": (prov_nesting(), 100),
}


# --- stored files --------------------------------------------------------------------------------------------------------


def _cert_meta(cert) -> dict:
    der = cert.public_bytes(serialization.Encoding.DER)
    return {
        "subject": format_name(cert.subject),
        "issuer": format_name(cert.issuer),
        "sha1": hashlib.sha1(der).hexdigest().upper(),
        "sha256": hashlib.sha256(der).hexdigest().upper(),
        "serial": serial_hex(cert),
        "not_before": "2026-01-01T00:00:00Z",
        "not_after": "2126-01-01T00:00:00Z",
    }


def stored_pair(certs, etag) -> tuple[dict, str]:
    """(state, pem) as azprov.store commits them for this bundle."""
    pem = "".join(pem_of(c, "\n") for c in certs)
    state = {
        "version": 1,
        "assignment": {
            "registration_id": REG_ID,
            "assigned_hub": HUB,
            "device_id": REG_ID,
            "substatus": "initialAssignment",
            "payload": {"site": "north"},
        },
        "trust_bundle": {
            "id": "bulk-bundle",
            "etag": etag,
            "pem_sha256": hashlib.sha256(pem.encode()).hexdigest(),
            "certificates": [_cert_meta(c) for c in certs],
        },
    }
    return state, pem


STATE_NEW, PEM_NEW = stored_pair(CERTS[:2], '"etag-new"')
STATE_OLD, PEM_OLD = stored_pair(CERTS[2:], '"etag-old"')
STATE_NULL = dict(STATE_NEW, trust_bundle=None)

# name -> files; every template is a state the firmware can leave behind
STORED_TEMPLATES = {
    "committed": {"state.json": STATE_NEW, "trust_bundle.pem": PEM_NEW},
    "roll_forward": {"state.json": STATE_NEW, "trust_bundle.pem": PEM_OLD, "trust_bundle.pem.new": PEM_NEW},
    "staged_leftover": {"state.json": STATE_NEW, "trust_bundle.pem": PEM_NEW, "trust_bundle.pem.new": PEM_OLD},
    "tmp_leftover": {"state.json": STATE_NEW, "trust_bundle.pem": PEM_NEW, "state.json.tmp": STATE_OLD},
    "no_bundle": {"state.json": STATE_NULL, "trust_bundle.pem": PEM_OLD},
    "first_save_cut": {"trust_bundle.pem.new": PEM_NEW},
}
STORED_NAMES = st.sampled_from(sorted(STORED_TEMPLATES))


def _file_bytes(value) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value).encode()


def stored_case(category, files: dict, expect=None) -> Case:
    items = []
    for name in sorted(files):
        items += [name.encode(), _file_bytes(files[name])]
    return Case("S", category, items, expect)


def _with_state(template, state_bytes_or_obj) -> dict:
    files = dict(STORED_TEMPLATES[template])
    files["state.json"] = state_bytes_or_obj
    return files


@st.composite
def stored_valid(draw):
    name = draw(STORED_NAMES)
    return stored_case("valid", STORED_TEMPLATES[name], "OK fresh" if name == "first_save_cut" else "OK loaded")


@st.composite
def stored_truncated(draw):
    name = draw(st.sampled_from([n for n in sorted(STORED_TEMPLATES) if "state.json" in STORED_TEMPLATES[n]]))
    which = draw(st.sampled_from(["state.json", "trust_bundle.pem"]))
    files = dict(STORED_TEMPLATES[name])
    data = _file_bytes(files[which])
    files[which] = draw(truncations(data))
    expect = None
    if which == "state.json" or name == "committed":
        expect = "ERR storage"
    return stored_case("truncated", files, expect)


@st.composite
def stored_wrong_type(draw):
    name = draw(st.sampled_from(["committed", "roll_forward", "no_bundle"]))
    state = STORED_TEMPLATES[name]["state.json"]
    path = draw(st.sampled_from(paths(state)))
    return stored_case("wrong_type", _with_state(name, set_path(state, path, draw(WRONG_VALUES))))


@st.composite
def stored_missing(draw):
    name = draw(st.sampled_from(["committed", "roll_forward", "no_bundle"]))
    state = STORED_TEMPLATES[name]["state.json"]
    chosen = draw(st.lists(st.sampled_from(paths(state)), min_size=1, max_size=2, unique=True))
    return stored_case("missing_field", _with_state(name, drop_paths(state, chosen)))


@st.composite
def stored_huge(draw):
    name = draw(st.sampled_from(["committed", "roll_forward", "no_bundle"]))
    state = STORED_TEMPLATES[name]["state.json"]
    path = draw(st.sampled_from(paths(state) + [("extra",)]))
    return stored_case("huge", _with_state(name, splice(state, path, draw(HUGE_RAW))))


def _consistent(files: dict, pem_name: str, pem_text) -> dict:
    """The files with `pem_name` replaced and state.json's pem_sha256 made to match it."""
    files = dict(files)
    files[pem_name] = pem_text
    state = copy.deepcopy(files["state.json"])
    state["trust_bundle"]["pem_sha256"] = hashlib.sha256(_file_bytes(pem_text)).hexdigest()
    files["state.json"] = state
    return files


@st.composite
def stored_bad_pem(draw):
    name = draw(st.sampled_from(["committed", "roll_forward"]))
    pem_name = "trust_bundle.pem" if name == "committed" else "trust_bundle.pem.new"
    files = STORED_TEMPLATES[name]
    first = pem_of(CERTS[0], "\n")
    mutated = draw(bad_pem_text(first)) + "".join(pem_of(c, "\n") for c in CERTS[1:2])
    if draw(st.booleans()):
        # state.json agrees with the corrupt PEM: what a firmware that committed a bad bundle would have left
        return stored_case("bad_pem_committed", _consistent(files, pem_name, mutated))
    changed = mutated != _file_bytes(files[pem_name]).decode()
    return stored_case("bad_pem", dict(files, **{pem_name: mutated}), "ERR storage" if changed else None)


@st.composite
def stored_bad_base64(draw):
    name = draw(st.sampled_from(["committed", "roll_forward"]))
    pem_name = "trust_bundle.pem" if name == "committed" else "trust_bundle.pem.new"
    pem = _file_bytes(STORED_TEMPLATES[name][pem_name]).decode()
    start = pem.index("\n") + 1
    pos = draw(st.integers(start, len(pem) - 30))
    mutated = pem[:pos] + draw(st.sampled_from(list("!*-_.=\t") + ["\u00e9", "A", "===="])) + pem[pos + 1 :]
    if draw(st.booleans()):
        return stored_case("bad_base64_committed", _consistent(STORED_TEMPLATES[name], pem_name, mutated))
    return stored_case(
        "bad_base64", dict(STORED_TEMPLATES[name], **{pem_name: mutated}), "ERR storage" if mutated != pem else None
    )


@st.composite
def stored_bad_utf8(draw):
    name = draw(st.sampled_from(["committed", "roll_forward", "no_bundle"]))
    which = draw(st.sampled_from(["state.json", "state.json", "trust_bundle.pem"]))
    files = dict(STORED_TEMPLATES[name])
    bad = draw(BAD_UTF8)
    files[which] = draw(insert_at(_file_bytes(files[which]), bad))
    # state.json that is not UTF-8 is corrupt; a changed PEM no longer matches state.json's pem_sha256 unless the
    # staged PEM does (roll-forward) or the state has no bundle (the PEM is dropped).
    expect = "ERR storage" if which == "state.json" or name == "committed" else "OK loaded"
    if which == "trust_bundle.pem" and draw(st.booleans()) and name == "committed":
        return stored_case("bad_utf8_committed", _consistent(files, which, files[which]))
    return stored_case("bad_utf8", files, expect)


@st.composite
def stored_mixed(draw):
    """Files from different commits, missing files, empty files, junk: what a broken flash could hold."""
    pool = {
        "state.json": [STATE_NEW, STATE_OLD, STATE_NULL, b"", b"{}", b"null", b"[]", b"\xff" * 64, b"\x00" * 64],
        "trust_bundle.pem": [PEM_NEW, PEM_OLD, b"", b"\xff" * 64, PEM_NEW + PEM_OLD, PEM_NEW[:-1]],
        "trust_bundle.pem.new": [PEM_NEW, PEM_OLD, b"", b"\xff" * 64],
        "state.json.tmp": [STATE_NEW, b"", b"{"],
    }
    files = {}
    for name, options in pool.items():
        choice = draw(st.integers(-1, len(options) - 1))
        if choice >= 0:
            files[name] = options[choice]
    return stored_case("mixed", files)


@st.composite
def stored_nesting(draw):
    name = draw(st.sampled_from(["committed", "no_bundle"]))
    state = STORED_TEMPLATES[name]["state.json"]
    path = draw(
        st.sampled_from([("assignment", "payload"), ("assignment", "payload"), ("extra",), ("assignment", "substatus")])
    )
    return stored_case("nesting", _with_state(name, splice(state, path, draw(NESTING))))


STORED_CATEGORIES = {
    "valid": (stored_valid(), 30),
    "truncated": (stored_truncated(), 220),
    "wrong_type": (stored_wrong_type(), 200),
    "missing_field": (stored_missing(), 100),
    "huge": (stored_huge(), 120),
    "bad_pem": (stored_bad_pem(), 180),
    "bad_base64": (stored_bad_base64(), 120),
    "bad_utf8": (stored_bad_utf8(), 150),
    "mixed": (stored_mixed(), 150),
    "nesting": (stored_nesting(), 100),
}


# A sample (scale < 1) keeps every category, with at least this many draws each.
SAMPLE_MIN_PER_CATEGORY = 20


def scaled(count: int, scale: float) -> int:
    """Draws of a category whose full run makes `count`, in a run of the given scale."""
    return count if scale >= 1 else min(count, max(SAMPLE_MIN_PER_CATEGORY, round(count * scale)))


def generate(scale: float = 1.0) -> dict[str, list[Case]]:
    """Every case, by input class: {"dps": [...], "provisioning": [...], "stored": [...]}. `scale` below 1 draws
    that share of each category (every category still drawn)."""
    out = {}
    for kind, categories in (("dps", DPS_CATEGORIES), ("provisioning", PROV_CATEGORIES), ("stored", STORED_CATEGORIES)):
        cases, seen = [], set()
        for strategy, count in categories.values():
            for case in collect(strategy, scaled(count, scale)):
                key = (case.category, tuple(case.items))
                if key not in seen:  # hypothesis may draw the same example twice
                    seen.add(key)
                    cases.append(case)
        out[kind] = cases
    return out


def main(out: str, scale: float = 1.0) -> None:
    """Writes every case (plain tuples: class, kind, category, items, expect) to `out` as a pickle; `scale` as in
    generate().

    The test runs this in a process of its own: hypothesis mixes constants it finds in the loaded project modules
    into what it draws, so generating inside a pytest session would make the cases depend on which other test
    modules that session imported. Alone, the cases depend only on this checkout."""
    import pickle
    import sys

    cases = {kind: [(c.kind, c.category, c.items, c.expect) for c in items] for kind, items in generate(scale).items()}
    with open(out, "wb") as f:
        pickle.dump(cases, f)
    print({kind: len(items) for kind, items in cases.items()}, file=sys.stderr)


if __name__ == "__main__":
    import sys

    main(sys.argv[1], *map(float, sys.argv[2:3]))
