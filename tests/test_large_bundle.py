"""Large trust bundles (issue 11): DPS answers with the whole bundle, and a device must take whatever its enrollment
links. Ten RSA-4096 roots (about 20 KB of JSON) are streamed from the MQTT payload into flash as they are parsed,
then used to verify the gateway; a bundle the free heap cannot take is a classified error that changes nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from host_tools.provisioning import pki
from tests.helpers import enrollment_doc, individual, new_key

ROOTS = 10
MANY_ROOTS = 20


@pytest.fixture(scope="module")
def rsa_decoys(tmp_path_factory) -> Path:
    """ROOTS - 1 unrelated RSA-4096 roots (the trust root is added last: only it signs the gateway)."""
    path = tmp_path_factory.mktemp("bundle") / "decoys.pem"
    return pki.write_bundle(path, pki.make_decoy_roots(ROOTS - 1, label="public root", kind="rsa4096"))


@pytest.fixture(scope="module")
def p256_decoys(tmp_path_factory) -> Path:
    """MANY_ROOTS unrelated P-256 roots: with the RSA ones, a bundle whose metadata alone outgrows the heap the flow
    needs before the DPS answer."""
    path = tmp_path_factory.mktemp("bundle") / "p256-decoys.pem"
    return pki.write_bundle(path, pki.make_decoy_roots(MANY_ROOTS, label="public p256 root"))


@pytest.fixture(scope="module")
def azure_pki(tmp_path_factory) -> Path:
    """One Azure-shaped emulator PKI (RSA-4096 roots) for the module: each test's emulator starts from a copy."""
    folder = tmp_path_factory.mktemp("azure") / "pki"
    pki.ensure_emulator_pki(folder, profile="azure")
    return folder


def _azure_emulator(emulator, tmp_path, doc, azure_pki: Path):
    shutil.copytree(azure_pki, tmp_path / "emulator" / "pki")  # reused by the emulator as it is (same profile)
    return emulator(doc)


def _pem_count(path: Path) -> int:
    return path.read_text().count("-----BEGIN CERTIFICATE-----")


# The heap searches step by 1 KB. A run counts only for what the device's memory allowed, read from the device's own
# report: the DPS answer "stored", the answer refused as too big for the free heap (out of memory while it streamed,
# "does not fit", or once it was read, committing it: the flow got as far as the answer), or "short" (out of memory
# earlier). A run that ended any other way (a timeout on a loaded
# machine, a refused connection) says nothing about memory: it is run again, and after RETRIES such runs the test
# fails naming it, instead of taking it for a heap that is too small (what made the old search flaky).
HEAP_STEP = 1024
RETRIES = 3
STORED, TOO_BIG, SHORT = "stored", "does not fit", "short"


def _outcome(dev, heap: int, flash: dict[str, bytes], refusals=None) -> str:
    """What the device's memory allowed at `heap`. A refusal's run and the files it left go into `refusals` (heap ->
    (result, files)): the test checks that very run, as a second run at the same heap may go the other way (each DPS
    answer carries a new operation id and etag, and so lays out the heap a little differently)."""
    for _ in range(RETRIES):
        _restore(dev.storage, flash)  # every run starts from the same stored files
        result = dev.run(heapsize=heap)
        if result.event("trust_bundle_stored") is not None:
            return STORED
        error = result.error or {}
        if error.get("kind") == "out_of_memory" and (
            "-byte message does not fit" in error.get("message", "") or result.event("registered") is not None
        ):
            if refusals is not None:
                refusals[heap] = (result, {p.name: p.read_bytes() for p in dev.storage.iterdir()})
            return TOO_BIG
        if error.get("kind") == "out_of_memory" or "MemoryError" in result.output:
            return SHORT
    raise AssertionError(f"at a heap of {heap} B the device failed for a reason other than memory:\n{result.output}")


