"""Field behaviour on the Unix port against the emulator: cached assignments, re-registration, token renewal,
keepalive, reconnects with backoff, unset clocks and secrets that never leak."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from host_tools.board.unix_port import device_command, device_env
from host_tools.provisioning.device_keys import derive_device_key
from tests.helpers import ID_SCOPE, assert_no_secret, enrollment_doc, individual, new_key, parse_result
from tests.secrets_scan import Signer, private_key_lines, scan

FAST = ("--fault", "retry_after=0")


@pytest.fixture
def provisioned(emulator, device):
    """A device that registered once; returns (emulator, device, key, doc)."""
    key = new_key()
    doc = enrollment_doc([individual("field-dev", key)])
    emu = emulator(doc, *FAST)
    dev = device(emu, "field-dev", key)
    first = dev.run()
    assert first.status == 0, first.output
    assert first.event("registered")
    return emu, dev, key, doc


def _registrations(emu) -> int:
    return len([r for r in emu.registrations() if r.get("status") == "assigned"])


def test_cached_boot_goes_straight_to_gateway(provisioned):
    emu, dev, _, _ = provisioned
    before = {p.name: p.read_bytes() for p in dev.storage.iterdir()}

    result = dev.run()

    assert result.status == 0, result.output
    assert result.event("using_cached_assignment")["device_id"] == "field-dev"
    assert not result.event("registered") and not result.event("dps_connected")
    done = result.event("done")
    assert done["dps_connections"] == "0" and done["flash_writes"] == "0"
    assert _registrations(emu) == 1
    assert {p.name: p.read_bytes() for p in dev.storage.iterdir()} == before
    assert len([r for r in emu.telemetry() if r["device_id"] == "field-dev"]) == 2


def test_reregisters_when_gateway_refuses_credentials(provisioned):
    emu, dev, _, doc = provisioned
    # File-level faults: the emulator applies them to devices it already assigned in this run.
    emu.update_enrollments(dict(doc, faults={"gateway_refuse": {"code": 5, "count": 1}}))
    result = dev.run()
    assert result.status == 0, result.output
    assert result.event("reprovisioning")["reason"] == "authentication"
    assert result.event("registered") and result.event("telemetry_acknowledged")
    assert _registrations(emu) == 2


def test_reregisters_after_consecutive_gateway_failures(provisioned):
    emu, dev, _, doc = provisioned
    emu.update_enrollments(dict(doc, faults={"gateway_drop_after": {"at": "connack", "count": 2}}))
    dev.write_provisioning(max_gateway_failures=2)
    result = dev.run()
    assert result.status == 0, result.output
    retries = result.gateway_retries()
    assert [r["action"] for r in retries] == ["retry", "reregister"] and retries[0]["reason"] == "network"
    assert result.event("reprovisioning")["failures"] == "2"
    assert result.event("telemetry_acknowledged")


@pytest.mark.parametrize("damage", ["corrupt_state", "missing_pem", "truncated_pem"])
def test_reregisters_when_stored_files_are_damaged(provisioned, damage):
    emu, dev, _, _ = provisioned
    if damage == "corrupt_state":
        (dev.storage / "state.json").write_text('{"version": 1, "assign')
    elif damage == "missing_pem":
        (dev.storage / "trust_bundle.pem").unlink()
    else:
        pem = dev.storage / "trust_bundle.pem"
        pem.write_text(pem.read_text()[:200])
    result = dev.run()
    assert result.status == 0, result.output
    assert result.event("stored_state_unusable")
    assert result.event("registered") and result.event("telemetry_acknowledged")
    assert _registrations(emu) == 2


def test_force_reprovision_flag(provisioned):
    emu, dev, _, _ = provisioned
    dev.write_provisioning(force_reprovision=True)
    result = dev.run()
    assert result.event("reprovision_requested") is not None and result.event("registered")
    # Same assignment and bundle: nothing to write.
    assert result.event("trust_bundle_stored")["written"] == "False"
    assert result.event("done")["flash_writes"] == "0"


def test_token_renewed_across_expiries(emulator, device):
    key = new_key()
    emu = emulator(enrollment_doc([individual("long-lived", key)]), *FAST)
    # Renewal at 80 % of 6 s leaves a 2 s margin, enough on a loaded CI machine.
    dev = device(emu, "long-lived", key, sas_ttl_s=6, telemetry_count=13, telemetry_interval_s=1)

    result = dev.run(timeout=120)

    assert result.status == 0, result.output
    done = result.event("done")
    assert done["messages"] == "13"
    assert int(done["renewals"]) >= 2
    assert not result.gateway_retries()
    sequences = [json.loads(r["payload"])["sequence"] for r in emu.telemetry() if r["device_id"] == "long-lived"]
    assert sequences == list(range(13))


def test_keepalive_pings_keep_an_idle_connection(emulator, device):
    key = new_key()
    emu = emulator(enrollment_doc([individual("idle-dev", key)]), *FAST)
    dev = device(emu, "idle-dev", key, mqtt_keepalive_s=2, telemetry_count=2, telemetry_interval_s=5, log_level="debug")
    result = dev.run()
    assert result.status == 0, result.output
    assert len(result.all("gateway_ping")) >= 3
    assert result.event("done")["gateway_connections"] == "1"
    # At debug level every line reports the free heap, so each step's cost can be read off the log.
    assert all("heap_free" in fields for _, _, fields in result.events)
    assert result.event("registered")["heap_free"].isdigit()


def test_dropped_gateway_connection_reconnects_with_backoff(emulator, device):
    key = new_key()
    entry = dict(individual("flaky-gw", key), faults={"gateway_drop_after": {"at": "message", "messages": 2}})
    emu = emulator(enrollment_doc([entry]), *FAST)
    dev = device(emu, "flaky-gw", key, telemetry_count=3, telemetry_interval_s=0)
    result = dev.run()
    assert result.status == 0, result.output
    retry = (result.gateway_retries() or [None])[0]
    assert retry and retry["reason"] == "network"
    assert result.event("done")["gateway_connections"] == "2"
    sequences = {json.loads(r["payload"])["sequence"] for r in emu.telemetry() if r["device_id"] == "flaky-gw"}
    assert sequences == {0, 1, 2}


@pytest.mark.skipif(not shutil.which("faketime"), reason="faketime is installed by `make test`")
@pytest.mark.runtimes("wheel")  # faketime's LD_PRELOAD library is 64-bit: a 32-bit binary would keep the real clock
def test_unset_clock_refuses_to_sign(emulator, device):
    key = new_key()
    emu = emulator(enrollment_doc([individual("clockless", key)]), *FAST)
    dev = device(emu, "clockless", key)
    # An ESP32 without NTP wakes up a few seconds after 2000-01-01.
    proc = subprocess.run(
        ["faketime", "2000-01-01 00:00:05", *device_command()],
        cwd=dev.root,
        env=device_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    result = parse_result(proc)
    assert result.status == 1
    assert result.error["kind"] == "clock" and "not set" in result.error["message"]
    assert not result.event("dps_connected")
    assert emu.registrations() == []


def test_no_secret_in_any_output_or_file(emulator, device, tmp_path):
    group_key = new_key()
    device_key = derive_device_key(group_key, "secret-dev")
    wrong_key = new_key()
    group = {
        "group_id": "secret-group",
        "group_key": group_key,
        "assigned_hub": "test-hub.azure-devices.net",
        "trust_bundle": "bundle",
        "faults": {"throttle_register": {"count": 1, "retry_after": 0}, "drop_after": "202"},
    }
    # --record-credentials: the emulator hands over every token it really received, whatever the firmware meant.
    emu = emulator(enrollment_doc(groups=[group]), *FAST, "-v", "--record-credentials")
    started = int(time.time())
    outputs = {}
    dev = device(
        emu, "secret-dev", device_key, log_level="debug", sas_ttl_s=60, telemetry_count=3, telemetry_interval_s=0
    )
    ok = dev.run()
    assert ok.status == 0, ok.output
    outputs["device output (run 1)"] = ok.output
    dev.write_provisioning(symmetric_key=wrong_key, force_reprovision=True)
    refused = dev.run()
    assert refused.status == 1 and refused.error["kind"] == "authentication"
    outputs["device output (run 2, wrong key)"] = refused.output
    ended = int(time.time())
    received = emu.credentials_received()
    # Two DPS connections (one dropped after 202) and a gateway connection, then the wrong key's DPS connection.
    assert len([r for r in received if r["endpoint"] == "dps"]) >= 3, received
    assert [r for r in received if r["endpoint"] == "gateway"], received

    texts = dict(outputs)
    texts["emulator.log"] = (emu.state_dir / "emulator.log").read_text()
    # Every file the device or the emulator wrote: all but the firmware's own code, the provisioning file, the
    # emulator's enrollment file (the service side's key store), its PKI private keys and the test-mode record of
    # the credentials it received (the scan's input).
    written = [
        p
        for p in dev.root.rglob("*")
        if p.is_file() and p.parts[len(dev.root.parts)] not in ("azprov", "lib", "main.py", "provisioning.json")
    ]
    written += [
        p
        for p in emu.state_dir.rglob("*")
        if p.is_file()
        and p.name not in ("enrollments.json", "credentials-received.jsonl")
        and not p.name.endswith("-key.pem")
    ]
    assert any(p.name == "state.json" for p in written) and any(p.name == "telemetry.jsonl" for p in written)
    texts.update({str(p): p.read_text(errors="replace") for p in written})

    resources = [f"{ID_SCOPE}/registrations/secret-dev", "test-hub.azure-devices.net/devices/secret-dev"]
    signers = [Signer(device_key, resources), Signer(wrong_key, resources), Signer(group_key, resources)]
    # Any expiry from a day before the run to a day after the last token could have expired.
    expiries = range(started - 86400, ended + 60 + 86400)
    findings = scan(
        texts,
        [group_key, device_key, wrong_key],
        received,
        signers,
        expiries,
        private_key_lines(emu.state_dir / "pki"),
    )
    assert not findings, "secrets found: " + "; ".join(map(str, findings))
    assert_no_secret("\n".join(texts.values()), group_key, device_key, wrong_key)
