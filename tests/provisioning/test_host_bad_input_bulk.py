"""Bad input in bulk for the host tools (issue 14), like the firmware's tests/test_bad_input_bulk.py: generated
provisioning files, enrollment files, group key files and command-line options, wrong types, huge, deep, not UTF-8
and special files (/dev/zero, FIFOs, folders), through every command that reads them: `provision-file validate`,
`provision-file show`, `provision-file create`, `fleet`, `emulator` and `run-unix`; and (issues 19 and 21) the
emulator's service commands `emulator send-c2d / twin / invoke-method` against a running emulator (unknown devices,
sizes over IoT Hub's limits, invalid method names and properties), where the exit status must also be the documented
one (1 refused by the hub, 2 bad command line, 3 no emulator), and the emulator must still serve afterwards.
`test_control_port_answers_bad_requests_in_bulk` sends raw request lines to the control port (malformed JSON, every
field with wrong types, missing or wrong token, oversize lines, no newline): every line gets a classified answer,
nothing is logged with a traceback, and the emulator still serves.

Every case runs the real click command in-process (click's CliRunner; an uncaught exception there is a traceback for
a user) and must end with:
- a non-zero exit status;
- exactly one `Error:` line, naming the file (or the option) and, where the case targets one, the field;
- no traceback, and no secret (device key, group key, Wi-Fi password, enrollment keys) anywhere in the output;
- nothing written or replaced: the folders a case may write to are the same, byte for byte, before and after.

Cases generated to be valid (from the same generators) must succeed instead. The figures go to
build/reliability/host_bad_input.json and docs/reliability-tests.md.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from host_tools.board.unix_port import REPO
from host_tools.cli import main
from host_tools.emulator import Emulator
from host_tools.emulator.control import ServiceClient, ServiceError
from host_tools.emulator.enrollment_file import demo_enrollments
from tests.host_helpers import DEVICE_KEY, GROUP_KEY
from tests.provisioning.generated_files import TEMPLATE, generated_files

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]
REPORT = REPO / "build" / "reliability" / "host_bad_input.json"
MINIMUM = 1000
WIFI_PASSWORD = "wifi-secret-pw"
ENROLLMENT_KEY = base64.b64encode(b"enrollment key that must not leak!").decode()
SECRETS = (DEVICE_KEY, GROUP_KEY, WIFI_PASSWORD, ENROLLMENT_KEY)


@dataclass
class Case:
    command: str  # the command it goes through (for the figures)
    kind: str  # what is wrong (for the figures)
    args: list[str]
    names: list = field(default_factory=list)  # each (a string, or a tuple of alternatives) must be in the Error line
    watch: list[Path] = field(default_factory=list)  # folders that must stay as they were
    expect_ok: bool = False
    env: dict = field(default_factory=dict)
    secrets: tuple = SECRETS  # what must not be printed (a case that puts a key in a shown field leaves it out)
    exit_code: int | None = None  # the documented exit status a refusal must have, where the command documents one


def _snapshot(folders: list[Path]) -> dict:
    state = {}
    for folder in folders:
        if not folder.exists():
            state[str(folder)] = None
            continue
        for path in sorted(folder.rglob("*")):
            if path.is_fifo() or path.is_dir():
                state[str(path)] = "dir" if path.is_dir() else "fifo"
            elif path.is_file():
                state[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def _leaks(text: str, secrets=SECRETS) -> list[str]:
    found = []
    for secret in secrets:
        for start in range(0, len(secret) - 12, 6):  # any 12-character piece of a secret
            if secret[start : start + 12] in text:
                found.append(secret[:4] + "...")
                break
    return found


# --- generators ----------------------------------------------------------------------------------------------------


def provisioning_cases(root: Path) -> list[Case]:
    """Every generated provisioning file through validate and show; the invalid ones must be refused."""
    from host_tools.provisioning.validation import ProvisioningFileError, validate_provisioning_file

    cases = []
    for index, generated in enumerate(generated_files()):
        path = generated.write(root / "prov" / f"{index:04d}")
        for command, check_ca in (("validate", True), ("show", False)):
            try:
                validate_provisioning_file(path, check_ca=check_ca)
                ok = True
            except ProvisioningFileError:
                ok = False
            except Exception:  # noqa: BLE001 (a crash is judged when the command runs)
                ok = False
            field_name = generated.name.split("=")[0] if "=" in generated.name else None
            try:
                generated.data.decode("utf-8")
            except UnicodeDecodeError:
                field_name = None  # the whole file is not UTF-8: the file is what is named
            names = [str(path)] + ([field_name] if field_name and not ok and field_name in TEMPLATE else [])
            # a key given as the value of a field that is shown is the test's doing, not a leak
            shown_elsewhere = {
                secret
                for secret, owner in ((DEVICE_KEY, "symmetric_key"), (WIFI_PASSWORD, "wifi"))
                if field_name not in (None, owner) and secret.encode() in generated.data
            }
            cases.append(
                Case(
                    f"provision-file {command}",
                    generated.name.split("=")[0],
                    ["provision-file", command, str(path)],
                    names,
                    [path.parent],
                    expect_ok=ok,
                    secrets=tuple(s for s in SECRETS if s not in shown_elsewhere),
                )
            )
    # the file is not a file
    for name, path in _special_paths(root / "special-prov").items():
        for command in ("validate", "show"):
            cases.append(Case(f"provision-file {command}", name, ["provision-file", command, str(path)], [str(path)]))
    return cases


def _special_paths(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    fifo = folder / "fifo.json"
    if not fifo.exists():
        os.mkfifo(fifo)
    huge = folder / "huge.json"
    huge.write_bytes(b'{"payload": "' + b"x" * 200_000 + b'"}')
    deep = folder / "deep.json"
    deep.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    link = folder / "zero-link.json"
    if not link.is_symlink():
        link.symlink_to("/dev/zero")
    return {
        "dev-zero": Path("/dev/zero"),
        "dev-null": Path("/dev/null"),
        "fifo": fifo,
        "folder": folder,
        "missing": folder / "missing.json",
        "huge": huge,
        "deep": deep,
        "symlink-to-dev-zero": link,
    }


def group_key_cases(root: Path) -> list[Case]:
    folder = root / "group-keys"
    specials = _special_paths(folder / "special")
    contents = {
        "empty": b"",
        "blank": b"  \n\n",
        "not-base64": b"not a key!\n",
        "short-key": base64.b64encode(b"short") + b"\n",
        "non-utf8": b"\xff\xfe" + GROUP_KEY.encode(),
        "nul-bytes": b"\x00" * 64,
        "two-keys": (GROUP_KEY + "\n" + GROUP_KEY + "\n").encode(),
        "key-with-junk": (GROUP_KEY + " # the group key\n").encode(),
        "json": json.dumps({"group_key": GROUP_KEY}).encode(),
        "latin1-junk": "clé".encode("latin-1"),
    }
    paths = dict(specials)
    for name, data in contents.items():
        path = folder / f"{name}.key"
        path.write_bytes(data)
        paths[name] = path
    cases = []
    for name, path in paths.items():
        out = root / "gk-out" / name
        common = ["--id-scope", "0ne00AAAAAA", "--group-key-file", str(path)]
        cases.append(
            Case(
                "provision-file create",
                f"group-key-file {name}",
                ["provision-file", "create", "--out", str(out / "p.json"), "--registration-id", "d1", *common],
                [str(path)],
                [out.parent],
            )
        )
        cases.append(
            Case(
                "fleet",
                f"group-key-file {name}",
                ["fleet", "--out-dir", str(out / "fleet"), "--count", "3", *common],
                [str(path)],
                [out.parent],
            )
        )
    return cases


# option -> bad values; each is tried on create and on fleet (with otherwise good options)
BAD_OPTIONS = {
    "--id-scope": ["", "scope", "0ne/0000000", "0ne0000000000000", "0ne 0000000", "\u00e9" * 11],
    "--dps-host": ["", "evil/host", "a b", "-x", "x" * 300, "host_name", "..", "h\u00e9"],
    "--dps-port": ["0", "-1", "70000", "x", "8883.0", "1e3", "nan", ""],
    "--gateway-host": ["", "bad host", "gw/", ".gw"],
    "--gateway-port": ["0", "65536", "y", "-5"],
    "--storage-dir": ["", " ", "../../etc", "state/../../x"],
    "--log-level": ["loud", "", "INFO"],
    "--sas-ttl": ["1", "0", "-1", "40000000", "x"],
    "--payload": [
        "{",
        "NaN",
        '{"a": NaN}',
        "[" * 5000 + "]" * 5000,
        '"' + "x" * 9000 + '"',
        '{"k": ' + "[" * 40 + "1" + "]" * 40 + "}",
        "'single'",
    ],
    "--wifi-ssid": ["x" * 33],
    "--ca-file": ["DEV_ZERO", "FIFO", "FOLDER", "MISSING", "COMMENTS_ONLY", "GARBAGE", "NON_UTF8", "HUGE"],
}
# options that become a field of the file: the error may name the field (with the file) instead of the option
OPTION_FIELDS = {
    "--id-scope": "id_scope",
    "--dps-host": "dps_host",
    "--dps-port": "dps_port",
    "--gateway-host": "gateway_host",
    "--gateway-port": "gateway_port",
    "--storage-dir": "storage_dir",
    "--log-level": "log_level",
    "--sas-ttl": "sas_ttl_s",
    "--payload": "payload",
    "--wifi-ssid": "wifi",
    "--registration-id": "registration_id",
    "--symmetric-key": "symmetric_key",
    "--pattern": "registration_id",
}
BAD_CREATE_ONLY = {
    "--registration-id": ["", "bad id!", "x" * 129, "ends.", "sensor/1", "\u00e9t\u00e9"],
    "--symmetric-key": ["", "not base64!", base64.b64encode(b"short").decode(), "====", DEVICE_KEY[:-8] + "!!!!!!!!"],
}
BAD_FLEET_ONLY = {
    "--count": ["0", "-1", "x", "1000000000", ""],
    "--pattern": ["{x}", "fixed-id", "{n:zz}", "{n}/bad", "{}", "{n!r}{"],
    "--start": ["x", "1.5"],
}


def _ca_value(root: Path, token: str) -> str:
    folder = root / "ca-files"
    folder.mkdir(parents=True, exist_ok=True)
    if token == "DEV_ZERO":
        return "/dev/zero"
    if token == "FOLDER":
        return str(folder)
    if token == "MISSING":
        return str(folder / "missing.pem")
    path = folder / f"{token.lower()}.pem"
    if token == "FIFO":
        if not path.exists():
            os.mkfifo(path)
    else:
        path.write_bytes(
            {
                "COMMENTS_ONLY": b"# DigiCert Global Root G2\n# nothing else\n",
                "GARBAGE": b"-----BEGIN CERTIFICATE-----\nMIIAAAA\n-----END CERTIFICATE-----\n",
                "NON_UTF8": b"\xff\xfe\x00garbage",
                "HUGE": b"# x\n" * 40_000,
            }[token]
        )
    return str(path)


def option_cases(root: Path) -> list[Case]:
    cases = []
    number = 0

    def add(command: str, option: str, value: str) -> None:
        nonlocal number
        number += 1
        out = root / "opt-out" / f"{number:04d}"
        if option == "--ca-file":
            value = _ca_value(root, value)
        base = (
            ["provision-file", "create", "--out", str(out / "p.json"), "--registration-id", "sensor-1"]
            if command == "provision-file create"
            else ["fleet", "--out-dir", str(out / "fleet"), "--count", "3"]
        )
        key = ["--symmetric-key", DEVICE_KEY] if command == "provision-file create" else ["--group-key", GROUP_KEY]
        if option == "--symmetric-key":
            key = []
        args = [*base, "--id-scope", "0ne00AAAAAA", *key, option, value]
        if option == "--id-scope":
            args = [*base, *key, option, value]
        names = [(option, OPTION_FIELDS[option])] if option in OPTION_FIELDS else [option]
        if option == "--ca-file":
            names = [value]
        cases.append(Case(command, f"option {option}", args, names, [out.parent / out.name]))

    for option, values in BAD_OPTIONS.items():
        for value in values:
            add("provision-file create", option, value)
            add("fleet", option, value)
    for option, values in BAD_CREATE_ONLY.items():
        for value in values:
            add("provision-file create", option, value)
    for option, values in BAD_FLEET_ONLY.items():
        for value in values:
            add("fleet", option, value)
    # the Wi-Fi password alone, and output places that cannot be written or already hold files
    out = root / "opt-out" / "wifi"
    cases.append(
        Case(
            "provision-file create",
            "option --wifi-password without --wifi-ssid",
            ["provision-file", "create", "--out", str(out / "p.json"), "--registration-id", "d1"]
            + ["--id-scope", "0ne00AAAAAA", "--symmetric-key", DEVICE_KEY, "--wifi-password", WIFI_PASSWORD],
            ["--wifi-ssid"],
            [out],
        )
    )
    blocker = root / "opt-out" / "blocker"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a file where a folder should be\n")
    cases.append(
        Case(
            "provision-file create",
            "--out under a file",
            ["provision-file", "create", "--out", str(blocker / "dev" / "p.json"), "--registration-id", "d1"]
            + ["--id-scope", "0ne00AAAAAA", "--symmetric-key", DEVICE_KEY],
            [str(blocker)],
            [blocker.parent],
        )
    )
    cases.append(
        Case(
            "fleet",
            "--out-dir is a file",
            ["fleet", "--out-dir", str(blocker), "--count", "2", "--id-scope", "0ne00AAAAAA", "--group-key", GROUP_KEY],
            [str(blocker)],
            [blocker.parent],
        )
    )
    return cases


def existing_file_cases(root: Path) -> list[Case]:
    """A device folder that already holds some of the files: nothing is replaced without --force."""
    cases = []
    for number, existing in enumerate(("p.json", "certs/dps-root.pem", "sensor-0002.json", "fleet.json")):
        folder = root / "existing" / str(number)
        (folder / existing).parent.mkdir(parents=True, exist_ok=True)
        (folder / existing).write_text("someone else's file\n")
        if existing in ("p.json", "certs/dps-root.pem"):  # fleet writes no p.json: that one is create's only
            cases.append(
                Case(
                    "provision-file create",
                    f"existing {existing}",
                    ["provision-file", "create", "--out", str(folder / "p.json"), "--registration-id", "d1"]
                    + ["--id-scope", "0ne00AAAAAA", "--symmetric-key", DEVICE_KEY],
                    [str(folder / existing), "--force"],
                    [folder],
                )
            )
        if existing == "p.json":
            continue
        cases.append(
            Case(
                "fleet",
                f"existing {existing}",
                [
                    "fleet",
                    "--out-dir",
                    str(folder),
                    "--count",
                    "3",
                    "--id-scope",
                    "0ne00AAAAAA",
                    "--group-key",
                    GROUP_KEY,
                ],
                ["--force"],
                [folder],
            )
        )
    # a field the device refuses: create must not leave the CA file behind (issue 14, defect 7)
    folder = root / "existing" / "bad-field"
    cases.append(
        Case(
            "provision-file create",
            "bad field, fresh folder",
            ["provision-file", "create", "--out", str(folder / "p.json"), "--registration-id", "d1"]
            + ["--id-scope", "0ne00AAAAAA", "--symmetric-key", DEVICE_KEY, "--dps-port", "0"],
            ["dps_port"],
            [folder.parent],
        )
    )
    return cases


ENROLLMENT_VALUES = [None, True, 0, -1, 1.5, "", "x", "bad id!", "0ne/1", [], [1], {}, {"a": ENROLLMENT_KEY}, "n" * 300]


def enrollment_cases(root: Path) -> list[Case]:
    folder = root / "enrollments"
    folder.mkdir(parents=True, exist_ok=True)
    state = root / "emulator-state"
    base = demo_enrollments(devices=("dev-1",))
    base["individual"][0]["symmetric_key"] = ENROLLMENT_KEY
    base["groups"][0]["group_key"] = ENROLLMENT_KEY
    base["trust_bundles"] = {}
    base["individual"][0]["trust_bundle"] = None
    base["groups"][0]["trust_bundle"] = None
    documents: list[tuple[str, str, bytes]] = []

    def add(kind: str, field_name: str, document) -> None:
        documents.append((kind, field_name, json.dumps(document).encode()))

    def fields(document, prefix=""):
        if isinstance(document, dict):
            for name, value in document.items():
                yield from fields(value, f"{prefix}.{name}" if prefix else name)
                yield (f"{prefix}.{name}" if prefix else name), (name,)
        if isinstance(document, list):
            for index, value in enumerate(document):
                yield from fields(value, f"{prefix}[{index}]")

    def replaced(document, dotted: str, value):
        copy = json.loads(json.dumps(document))
        parts = dotted.replace("[", ".[").split(".")
        target = copy
        for part in parts[:-1]:
            target = target[int(part[1:-1])] if part.startswith("[") else target[part]
        last = parts[-1]
        if last.startswith("["):
            target[int(last[1:-1])] = value
        else:
            target[last] = value
        return copy

    for dotted, _ in list(fields(base)):
        for value in ENROLLMENT_VALUES:
            document = replaced(base, dotted, value)
            documents.append(("wrong value", dotted, json.dumps(document).encode()))
    documents.append(("top-level array", "", json.dumps([base]).encode()))
    documents.append(("top-level key list", "", json.dumps([ENROLLMENT_KEY]).encode()))
    documents.append(("not UTF-8", "", json.dumps(base).encode().replace(b"dev-1", b"dev-\xff")))
    documents.append(("NaN", "", json.dumps(base).encode().replace(b'"id_scope"', b'"x": NaN, "id_scope"')))
    documents.append(("deep", "", b'{"faults": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"))
    documents.append(("deep for the validator", "", b'{"faults": ' + b"[" * 900 + b"]" * 900 + b"}"))
    documents.append(("truncated", "", json.dumps(base).encode()[:-3]))
    documents.append(("empty", "", b""))
    cases = []
    from host_tools.emulator.enrollment_file import load_enrollments
    from host_tools.emulator.enrollments import EnrollmentError

    for number, (kind, field_name, data) in enumerate(documents):
        path = folder / f"{number:04d}.json"
        path.write_bytes(data)
        try:
            load_enrollments(path)
            ok = True
        except EnrollmentError:
            ok = False
        except Exception:  # noqa: BLE001 (a crash is judged when the command runs)
            ok = False
        names = [str(path)] + ([field_name.split(".")[-1].split("[")[0]] if field_name and not ok else [])
        cases.append(
            Case(
                "emulator",
                kind,
                ["emulator", "--state-dir", str(state), "--enrollments", str(path)],
                names,
                [folder],
                expect_ok=ok,
            )
        )
    for name, path in _special_paths(folder / "special").items():
        cases.append(
            Case("emulator", name, ["emulator", "--state-dir", str(state), "--enrollments", str(path)], [str(path)])
        )
    good = folder / "good.json"
    good.write_text(json.dumps(base))
    for option, values in {
        "--rate-limit": ["nan", "inf", "-1", "0", "x", "-inf"],
        "--ip": ["not-an-ip", "300.1.1.1", "", "::g"],
        "--host": ["not an ip", "1.2.3.4.5"],
        "--dps-hostname": ["evil/host", "a b", "", "-x"],
        "--gateway-hostname": ["gw/", "x" * 300],
        "--dps-port": ["70000", "x", "-1"],
        "--gateway-port": ["65536", "y"],
        "--fault": ["bogus=1", "drop_after=later", "=", "throttle_register={"],
    }.items():
        for value in values:
            cases.append(
                Case(
                    "emulator",
                    f"option {option}",
                    ["emulator", "--state-dir", str(state), "--enrollments", str(good), option, value],
                    [option],
                    [folder],
                )
            )
    blocker = root / "emu-blocker"
    blocker.write_text("a file\n")
    cases.append(
        Case(
            "emulator",
            "--state-dir under a file",
            ["emulator", "--state-dir", str(blocker / "s"), "--enrollments", str(good)],
            [str(blocker)],
            [folder],
        )
    )
    return cases


SERVICE_DEVICE = "svc-dev"  # an individual enrollment of the service emulator
UNKNOWN_DEVICES = [
    "no-such-device",
    "typo-device",
    "SVC-DEV",  # device ids are case-sensitive
    "svc-dev ",
    "svc-dev\n",
    "../svc-dev",
    "d\u00e9vice",
    "x" * 300,
    "fleet-member",  # only a group enrollment would take it: not a device until it registers
]


def service_cases(root: Path, state: Path) -> list[Case]:
    """The service commands against a running emulator (`state`): refused ones with the documented exit status and
    the status in the one Error line; nothing in the state folder changed by a refusal."""
    cases = []
    base = ["--state-dir", str(state)]

    def add(command, kind, args, names, exit_code, watch=True, ok=False):
        cases.append(
            Case(
                f"emulator {command}",
                kind,
                ["emulator", command, *args, *base],
                names,
                [state] if watch and not ok else [],
                expect_ok=ok,
                exit_code=exit_code,
            )
        )

    for device in UNKNOWN_DEVICES:
        add("send-c2d", "unknown device", [device, "hello"], ["404"], 1)
        add("twin", "unknown device", [device], ["404"], 1)
        add("twin", "unknown device, set desired", [device, "--set-desired", '{"k": 1}'], ["404"], 1)
        add("invoke-method", "unknown device", [device, "ping", "--timeout", "1"], ["404"], 1)
    for command, args in (("send-c2d", ["hi"]), ("twin", []), ("invoke-method", ["ping"])):
        add(command, "device id not UTF-8", ["\udcff", *args], ["400"], 1)  # a command-line argument
    for size in (64 * 1024 + 1, 70 * 1024, 300 * 1024, 1024 * 1024):
        add("send-c2d", "C2D body over 64 KB", [SERVICE_DEVICE, "x" * size], ["413"], 1)
    for patch in (
        {"blob": "y" * (40 * 1024)},
        {"blob": "y" * (32 * 1024)},
        {f"k{n}": "v" * 1000 for n in range(40)},
        {"a": [1] * 5000},
    ):
        add("twin", "desired patch over 32 KB", [SERVICE_DEVICE, "--set-desired", json.dumps(patch)], ["413"], 1)
    add("twin", "desired patch 11 deep", [SERVICE_DEVICE, "--set-desired", "{" + '"n": {' * 11 + "}" * 12], ["400"], 1)
    for name, value in (
        ("not JSON", "{"),
        ("array", "[1]"),
        ("null", "null"),
        ("string", '"x"'),
        ("NaN", '{"a": NaN}'),
        ("deep", '{"a": ' * 5000 + "1" + "}" * 5000),
        ("empty", ""),
    ):
        add("twin", f"--set-desired {name}", [SERVICE_DEVICE, "--set-desired", value], ["--set-desired"], 2)
    for name in ("#", "a/b", "+", "", "reboot?now", "a#b", "$iothub/x", "a\nb", "\udcff"):
        add("invoke-method", "invalid method name", [SERVICE_DEVICE, name, "--timeout", "1"], ["400"], 1)
    add(
        "invoke-method",
        "payload over 128 KB",
        [SERVICE_DEVICE, "ping", "--payload", json.dumps("p" * (128 * 1024)), "--timeout", "1"],
        ["413"],
        1,
    )
    for name, value in (("not JSON", "{"), ("NaN", "NaN"), ("deep", "[" * 5000 + "]" * 5000), ("empty", "")):
        add("invoke-method", f"--payload {name}", [SERVICE_DEVICE, "ping", "--payload", value], ["--payload"], 2)
    for value in ("0", "-1", "301", "nan", "inf", "x", ""):
        add("invoke-method", "--timeout", [SERVICE_DEVICE, "ping", "--timeout", value], ["--timeout"], 2)
    # a known device that is not online: the hub answers 404 instead of the device (records are written)
    add("invoke-method", "device not online", [SERVICE_DEVICE, "ping", "--timeout", "1"], ["404"], 1, watch=False)
    for prop in ("novalue", "=v", "", "=", "x" * 300):
        add("send-c2d", "--property", [SERVICE_DEVICE, "hi", "--property", prop], ["--property"], 2)
    add("send-c2d", "property not UTF-8", [SERVICE_DEVICE, "hi", "--property", "k=\udcff"], ["400"], 1)
    nowhere = root / "no-emulator"
    for command, args in (("send-c2d", [SERVICE_DEVICE, "hi"]), ("twin", [SERVICE_DEVICE])):
        cases.append(
            Case(
                f"emulator {command}",
                "no running emulator",
                ["emulator", command, *args, "--state-dir", str(nowhere)],
                [str(nowhere)],
                exit_code=3,
            )
        )
    # valid requests: served
    add("send-c2d", "valid", [SERVICE_DEVICE, "x" * (64 * 1024), "--property", "k=v"], [], 0, ok=True)
    add("send-c2d", "valid, not UTF-8", [SERVICE_DEVICE, "\udcff"], [], 0, ok=True)
    add("twin", "valid", [SERVICE_DEVICE], [], 0, ok=True)
    add(
        "twin",
        "valid, set desired",
        [SERVICE_DEVICE, "--set-desired", '{"k": {"n": 1}, "$version": 9}'],
        [],
        0,
        ok=True,
    )
    return cases


def run_unix_cases(root: Path) -> list[Case]:
    cases = []
    for name, path in _special_paths(root / "special-run").items():
        cases.append(
            Case(
                "run-unix",
                name,
                ["run-unix", "--provisioning", str(path), "--flash", str(root / "run-flash" / name), "--source"],
                [str(path)],
                [root / "run-flash"],
            )
        )
    for index, generated in enumerate(generated_files()[::25]):
        path = generated.write(root / "run-prov" / f"{index:04d}")
        from host_tools.provisioning.validation import validate_provisioning_file

        try:
            validate_provisioning_file(path)
            continue  # a valid file would run the device: not a bad-input case
        except Exception:  # noqa: BLE001, S110 (refused or crashed: either way a bad-input case)
            pass
        flash = root / "run-flash" / f"gen-{index:04d}"
        cases.append(
            Case(
                "run-unix",
                generated.name.split("=")[0],
                ["run-unix", "--provisioning", str(path), "--flash", str(flash), "--source"],
                [str(path)],
                [root / "run-flash"],
            )
        )
    return cases


# --- the test ------------------------------------------------------------------------------------------------------


def _check(case: Case, result) -> str | None:
    output = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return f"uncaught {type(result.exception).__name__}: {str(result.exception)[:200]}"
    if "Traceback" in output:
        return "a traceback in the output"
    leaks = _leaks(output, case.secrets)
    if leaks:
        return f"secret in the output: {leaks}"
    if case.expect_ok:
        return None if result.exit_code == 0 else f"a valid input was refused: {output[-300:]}"
    if result.exit_code == 0:
        return "exit status 0 for bad input"
    if case.exit_code is not None and result.exit_code != case.exit_code:
        return f"exit status {result.exit_code}, documented {case.exit_code}: {output[-300:]}"
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    if len(errors) != 1:
        return f"{len(errors)} Error: lines: {output[-400:]}"
    error_text = output[output.index("Error:") :]
    missing = [
        name for name in case.names if not any(n in error_text for n in (name if isinstance(name, tuple) else (name,)))
    ]
    if missing:
        return f"the error does not name {missing}: {error_text[:400]}"
    return None


def _service_emulator(root: Path) -> Emulator:
    document = demo_enrollments(devices=(SERVICE_DEVICE,), group_id="fleet")
    return Emulator(root / "service-emulator", document, control_idle_timeout=0.5)


def test_host_tools_refuse_bad_input_in_bulk(tmp_path, monkeypatch, caplog):
    import host_tools.emulator.cli as emulator_cli

    async def no_serving(server):  # a valid enrollment file would start serving: stop right after preparing
        return None

    monkeypatch.setattr(emulator_cli, "_serve", no_serving)
    monkeypatch.setenv("COLUMNS", "200")
    for name in ("AZPROV_GROUP_KEY", "AZPROV_SYMMETRIC_KEY", "AZPROV_WIFI_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    cases = (
        provisioning_cases(tmp_path)
        + group_key_cases(tmp_path)
        + option_cases(tmp_path)
        + existing_file_cases(tmp_path)
        + enrollment_cases(tmp_path)
        + run_unix_cases(tmp_path)
    )
    caplog.set_level(logging.INFO, logger="host_tools.emulator")
    service_emulator = _service_emulator(tmp_path).start()
    cases += service_cases(tmp_path, service_emulator.state_dir)
    runner = CliRunner()
    failures = []
    figures: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    started = time.monotonic()
    for case in cases:
        before = _snapshot(case.watch)
        result = runner.invoke(main, case.args, env=case.env, catch_exceptions=True)
        problem = _check(case, result)
        if problem is None and not case.expect_ok and _snapshot(case.watch) != before:
            problem = "files were written or replaced"
        figures[case.command]["valid" if case.expect_ok else "bad"] += 1
        figures[case.command]["failed"] += problem is not None
        figures[case.command]["kinds"] = figures[case.command]["kinds"] or 0
        if problem:
            failures.append({"command": case.command, "kind": case.kind, "args": case.args[:8], "problem": problem})
    elapsed = time.monotonic() - started
    try:
        service = ServiceClient.from_state_dir(service_emulator.state_dir)
        still_serving = service.twin(SERVICE_DEVICE)["desired"].get("k") == {"n": 1}
    except ServiceError as exc:
        still_serving = f"no longer serving: {exc}"
    finally:
        service_emulator.stop()
    if still_serving is not True:
        failures.append({"command": "emulator", "kind": "afterwards", "args": [], "problem": str(still_serving)})
    logged = [r.getMessage()[:200] for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    if logged:
        failures.append({"command": "emulator", "kind": "log", "args": [], "problem": f"tracebacks logged: {logged}"})
    bad = sum(1 for c in cases if not c.expect_ok)
    kinds = collections.Counter((c.command, c.kind) for c in cases)
    report = {
        "cases": len(cases),
        "bad_input_cases": bad,
        "valid_cases": len(cases) - bad,
        "kinds": len(kinds),
        "seconds": round(elapsed, 1),
        "by_command": {
            command: {"bad": counts["bad"], "valid": counts["valid"], "failed": counts["failed"]}
            for command, counts in sorted(figures.items())
        },
        "failures": failures[:200],
    }
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "failures"}, indent=2))
    assert bad >= MINIMUM, f"only {bad} bad-input cases"
    assert not failures, json.dumps(failures[:25], indent=2)


# --- the control port, raw ----------------------------------------------------------------------------------------

WRONG_VALUES = [None, True, 0, -1, 1.5, "", "x", "\u00e9", [], [1], {}, {"a": 1}, "n" * 300, [[["deep"]]]]
CLASSIFIED = {400, 401, 403, 404, 408, 413}  # a refusal's status; 500 would be an emulator bug
ARGS = {
    "twin": {"device_id": SERVICE_DEVICE},
    "set_desired": {"device_id": SERVICE_DEVICE, "patch": {"k": 1}},
    "invoke_method": {"device_id": SERVICE_DEVICE, "name": "ping", "payload": {"a": 1}, "timeout": 0.2},
    "send_c2d": {"device_id": SERVICE_DEVICE, "payload_b64": "aGk=", "properties": {"k": "v"}},
    "publish_raw": {"device_id": SERVICE_DEVICE, "topic": "t", "payload": "x", "qos": 0},
    "drop_connection": {"device_id": SERVICE_DEVICE},
}


def control_lines(token: str) -> list[tuple[str, bytes, set]]:
    """(kind, raw request bytes, the statuses it may get; "ok" for a request that may be served)."""
    anything = CLASSIFIED | {"ok"}
    cases = []

    def line(document) -> bytes:
        return json.dumps(document).encode() + b"\n"

    for op, args in ARGS.items():
        cases.append((f"{op} valid", line({"token": token, "op": op, "args": args}), anything))
        for name in args:
            for value in WRONG_VALUES:
                wrong = {**args, name: value}
                cases.append((f"{op} {name}", line({"token": token, "op": op, "args": wrong}), anything))
            missing = {k: v for k, v in args.items() if k != name}
            cases.append((f"{op} without {name}", line({"token": token, "op": op, "args": missing}), anything))
        cases.append((f"{op} without a token", line({"op": op, "args": args}), {401}))
        cases.append((f"{op} wrong token", line({"token": token[:-1] + "?", "op": op, "args": args}), {401}))
        for value in WRONG_VALUES:
            cases.append((f"{op} token type", line({"token": value, "op": op, "args": args}), {401}))
            if not isinstance(value, dict):
                cases.append((f"{op} args type", line({"token": token, "op": op, "args": value}), {400}))
    for value in WRONG_VALUES:
        cases.append(("op type", line({"token": token, "op": value, "args": {}}), {400}))
    for name, data in {
        "not JSON": b"hello\n",
        "truncated JSON": line({"token": token, "op": "twin"})[:-5] + b"\n",
        "array": b"[1, 2]\n",
        "string": b'"twin"\n',
        "number": b"5\n",
        "null": b"null\n",
        "empty line": b"\n",
        "NaN": b'{"token": NaN}\n',
        "deep": b"[" * 100_000 + b"\n",
        "not UTF-8": b'{"token": "\xff\xfe"}\n',
        "NUL bytes": b"\x00" * 100 + b"\n",
        "CRLF": line({"token": token, "op": "twin", "args": ARGS["twin"]})[:-1] + b"\r\n",
    }.items():
        cases.append((name, data, anything if name == "CRLF" else {400, 401}))
    return cases


def test_control_port_answers_bad_requests_in_bulk(tmp_path, caplog):
    from host_tools.emulator.limits import CONTROL_MAX_LINE_BYTES
    from host_tools.emulator.testing import control_exchange

    caplog.set_level(logging.INFO, logger="host_tools.emulator")
    failures = []
    with _service_emulator(tmp_path) as emu:
        control = emu.info["control"]
        port, token = control["port"], control["token"]
        cases = control_lines(token)
        for kind, data, allowed in cases:
            raw = control_exchange(port, data)
            try:
                answer = json.loads(raw)
                status = "ok" if answer["ok"] is True and "result" in answer else answer["status"]
                one_line = answer.get("ok") is True or "\n" not in str(answer["error"])
            except (ValueError, KeyError, TypeError):
                failures.append((kind, f"not an answer: {raw[:200]!r}"))
                continue
            if status not in allowed or not one_line:
                failures.append((kind, f"answered {answer!r:.300}"))
        # lines the connection cannot go on after: answered, then closed
        for kind, data, status, half_close in (
            ("oversize line", b'{"token": "' + b"x" * (CONTROL_MAX_LINE_BYTES + 10) + b'"}\n', 413, False),
            ("oversize, no newline", b"[" * (CONTROL_MAX_LINE_BYTES + 10), 413, False),
            ("no newline, then silence", b'{"token": "', 408, False),
            ("nothing at all", b"", 408, False),
            ("no newline, then end", json.dumps({"token": token, "op": "twin"}).encode(), 400, True),
        ):
            raw = control_exchange(port, data, half_close=half_close)
            try:
                if json.loads(raw)["status"] != status:
                    failures.append((kind, f"answered {raw[:300]!r}"))
            except (ValueError, KeyError, TypeError):
                failures.append((kind, f"not an answer: {raw[:200]!r}"))
        # still serving
        served = json.loads(
            control_exchange(port, json.dumps({"token": token, "op": "twin", "args": ARGS["twin"]}).encode() + b"\n")
        )
        if served.get("ok") is not True:
            failures.append(("afterwards", f"no longer serving: {served}"))
    logged = [r.getMessage()[:200] for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    if logged:
        failures.append(("log", f"tracebacks logged: {logged[:5]}"))
    print(json.dumps({"control_port_cases": len(cases) + 5, "failed": len(failures)}))
    assert len(cases) > 300, len(cases)
    assert not failures, json.dumps(failures[:25], indent=2)