def _smallest_heap(
    dev, flash: dict[str, bytes], enough: tuple[str, ...], low: int, high: int = 512 * 1024, seen=None, refusals=None
) -> int:
    """The smallest -X heapsize (a multiple of HEAP_STEP, above `low`) whose run's outcome is in `enough`, by
    bisection; every run starts from the stored files `flash`. `seen` (heap -> outcome) holds every probe's outcome:
    a heap already in it is not run again, and the search starts from the smallest heap in it above `low` whose
    outcome is in `enough` (an earlier search's probe), when that is below `high`."""
    seen = {} if seen is None else seen

    def probe(heap: int) -> str:
        if heap not in seen:
            seen[heap] = _outcome(dev, heap, flash, refusals)
        return seen[heap]

    assert probe(high) in enough
    high = min([high] + [h for h, outcome in seen.items() if low < h and outcome in enough])
    while high - low > HEAP_STEP:
        middle = (low + high) // 2 // HEAP_STEP * HEAP_STEP
        if probe(middle) in enough:
            high = middle
        else:
            low = middle
    return high


def _restore(folder: Path, files: dict[str, bytes]) -> None:
    """Puts a flash folder back as it was (a snapshot of its files), as if the runs since had not happened."""
    for path in folder.iterdir():
        if path.name not in files:
            path.unlink()
    for name, data in files.items():
        (folder / name).write_bytes(data)


def _link_bundle(emu, doc: dict, bundle: str) -> None:
    doc["individual"][0]["trust_bundle"] = bundle
    emu.update_enrollments(doc)


def test_ten_rsa4096_roots_provision_end_to_end(emulator, device, tmp_path, rsa_decoys, azure_pki):
    key = new_key()
    doc = enrollment_doc([individual("big-bundle", key)], bundle=(str(rsa_decoys), "pki:trust-root"))
    emu = _azure_emulator(emulator, tmp_path, doc, azure_pki)
    dev = device(emu, "big-bundle", key, log_level="debug")

    result = dev.run()

    assert result.status == 0, result.output
    assert result.event("trust_bundle_stored")["certificates"] == str(ROOTS)
    assert result.event("gateway_trust_loaded")["certificates"] == str(ROOTS)
    assert result.event("gateway_verified") and result.event("telemetry_acknowledged")
    stored = dev.storage / "trust_bundle.pem"
    assert _pem_count(stored) == ROOTS
    assert stored.read_text().rstrip().endswith(Path(emu.info["pki"]["trust_root"]).read_text().rstrip())
    assert sorted(p.name for p in dev.storage.iterdir()) == ["state.json", "trust_bundle.pem"]
    # The same bundle again (reprovisioned) is compared as it streams in: no flash write for the PEM.
    dev.write_provisioning(force_reprovision=True)
    again = dev.run()
    assert again.status == 0, again.output
    assert again.event("trust_bundle_stored")["written"] == "False"
    assert again.event("done")["flash_writes"] == "0"


