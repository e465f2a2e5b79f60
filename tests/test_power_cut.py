"""Power cuts while the device commits a new trust bundle (littlefs on a file-backed flash, SIGKILL mid-write),
and the same on FAT, where the test checks the weaker guarantees FAT allows (see _restart_and_check).

The device image (firmware .mpy, umqtt, provisioning files, CA file) lives inside a littlefs image that
tests/powercut/pc_boot.py mounts at "/" with os.VfsLfs2, as an ESP32 mounts its flash. Its block device counts
the bytes littlefs programs and, given PC_CUT=N, programs only the first N bytes, prints `POWER-CUT` and stops;
the test then SIGKILLs the process in the middle of the write.

1. First boot with trust bundle A: the old state. The image is kept as the snapshot every cut starts from.
2. The enrollment moves to trust bundle B (other certificates, new id and etag); one boot with force_reprovision
   and a trace of every program operation measures the byte range Store.save writes (between the `registered` and
   `trust_bundle_stored` log lines).
3. For each cut point over that range (every program operation's first byte, its second and its last, plus an
   even grid: at least 200 points in `make reliability`, AZPROV_FULL=1; in `make test` a coarser grid, at least 60
   points, and all three bytes only for the last BUNDLE_TAIL_OPS operations, the first byte for the others): snapshot -> boot with force_reprovision cut at N -> SIGKILL -> power on again
   with the normal provisioning file (a cached boot). The raw files the cut left (read by a fresh mount before the
   firmware runs) must be exactly the old state, exactly the new one, or the new state.json with the new PEM still
   staged (the documented roll-forward); the restarted device must use its stored assignment without registering
   again, end with exactly the old or new state on flash, verify the gateway with that bundle and get its telemetry
   acknowledged.
4. The roll-forward itself is cut too: from the first cut that left the new state.json with the PEM still staged,
   the next boot (which renames the staged PEM into place) is cut at every few bytes it programs (about 25 points;
   9 in `make test`), then the device boots once more and must come up with the complete new state.
The figures go to build/reliability/power_cut.json (power_cut_sample.json in `make test`).

test_power_cut_during_issued_identity_commit runs the same steps for a device with certificate_issuance, whose
state.json also holds the identity DPS issued (key and chain): old state identity A + bundle A, new state a new key
with chain B + bundle B + another returned payload. Every registration makes a new key, so a new state is recognised
by its content (Expected.problem: new assignment and bundle metadata, a key that is its leaf certificate's, issued by
the policy CA, not A's); the restarted device must also authenticate at the gateway with the stored certificate (no
password, the emulator's record) without a new CSR. `make test` cuts the last COMMIT_OPS program operations at their
boundaries plus a grid of 8 (about 35 points); `make reliability` every operation and a grid of 300. Figures in
build/reliability/power_cut_issuance[_fat][_sample].json.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from host_tools.board.harness import parse_device_line
from host_tools.board.unix_port import REPO, micropython_binary, stage_device_root
from host_tools.board.virtual_board import FlashImage
from host_tools.provisioning import pki
from host_tools.provisioning.issuance_ca import ensure_issuance_ca
from tests.helpers import enrollment_doc, individual, new_key, provisioning_for
from tests.host_helpers import FULL_RUNS

pytestmark = pytest.mark.slow

BOOT = Path(__file__).resolve().parent / "powercut" / "pc_boot.py"
_SAMPLE = "" if FULL_RUNS else "_sample"
# 512 KiB either way: 4 KiB littlefs blocks (the image, firmware included, fills about a third), 512-byte FAT sectors.
IMAGE_BLOCKS = {"lfs2": 128, "fat": 1024}
# littlefs (an ESP32's flash) and FAT (an SD card, or a board formatted FAT): both are in the Unix port's os module.
FILE_SYSTEMS = ("lfs2", "fat")
# Every program operation's boundaries are cut in both runs; the even grid between them is what `make test` thins.
MIN_KILL_POINTS = 200 if FULL_RUNS else 60
GRID_POINTS = 300 if FULL_RUNS else 30
# `make test` cuts every program operation at its first byte and the last BUNDLE_TAIL_OPS (the end of state.json.tmp,
# the PEM staging and the renames that commit: where the non-old outcomes are) also at their second and last byte;
# the PEM streamed earlier (trust_bundle.pem.in) gave only "old" there. `make reliability`: all three for every one.
BUNDLE_TAIL_OPS = None if FULL_RUNS else 12
ROLL_FORWARD_POINTS = 24 if FULL_RUNS else 8
WORKERS = 2
RUN_TIMEOUT_S = 60
REPROVISION_FILE = "provisioning-reprovision.json"
STATE, PEM, STAGED, TMP = "state.json", "trust_bundle.pem", "trust_bundle.pem.new", "state.json.tmp"
INCOMING = "trust_bundle.pem.in"  # certificates streamed from the DPS answer before Store.save stages them
# The issuance device (test_power_cut_during_issued_identity_commit): every cut boot makes a key and a CSR, so
# `make test` cuts the boundaries of only the last COMMIT_OPS program operations (state.json.tmp's last pages, its
# close and the renames that commit it) plus a grid over the whole write.
ISSUANCE_ID = "pc-iss"
COMMIT_OPS = 8
ISSUANCE_GRID_POINTS = 300 if FULL_RUNS else 8
ISSUANCE_MIN_KILL_POINTS = 200 if FULL_RUNS else 28
ISSUANCE_ROLL_FORWARD_POINTS = 24 if FULL_RUNS else 3


# --- running the power-cut board ---------------------------------------------------------------------------------


def _env(
    image: Path, provisioning: str = "provisioning.json", cut: int | None = None, trace: bool = False, fs: str = "lfs2"
) -> dict:
    env = dict(os.environ, PC_IMAGE=str(image), PC_PROVISIONING=provisioning, PC_FS=fs)
    env.pop("PC_CUT", None)
    if cut is not None:
        env["PC_CUT"] = str(cut)
    if trace:
        env["PC_TRACE"] = "1"
    return env


class Boot:
    """What one power-on printed: firmware events, the storage listings before/after main.py, trace lines."""

    def __init__(self, output: str, status: int | None):
        self.output = output
        self.status = status
        self.lines = output.splitlines()
        self.events = [p[1] for p in map(parse_device_line, self.lines) if p]
        self.files: dict[str, dict[str, str]] = {"PRE": {}, "POST": {}}
        self.sizes: dict[str, dict[str, int]] = {"PRE": {}, "POST": {}}
        self.broken: dict[str, list[str]] = {"PRE": [], "POST": []}  # listed, but cannot be opened (FAT)
        self.end = None
        for line in self.lines:
            parts = line.split()
            if parts[:1] == ["PC-BROKEN"]:
                self.broken[parts[1]].append(parts[2])
            elif parts[:1] == ["PC-FILE"]:
                self.files[parts[1]][parts[2]] = parts[4]
                self.sizes[parts[1]][parts[2]] = int(parts[3])
            elif parts[:1] == ["PC-END"]:
                self.end = line

    def event(self, name: str) -> dict | None:
        for line in self.lines:
            parsed = parse_device_line(line)
            if parsed and parsed[1] == name:
                return parsed[2]
        return None


def power_on(image: Path, **kw) -> Boot:
    proc = subprocess.run(
        [micropython_binary(), str(BOOT), "run"],
        env=_env(image, **kw),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    return Boot(proc.stdout + proc.stderr, proc.returncode)


def power_on_and_cut(image: Path, cut: int, provisioning: str, fs: str = "lfs2") -> tuple[str, int | None]:
    """Boots with the cut armed; SIGKILLs the process once it reports the cut. Returns (output, programmed)."""
    proc = subprocess.Popen(
        [micropython_binary(), str(BOOT), "run"],
        env=_env(image, provisioning, cut=cut, fs=fs),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    watchdog = threading.Timer(RUN_TIMEOUT_S, proc.kill)
    watchdog.start()
    lines, programmed = [], None
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("POWER-CUT "):
                os.kill(proc.pid, signal.SIGKILL)  # the power goes off in the middle of the write
                programmed = int(line.split()[1])
                break
    finally:
        watchdog.cancel()
        proc.wait()
        proc.stdout.close()
    return "".join(lines), programmed


def read_file(image: Path, path: str, fs: str) -> bytes:
    """One file of an image: littlefs through the virtual board's own reader (a second opinion), FAT through the
    Unix port's os.VfsFat."""
    if fs == "lfs2":
        return FlashImage(image).read(path)
    proc = subprocess.run(
        [micropython_binary(), str(BOOT), "cat", str(image), path, fs], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return bytes.fromhex(proc.stdout.strip())


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _bundle_pem(path: Path, *more: Path) -> str:
    """The PEM text the firmware stores for a bundle made of these files: every certificate, "\n" endings."""
    text = "".join(p.read_text() for p in (path, *more)).replace("\r\n", "\n")
    blocks = [b.strip() + "\n-----END CERTIFICATE-----\n" for b in text.split("-----END CERTIFICATE-----") if b.strip()]
    return "".join(blocks)


# --- what a cut may leave ------------------------------------------------------------------------------------------


class Expected:
    """The two states a cut may leave: the old one (exact bytes: state.json and trust_bundle.pem A) and the new one
    (trust_bundle.pem B with a state.json that `state_new` lists, or, when every registration writes another
    state.json, one that `problem` finds nothing wrong with: the issued identity's key is new for each one)."""

    def __init__(self, pem_a: str, pem_b: str, state_old: str, state_new: str, problem=None):
        self.pem_a, self.pem_b, self.state_old = pem_a, pem_b, state_old
        self.state_new = {state_new}  # sha256 of state.json texts known to be a complete new state
        self.problem = problem  # bytes -> None (a complete new state) or what is wrong; None: only state_new is new
        self.rejected: dict[str, str] = {}  # sha256 -> what is wrong with it
        self.checked = 0  # state.json texts `problem` accepted (each a new state of its own)

    def is_new(self, data: bytes) -> bool:
        sha = _sha(data)
        if sha in self.state_new:
            return True
        if self.problem is None or sha in self.rejected:
            return False
        why = self.problem(data)
        if why is not None:
            self.rejected[sha] = why
            return False
        self.state_new.add(sha)
        self.checked += 1
        return True

    def new_states(self, image: Path, fs: str, files: dict[str, str]) -> set[str]:
        """The sha256 of every complete new state: state.json and state.json.tmp of `files` (a listing of `image`)
        are read from the image when their hash alone does not tell."""
        for name in (STATE, TMP):
            sha = files.get(name)
            if sha is None or sha == self.state_old or sha in self.state_new or sha in self.rejected:
                continue
            if self.problem is None:
                continue
            data = read_file(image, f"azprov_state/{name}", fs)
            # No assertion shows the bytes: an issued identity's state.json holds its private key.
            if _sha(data) != sha:
                raise AssertionError("the image changed under the listing of " + name)
            self.is_new(data)
        return self.state_new


def _cut_points(ops: list[tuple[int, int]], lo: int, hi: int, grid: int, whole_tail: int | None = None) -> list[int]:
    """The first, second and last byte of each program operation in `ops`, plus an even grid of `grid` points.
    `whole_tail` N: those three for the last N operations only; every earlier one is cut at its first byte alone (the
    state between it and the one before it: every such state is still visited)."""
    points = set()
    tail_from = 0 if whole_tail is None else max(0, len(ops) - whole_tail)
    for index, (start, length) in enumerate(ops):
        points.add(start)
        if index >= tail_from:
            points.update((start + 1, start + length - 1))
    step = (hi - lo) / grid
    points.update(lo + int(step * (i + 0.5)) for i in range(grid))
    return sorted(p for p in points if lo <= p < hi)


def _classify_raw(files: dict[str, str], known: Expected, new: set[str], fs: str = "lfs2") -> str:
    """What a cut left in the storage folder: 'old', 'new', 'new-staged' (roll-forward due), on FAT also 'lost'
    (no state.json at all) or 'pem-lost' (the new state.json without any PEM), or a failure text. `new`: the
    sha256 of the state.json texts that are a complete new state (Expected.new_states)."""
    if fs == "fat":
        # A cut while FAT writes a long file name can leave the file under its 8.3 alias (STATE~1.JSO): an
        # orphan the firmware never reads. Counted by the caller, not classified.
        files = {name: sha for name, sha in files.items() if "~" not in name}
    state, pem, staged = files.get(STATE), files.get(PEM), files.get(STAGED)
    extra = sorted(set(files) - {STATE, PEM, STAGED, TMP, INCOMING})
    if extra:
        return "unexpected files %s" % extra
    if state is None and fs == "fat":
        # The cut fell between "remove state.json" and "rename state.json.tmp onto it": the firmware finishes the
        # rename at boot when the temporary file is complete.
        return "new-tmp" if files.get(TMP) in new and pem == known.pem_a else "lost"
    if state == known.state_old:
        if pem != known.pem_a:
            return "old state.json with a trust_bundle.pem that is not bundle A"
        return "old"
    if state in new:
        if pem == known.pem_b and staged == known.pem_b and fs == "fat":
            # A cut inside FatFs's rename of the staged PEM (it writes the new entry before removing the old one):
            # both names on one cluster chain. The boot copies the PEM to clusters of its own before removing either.
            return "new-twin"
        if pem == known.pem_b:
            return "new" if staged is None else "new state with a stale staged PEM"
        if pem in (known.pem_a, None) and staged == known.pem_b:
            return "new-staged"  # on FAT the old PEM may already be gone: renaming onto a file removes it first
        if fs == "fat" and pem is None and staged is None:
            return "pem-lost"
        return "new state.json with trust_bundle.pem %s and staged %s" % (
            "A" if pem == known.pem_a else pem,
            "B" if staged == known.pem_b else staged,
        )
    if state in known.rejected:
        return "torn: " + known.rejected[state]
    return "torn"  # state.json is neither the old nor the new one


NEW_KINDS = ("new", "new-staged", "new-tmp", "new-twin")
LOST_KINDS = ("lost", "pem-lost")


def _restart_and_check(image: Path, known: Expected, record: dict, cut_output: str, fs: str, kept: Path) -> None:
    """Powers on after a cut and records what it found and did; record["failure"] on a problem. `kept`: a copy of
    the image as the cut left it (what Expected.new_states reads).

    littlefs: the restart is a cached boot with exactly the old or the new state. FAT (whose renames are not atomic):
    state.json is never torn (absent, or exactly the old or the new one); a state that survived is used as on
    littlefs; a lost one makes the device register again; either way it ends with the complete old or new state and
    acknowledged telemetry."""
    shutil.copy2(image, kept)
    boot = power_on(image, fs=fs)
    raw = _classify_raw(boot.files["PRE"], known, known.new_states(kept, fs, boot.files["PRE"]), fs)
    after = _classify_raw(boot.files["POST"], known, known.new_states(image, fs, boot.files["POST"]), fs)
    record.update(
        raw=raw,
        after=after,
        leftover_tmp=boot.sizes["POST"].get(TMP),
        telemetry="telemetry_acknowledged" in boot.events,
        orphans=sorted(name for name in boot.files["POST"] if "~" in name) + boot.broken["POST"],
        registered_again="registered" in boot.events,
    )
    problems = []
    lost = raw in LOST_KINDS
    if raw not in NEW_KINDS + ("old",) and not lost:
        problems.append("after the cut: " + raw)
    expected = dict.fromkeys(NEW_KINDS + LOST_KINDS, "new")
    expected["old"] = "old"
    if after != expected.get(raw, "?"):
        problems.append("after the restart: " + after)
    if raw in NEW_KINDS:
        found = boot.files["PRE"].get(TMP if raw == "new-tmp" else STATE)
        if boot.files["POST"].get(STATE) != found:
            problems.append("the restarted device did not keep the new state it found")
    if STAGED in boot.files["POST"]:
        problems.append("a staged PEM is left after the restart")
    if INCOMING in boot.files["POST"]:
        problems.append("a half-streamed PEM is left after the restart")
    if lost:
        if "registered" not in boot.events:
            problems.append("state lost, but the device did not register again")
    else:
        if "using_cached_assignment" not in boot.events:
            problems.append("the restarted device did not use its stored state")
        for bad in ("stored_state_unusable", "dps_connected", "registered", "csr_created", "reprovisioning", "failed"):
            if bad in boot.events:
                problems.append("the restarted device logged " + bad)
    if boot.status != 0 or not record["telemetry"] or "gateway_verified" not in boot.events:
        problems.append("no acknowledged telemetry after the restart (status %s)" % boot.status)
    if problems and fs == "fat" and boot.broken["PRE"] and not raw.startswith("torn"):
        # The cut damaged a FAT directory entry itself (listed, but the file system cannot open it): nothing the
        # firmware writes can repair that. It must still end in a classified error, never a crash or a torn state,
        # or (when the damaged file could be dropped) in a new registration that stored a complete new state.
        record["volume_damaged"] = boot.broken["PRE"]
        recovered = "registered" in boot.events and after == "new" and record["telemetry"] and boot.status == 0
        if ("failed" in boot.events or recovered) and "PC-EXCEPTION" not in boot.output:
            problems = []
    if problems:
        record["failure"] = "; ".join(problems)
        record["output"] = cut_output + "\n--- restart ---\n" + boot.output


# --- the set-up and the runs both tests share ------------------------------------------------------------------------


def _issued_records(emu) -> list[dict]:
    """What the emulator's issuance policy recorded for the issuance device (one line per certificate)."""
    path = emu.state_dir / "issued-certificates.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [r for r in map(json.loads, filter(None, lines)) if r["registration_id"] == ISSUANCE_ID]


def _bundles(tmp_path: Path) -> tuple[Path, Path]:
    """Trust bundle A (1 decoy root) and B (2 others), as files for the enrollment document."""
    bundle_a, bundle_b = tmp_path / "bundle-a.pem", tmp_path / "bundle-b.pem"
    pki.write_bundle(bundle_a, pki.make_decoy_roots(1, "power-cut A"))
    pki.write_bundle(bundle_b, pki.make_decoy_roots(2, "power-cut B"))
    return bundle_a, bundle_b


def _device_image(tmp_path: Path, emu, provisioning: dict, fs: str) -> Path:
    """The device image (firmware .mpy, umqtt, both provisioning files, CA file) in a fresh file-system image."""
    src = tmp_path / "image-src"
    stage_device_root(
        src,
        provisioning,
        use_mpy=True,
        build_dir=tmp_path / "mpy",
        ca_files={"certs/dps-root.pem": Path(emu.info["pki"]["dps_root"])},
    )
    (src / REPROVISION_FILE).write_text(json.dumps(dict(provisioning, force_reprovision=True), indent=2))
    image = tmp_path / "old-state.img"
    made = subprocess.run(
        [micropython_binary(), str(BOOT), "mkimage", str(image), str(src), str(IMAGE_BLOCKS[fs]), fs],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    return image


def _store_program_operations(measured: Boot) -> list[tuple[int, int]]:
    """(bytes before, length) of every program operation from the DPS answer to `trust_bundle_stored`."""
    ops, inside = [], None
    for line in measured.lines:
        event = parse_device_line(line)
        if event and event[1] == "dps_connected":  # the DPS answer's certificates stream to flash from here
            inside = True
        elif event and event[1] == "trust_bundle_stored":
            inside = False
        elif line.startswith("PC-W "):
            start, length = map(int, line.split()[1:3])
            assert inside is not None, "flash written before the registration: " + line
            if inside:
                ops.append((start, length))
    assert ops, measured.output
    return ops


def _cut_all(snapshot: Path, points: list[int], known: Expected, fs: str, tmp_path: Path):
    """Cut, kill, power on again at each point; two workers, each with its own copy of the flash. Returns the
    records by cut point and the images of cuts that left the new state with its PEM staged."""
    results: dict[int, dict] = {}
    staged_images: list[tuple[int, Path]] = []

    def worker(index: int, mine: list[int]) -> None:
        image = tmp_path / f"worker-{index}.img"
        for cut in mine:
            shutil.copy2(snapshot, image)
            record = results[cut] = {"cut": cut}
            cut_output, programmed = power_on_and_cut(image, cut, REPROVISION_FILE, fs)
            names = [p[1] for p in map(parse_device_line, cut_output.splitlines()) if p]
            if programmed != cut:
                record.update(failure="no power cut at byte %d" % cut, output=cut_output)
            elif "dps_connected" not in names or "trust_bundle_stored" in names:
                record.update(failure="cut outside Store.save", output=cut_output)
            else:
                kept = tmp_path / f"after-cut-{cut}.img"
                _restart_and_check(image, known, record, cut_output, fs, kept)
                if record.get("raw") == "new-staged":
                    staged_images.append((cut, kept))
                else:
                    kept.unlink()

    threads = [threading.Thread(target=worker, args=(i, points[i::WORKERS])) for i in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # The last flash of each worker, read with the virtual board's own image tool (littlefs) as a second opinion.
    for index in range(WORKERS):
        image = tmp_path / f"worker-{index}.img"
        if results[points[index::WORKERS][-1]].get("volume_damaged"):
            continue  # FAT left an entry it cannot open: there is no file to read
        state = read_file(image, f"azprov_state/{STATE}", fs)
        pem = _sha(read_file(image, f"azprov_state/{PEM}", fs))
        old = _sha(state) == known.state_old and pem == known.pem_a
        new = known.is_new(state) and pem == known.pem_b
        assert old or new, f"worker {index}: the last flash holds neither state"
    return results, staged_images


def _cut_roll_forward(staged_images: list[tuple[int, Path]], known: Expected, fs: str, tmp_path: Path, wanted: int):
    """Power cuts during the roll-forward itself: the first boot after a cut that left the new state.json with
    the PEM still staged renames it into place; cut that boot at `wanted` points of what it programs, then boot once
    more."""
    records: list[dict] = []
    if not staged_images:
        return records
    staged_cut, staged = min(staged_images)
    probe = tmp_path / "roll-forward-probe.img"
    shutil.copy2(staged, probe)
    roll_bytes = int(power_on(probe, fs=fs).end.split("programmed=")[1])
    assert roll_bytes > 0
    points = sorted(set(range(0, roll_bytes, max(1, roll_bytes // wanted))) | {roll_bytes - 1})
    image = tmp_path / "roll-forward.img"
    for cut in points:
        shutil.copy2(staged, image)
        record = {"cut": cut, "after_commit_cut": staged_cut}
        records.append(record)
        cut_output, programmed = power_on_and_cut(image, cut, "provisioning.json", fs)
        if programmed != cut:
            record.update(failure="no power cut at byte %d of the roll-forward" % cut, output=cut_output)
            continue
        _restart_and_check(image, known, record, cut_output, fs, tmp_path / "roll-forward-kept.img")
        back = record.get("raw") not in NEW_KINDS + LOST_KINDS
        if back and "failure" not in record and not record.get("volume_damaged"):
            record["failure"] = "the roll-forward went back to the old state"
    return records


def _report_and_check(name: str, fs: str, started: float, ops, lo, hi, records, roll_records, telemetry, extra):
    """Writes build/reliability/<name>[_fat][_sample].json and asserts what every power-cut run must show."""
    failures = [r for r in records + roll_records if "failure" in r]
    counts = dict.fromkeys(NEW_KINDS + LOST_KINDS + ("old",), 0)
    for record in records:
        if record.get("raw") in counts:
            counts[record["raw"]] += 1
    damaged = sum(1 for r in records + roll_records if r.get("volume_damaged") and not r.get("telemetry"))
    recovered = sum(1 for r in records + roll_records if r.get("volume_damaged") and r.get("telemetry"))
    summary = {
        "kill_points": len(records) + len(roll_records),
        "commit_kill_points": len(records),
        "store_write_range_bytes": [lo, hi],
        "store_program_operations": len(ops),
        "old_state": counts["old"],
        "new_state": counts["new"] + counts["new-staged"] + counts["new-tmp"] + counts["new-twin"],
        "new_state_rolled_forward_at_boot": counts["new-staged"],
        "new_state_json_renamed_at_boot": counts["new-tmp"],
        "new_state_staged_pem_on_the_pems_clusters": counts["new-twin"],
        "state_lost_registered_again": counts["lost"] + counts["pem-lost"],
        "state_json_lost": counts["lost"],
        "pem_lost": counts["pem-lost"],
        "volume_damaged_classified_error": damaged,
        "volume_damaged_registered_again": recovered,
        "restarts_leaving_8_3_orphans": sum(1 for r in records + roll_records if r.get("orphans")),
        "roll_forward_kill_points": len(roll_records),
        "roll_forward_outcomes": sorted({r.get("raw") or "failure" for r in roll_records}),
        "leftover_state_json_tmp_after_restart": sum(1 for r in records if r.get("leftover_tmp") is not None),
        "leftover_state_json_tmp_sizes": sorted(
            {r["leftover_tmp"] for r in records if r.get("leftover_tmp") is not None}
        ),
        "restarts_with_acknowledged_telemetry": sum(1 for r in records + roll_records if r.get("telemetry")),
        "gateway_telemetry_records": len(telemetry),
        **extra,
        "failures": len(failures),
        "file_system": fs,
        "image_blocks": IMAGE_BLOCKS[fs],
        "workers": WORKERS,
        "sample": not FULL_RUNS,
        "duration_s": round(time.monotonic() - started, 1),
        "failure_details": [[r["cut"], r["failure"]] for r in failures][:50],
        "points": [[r["cut"], r.get("raw") or r.get("failure")] for r in records],
        "roll_forward_points": [[r["cut"], r.get("raw") or r.get("failure")] for r in roll_records],
    }
    report = REPO / "build" / "reliability" / f"{name}{'_fat' if fs == 'fat' else ''}{_SAMPLE}.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(summary, indent=1) + "\n")

    assert not failures, "%d of %d cuts failed; first: cut at byte %d: %s\n%s" % (
        len(failures),
        len(records) + len(roll_records),
        failures[0]["cut"],
        failures[0]["failure"],
        failures[0].get("output", "")[-4000:],
    )
    assert counts["old"] and counts["new"] + counts["new-staged"], counts  # the cuts straddle the commit point
    assert roll_records, "no cut left the new state with its PEM staged: the roll-forward was not exercised"
    # First boot + measuring boot + roll-forward probe + one message per restart, as the gateway recorded them.
    # FAT volumes the cut damaged end in a classified error, without telemetry (or registered again, with it).
    assert len(telemetry) == 3 + len(records) + len(roll_records) - damaged
    return summary


# --- the tests -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fs", FILE_SYSTEMS)
def test_power_cut_during_trust_bundle_commit(emulator, tmp_path, fs):
    started = time.monotonic()
    key = new_key()
    bundle_a, bundle_b = _bundles(tmp_path)
    doc = enrollment_doc(
        [individual("pc-dev", key, trust_bundle="bundle-a")],
        bundle=("pki:trust-root",),
        **{"bundle-a": (str(bundle_a), "pki:trust-root"), "bundle-b": (str(bundle_b), "pki:trust-root")},
    )
    emu = emulator(doc, "--fault", "retry_after=0")
    trust_root = Path(emu.info["pki"]["trust_root"])
    pem_a = _sha(_bundle_pem(bundle_a, trust_root).encode())
    pem_b = _sha(_bundle_pem(bundle_b, trust_root).encode())
    snapshot = _device_image(tmp_path, emu, provisioning_for(emu, "pc-dev", key), fs)

    # 1. Old state: provisioned with bundle A.
    first = power_on(snapshot, fs=fs)
    assert first.status == 0 and "telemetry_acknowledged" in first.events, first.output
    assert first.files["POST"].get(PEM) == pem_a, first.output
    state_old = first.files["POST"][STATE]
    old_raw = read_file(snapshot, f"azprov_state/{STATE}", fs)
    assert _sha(old_raw) == state_old
    old_state = json.loads(old_raw)
    etag_a = first.event("trust_bundle_stored")["etag"]

    # 2. Bundle B; one uncut re-registration measures the bytes Store.save programs.
    emu.update_enrollments(dict(doc, individual=[individual("pc-dev", key, trust_bundle="bundle-b")]))
    measure_image = tmp_path / "measure.img"
    shutil.copy2(snapshot, measure_image)
    measured = power_on(measure_image, provisioning=REPROVISION_FILE, trace=True, fs=fs)
    assert measured.status == 0 and "telemetry_acknowledged" in measured.events, measured.output
    assert measured.event("trust_bundle_stored")["etag"] != etag_a
    assert measured.event("trust_bundle_stored")["written"] == "True"
    assert measured.files["POST"].get(PEM) == pem_b, measured.output
    state_new = measured.files["POST"][STATE]
    assert state_new != state_old
    new_raw = read_file(measure_image, f"azprov_state/{STATE}", fs)
    assert _sha(new_raw) == state_new
    new_state = json.loads(new_raw)
    assert new_state["trust_bundle"]["pem_sha256"] == pem_b
    assert old_state["trust_bundle"]["pem_sha256"] == pem_a
    assert new_state["assignment"] == old_state["assignment"]
    known = Expected(pem_a, pem_b, state_old, state_new)

    ops = _store_program_operations(measured)
    lo, hi = ops[0][0], ops[-1][0] + ops[-1][1]
    points = _cut_points(ops, lo, hi, GRID_POINTS, BUNDLE_TAIL_OPS)
    assert len(points) >= MIN_KILL_POINTS

    # 3. Cut, kill, power on again. 4. The roll-forward, cut too.
    results, staged_images = _cut_all(snapshot, points, known, fs, tmp_path)
    roll_records = _cut_roll_forward(staged_images, known, fs, tmp_path, ROLL_FORWARD_POINTS)

    telemetry = [r for r in emu.telemetry() if r["device_id"] == "pc-dev"]
    records = [results[p] for p in points]
    _report_and_check("power_cut", fs, started, ops, lo, hi, records, roll_records, telemetry, {})


# --- an issued identity (certificate_issuance) -----------------------------------------------------------------------


def _issued_state_problem(data: bytes, new: dict, old: dict, ca: x509.Certificate) -> str | None:
    """None when `data` is a complete new state.json of the issuance device: the new assignment and bundle B's
    metadata (as the measuring boot stored them) with an identity of its own, whose key is its leaf certificate's
    key and whose leaf the policy CA issued for this device; else what is wrong (never any key material)."""
    try:
        state = json.loads(data)
    except ValueError:
        return "state.json is not JSON"
    if not isinstance(state, dict):
        return "state.json is not an object"
    if {k: v for k, v in state.items() if k != "identity"} != {k: v for k, v in new.items() if k != "identity"}:
        return "an assignment or trust bundle other than the new one"
    identity = state.get("identity")
    if not isinstance(identity, dict) or not isinstance(identity.get("chain"), list) or not identity["chain"]:
        return "no issued identity"
    if identity == old["identity"]:
        return "the old identity with the new assignment"
    if identity.get("key") == old["identity"]["key"] or identity["chain"][0] == old["identity"]["chain"][0]:
        return "the old key or the old certificate in a new identity"
    try:
        private = serialization.load_der_private_key(base64.b64decode(identity["key"], validate=True), None)
        leaf = x509.load_der_x509_certificate(base64.b64decode(identity["chain"][0], validate=True))
    except (ValueError, TypeError):
        return "the identity's key or certificate cannot be read"
    if private.public_key().public_numbers() != leaf.public_key().public_numbers():
        return "the identity's key is not its certificate's key"
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "the identity's certificate was not issued by the policy CA"
    cn = leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if [a.value for a in cn] != [new["assignment"]["registration_id"]]:
        return "the identity's certificate is for another device"
    if identity["chain"][1:] != new["identity"]["chain"][1:]:
        return "the identity's chain has other CA certificates"
    if (identity.get("not_before"), identity.get("not_after")) != (
        int(leaf.not_valid_before_utc.timestamp()),
        int(leaf.not_valid_after_utc.timestamp()),
    ):
        return "the identity's validity is not its certificate's"
    return None


@pytest.mark.parametrize("fs", FILE_SYSTEMS)
def test_power_cut_during_issued_identity_commit(emulator, tmp_path, fs):
    """The same cuts for a device whose certificate DPS issues (certificate_issuance): state.json holds the issued
    identity (key and chain) with the assignment and the bundle metadata. Old state: identity A, bundle A, payload A;
    the re-registration makes a new key, gets chain B, bundle B and payload B. Every registration makes a new key, so
    a new state is recognised by its content: assignment and bundle metadata as the measuring boot stored them and an
    identity whose key is its leaf's key, issued by the policy CA, not A's. The restarted device must boot from what
    is stored (no DPS connection, no CSR), authenticate at the gateway with the stored certificate (no password: the
    emulator's record) and get its telemetry acknowledged. `make test` cuts the commit's last COMMIT_OPS program
    operations (the end of state.json.tmp and the renames) at their boundaries plus a grid over the whole write;
    `make reliability` every operation and the full grid."""
    started = time.monotonic()
    policy_ca = ensure_issuance_ca(tmp_path / "issuance-ca")
    ca = x509.load_pem_x509_certificate(policy_ca.certificate.read_bytes())
    key = new_key()
    bundle_a, bundle_b = _bundles(tmp_path)

    def enrollment(bundle: str, payload: dict) -> dict:
        entry = individual(ISSUANCE_ID, key, trust_bundle=bundle, payload=payload)
        entry["certificate_issuance"] = {"policy": "lab"}
        doc = enrollment_doc(
            [entry],
            bundle=("pki:trust-root",),
            **{"bundle-a": (str(bundle_a), "pki:trust-root"), "bundle-b": (str(bundle_b), "pki:trust-root")},
        )
        doc["issuance_policies"] = {"lab": policy_ca.policy(validity_days=30)}
        return doc

    emu = emulator(enrollment("bundle-a", {"config": "A"}), "--fault", "retry_after=0", "--record-credentials")
    trust_root = Path(emu.info["pki"]["trust_root"])
    pem_a = _sha(_bundle_pem(bundle_a, trust_root).encode())
    pem_b = _sha(_bundle_pem(bundle_b, trust_root).encode())
    snapshot = _device_image(tmp_path, emu, provisioning_for(emu, ISSUANCE_ID, key, certificate_issuance=True), fs)

    # 1. Old state: identity A, bundle A.
    first = power_on(snapshot, fs=fs)
    assert first.status == 0 and "telemetry_acknowledged" in first.events, first.output
    assert first.event("certificate_issued") and first.files["POST"].get(PEM) == pem_a, first.output
    # state.json holds the private key: the assertions below never have it (or a call on it) in their expression,
    # whose values pytest would show.
    old_raw = read_file(snapshot, f"azprov_state/{STATE}", fs)
    old_sha = _sha(old_raw)
    assert old_sha == first.files["POST"][STATE]
    old_state = json.loads(old_raw)
    has_identity = isinstance(old_state.get("identity"), dict)
    assert has_identity, "state.json holds no issued identity"
    assert old_state["assignment"]["payload"] == {"config": "A"}
    assert old_state["trust_bundle"]["pem_sha256"] == pem_a

    # 2. Bundle B and payload B; one uncut re-registration (a new key, chain B) measures what Store.save programs.
    emu.update_enrollments(enrollment("bundle-b", {"config": "B"}))
    measure_image = tmp_path / "measure.img"
    shutil.copy2(snapshot, measure_image)
    measured = power_on(measure_image, provisioning=REPROVISION_FILE, trace=True, fs=fs)
    assert measured.status == 0 and "telemetry_acknowledged" in measured.events, measured.output
    assert measured.event("csr_created") and measured.event("certificate_issued"), measured.output
    assert measured.event("trust_bundle_stored")["written"] == "True"
    assert measured.files["POST"].get(PEM) == pem_b, measured.output
    new_raw = read_file(measure_image, f"azprov_state/{STATE}", fs)
    new_sha = _sha(new_raw)
    assert new_sha == measured.files["POST"][STATE]
    new_state = json.loads(new_raw)
    assert new_state["assignment"]["payload"] == {"config": "B"}
    assert new_state["trust_bundle"]["pem_sha256"] == pem_b

    def problem(data: bytes) -> str | None:
        return _issued_state_problem(data, new_state, old_state, ca)

    # The check knows a new state, and a mix of old and new for what it is.
    why_old, why_new = problem(old_raw), problem(new_raw)
    assert why_old is not None and why_new is None, (why_old, why_new)
    mixes = {
        "old identity, new assignment and bundle": dict(new_state, identity=old_state["identity"]),
        "new identity, old assignment and bundle": dict(old_state, identity=new_state["identity"]),
        "old key, new chain": dict(new_state, identity=dict(new_state["identity"], key=old_state["identity"]["key"])),
        "new key, old chain": dict(new_state, identity=dict(old_state["identity"], key=new_state["identity"]["key"])),
        "no identity": {k: v for k, v in new_state.items() if k != "identity"},
    }
    for name, mix in mixes.items():
        why = problem(json.dumps(mix).encode())
        assert why is not None, name
    why = problem(new_raw[: len(new_raw) // 2])
    assert why is not None, "a truncated state.json"
    known = Expected(pem_a, pem_b, old_sha, new_sha, problem)

    ops = _store_program_operations(measured)
    lo, hi = ops[0][0], ops[-1][0] + ops[-1][1]
    points = _cut_points(ops if FULL_RUNS else ops[-COMMIT_OPS:], lo, hi, ISSUANCE_GRID_POINTS)
    assert len(points) >= ISSUANCE_MIN_KILL_POINTS
    issued_before = len(_issued_records(emu))

    # 3. Cut, kill, power on again. 4. The roll-forward, cut too.
    results, staged_images = _cut_all(snapshot, points, known, fs, tmp_path)
    roll_records = _cut_roll_forward(staged_images, known, fs, tmp_path, ISSUANCE_ROLL_FORWARD_POINTS)

    records = [results[p] for p in points]
    registered_again = sum(1 for r in records + roll_records if r.get("registered_again"))
    issued = len(_issued_records(emu)) - issued_before
    gateway = [r for r in emu.credentials_received() if r["endpoint"] == "gateway"]
    issued_logins = (
        (emu.state_dir / "emulator.log").read_text().count(f"{ISSUANCE_ID} authenticated with an issued certificate")
    )
    telemetry = [r for r in emu.telemetry() if r["device_id"] == ISSUANCE_ID]
    summary = _report_and_check(
        "power_cut_issuance",
        fs,
        started,
        ops,
        lo,
        hi,
        records,
        roll_records,
        telemetry,
        {
            "new_states_checked_key_matches_leaf": known.checked,
            "states_refused_by_content": dict(Counter(known.rejected.values())),
            "certificates_issued_during_cuts": issued,
            "gateway_connections": len(gateway),
            "gateway_connections_with_issued_certificate": issued_logins,
        },
    )
    # Each cut boot registered once (a new key and certificate); a restart only when FAT lost its state.
    assert issued == len(points) + registered_again, summary
    # Every gateway connection authenticated with an issued certificate, never a SAS token.
    with_password = sum(1 for r in gateway if r["password"] is not None)  # never shown: they are live tokens
    assert gateway and not with_password, "%d of %d gateway connections sent a password" % (with_password, len(gateway))
    assert issued_logins == len(gateway), summary
