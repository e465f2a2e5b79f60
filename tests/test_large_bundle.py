"""Large trust bundles (issue 11): DPS answers with the whole bundle, and a device must take whatever its enrollment
links. Ten RSA-4096 roots (about 20 KB of JSON) are streamed from the MQTT payload into flash as they are parsed,
then used to verify the gateway; a bundle the free heap cannot take is a classified error that changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from host_tools.provisioning import pki
from tests.helpers import enrollment_doc, individual, new_key

ROOTS = 10


@pytest.fixture(scope="module")
def rsa_decoys(tmp_path_factory) -> Path:
    """ROOTS - 1 unrelated RSA-4096 roots (the trust root is added last: only it signs the gateway)."""
    path = tmp_path_factory.mktemp("bundle") / "decoys.pem"
    return pki.write_bundle(path, pki.make_decoy_roots(ROOTS - 1, label="public root", kind="rsa4096"))


def _azure_emulator(emulator, tmp_path, doc):
    pki.ensure_emulator_pki(tmp_path / "emulator" / "pki", profile="azure")
    return emulator(doc)


def _pem_count(path: Path) -> int:
    return path.read_text().count("-----BEGIN CERTIFICATE-----")


def _smallest_heap(dev, low: int = 8 * 1024, high: int = 512 * 1024, step: int = 2048) -> int:
    """Bisects the smallest -X heapsize (a multiple of `step`) at which the device's run succeeds."""
    assert dev.run(heapsize=high).status == 0
    while high - low > step:
        middle = (low + high) // 2 // step * step
        if dev.run(heapsize=middle).status == 0:
            high = middle
        else:
            low = middle
    return high


def test_ten_rsa4096_roots_provision_end_to_end(emulator, device, tmp_path, rsa_decoys):
    key = new_key()
    doc = enrollment_doc([individual("big-bundle", key)], bundle=(str(rsa_decoys), "pki:trust-root"))
    emu = _azure_emulator(emulator, tmp_path, doc)
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


def test_bundle_the_heap_cannot_take_is_classified_and_changes_nothing(emulator, device, tmp_path, rsa_decoys):
    key = new_key()
    doc = enrollment_doc([individual("tight-heap", key, trust_bundle="small")], small=("pki:trust-root",))
    doc["trust_bundles"]["big"] = {"certificates": [str(rsa_decoys), "pki:trust-root"]}
    emu = _azure_emulator(emulator, tmp_path, doc)
    dev = device(emu, "tight-heap", key)
    first = dev.run()
    assert first.status == 0, first.output
    before = {p.name: p.read_bytes() for p in dev.storage.iterdir()}
    # The smallest heap in which this runtime re-registers with the one-root bundle (each runtime needs another).
    dev.write_provisioning(force_reprovision=True)
    heap = _smallest_heap(dev)

    # The enrollment now links the 10-root bundle; that heap cannot hold the answer.
    doc["individual"][0]["trust_bundle"] = "big"
    Path(emu.info["pki"]["dps_root"]).parent.parent.joinpath("enrollments.json").write_text(json.dumps(doc))
    result = dev.run(heapsize=heap)

    assert result.status == 1, result.output
    error = result.error
    assert error is not None, result.output
    assert error["kind"] == "out_of_memory", result.output
    assert "-byte message does not fit" in error["message"] and "bytes of heap free" in error["message"]
    size = int(error["message"].split("a ", 1)[1].split("-byte", 1)[0])
    assert size > 18000  # the whole DPS answer: 10 RSA-4096 certificates
    after = {p.name: p.read_bytes() for p in dev.storage.iterdir()}
    assert after == before  # nothing stored changed, no staged or incoming file left