# On the wheel (64-bit, the firmware's .mpy code in the heap) the flow before the DPS answer needs about as much heap as
# the 31-root answer itself (measured: reach 202,752 B, fit 203,776 B), which leaves no heap to be refused at, and a
# larger bundle would outgrow the 16 KB state.json the device keeps. The 32-bit frozen build, a board's shape, has
# a 32 KB window between the two.
@pytest.mark.runtimes("unix32-frozen")
def test_bundle_the_heap_cannot_take_is_classified_and_changes_nothing(
    emulator, device, tmp_path, rsa_decoys, p256_decoys, azure_pki
):
    """A heap that holds everything the flow needs up to the DPS answer, but not a 31-root answer (the 10 RSA-4096
    roots, 20 P-256 ones and the trust root: about 55 KB in one MQTT packet), gives a classified out_of_memory error
    naming the message size, and the stored bundle and state stay byte for byte as they were (no partly received
    bundle, staged or incoming file left in flash). The answer streams (its certificates go to flash a PEM line at a
    time): what it needs grows with its certificates' parsed metadata, about 0.6 KB each, so the 10-root answer alone
    now fits wherever the flow before it does (measured: reach and fit both 42 KB on the 32-bit frozen build).

    How the heap is chosen: from the firmware's own measured need, in the test (the firmware changes), never from
    whether whole runs succeed: that search counted a run that timed out on a loaded machine as "too little heap",
    and it measured the whole flow (the default application needs more heap after the DPS answer than the answer
    itself), so it ended at heaps where the answer fits. Two 1 KB-step bisections (the second reuses the first's probes), with the enrollment linking the
    31-root bundle and every run starting from this device's stored one-root state: `reach`, the smallest heap at
    which the device gets as far as the answer (stores it, or refuses it as too big), and `fit`, the smallest at
    which it stores it. Runs that end for a reason other than memory are repeated, never counted (`_outcome`), so
    the verdict does not depend on machine load. The run checked is the probe at the largest heap below `fit` that
    refused the answer as too big, with the files it left: once the answer streams, whether it fits is not monotonic
    in the heap size (a fresh-clone run on the wheel stored it at the middle of [reach, fit)), nor the same from one
    run to the next at one heap (a rerun at a refusing heap stored it). Measured (bundle elements parsed where they
    lie, the DPS context reused for the bundle's TLS check): reach 36 KB, fit 68 KB, heap 67 KB on the 32-bit frozen
    build; below `fit` the answer streams in and the commit of its metadata (state.json) is what runs out. No probed heap refusing it fails the test (with both figures): the answer no longer needs more
    heap than the flow before it, and this test would need a larger bundle."""
    key = new_key()
    doc = enrollment_doc([individual("tight-heap", key, trust_bundle="small")], small=("pki:trust-root",))
    doc["trust_bundles"]["big"] = {"certificates": [str(rsa_decoys), str(p256_decoys), "pki:trust-root"]}
    emu = _azure_emulator(emulator, tmp_path, doc, azure_pki)
    dev = device(emu, "tight-heap", key)
    first = dev.run()
    assert first.status == 0, first.output
    before = {p.name: p.read_bytes() for p in dev.storage.iterdir()}

    # The enrollment now links the 31-root bundle; the device registers again with the bundle it stored.
    _link_bundle(emu, doc, "big")
    dev.write_provisioning(force_reprovision=True)
    seen = {}  # both searches' probes: the second one does not run a heap the first one ran
    refusals = {}  # heap -> (result, files) of each probe that refused the answer
    reach = _smallest_heap(dev, before, (STORED, TOO_BIG), low=8 * 1024, seen=seen, refusals=refusals)
    fit = _smallest_heap(dev, before, (STORED,), low=reach - HEAP_STEP, seen=seen, refusals=refusals)
    _restore(dev.storage, before)  # the measuring runs stored the 31 roots: back to the one-root state
    # The largest heap a probe saw refusing the answer: with the answer streamed, whether it fits is not monotonic in
    # the heap size (fragmentation; on the wheel a run between reach and fit stored it), so a heap that was not
    # probed could go either way.
    refused = [h for h, outcome in seen.items() if outcome == TOO_BIG and h < fit]
    assert refused, f"no probed heap refused the 31-root answer: it fits at {fit} B, the flow reaches it at {reach} B"
    heap = max(refused)
    result, after = refusals[heap]

    assert result.status == 1, (reach, fit, heap, result.output)
    error = result.error
    assert error is not None, result.output
    assert error["kind"] == "out_of_memory", result.output
    if "-byte message does not fit" in error["message"]:  # while it streamed
        assert "bytes of heap free" in error["message"]
        size = int(error["message"].split("a ", 1)[1].split("-byte", 1)[0])
        assert size > 40000  # the whole DPS answer: 31 certificates
    else:  # once it was read, committing it
        assert result.event("registered") is not None and "provision: the heap is too small" in error["message"]
    assert after == before  # nothing stored changed, no staged or incoming file left
