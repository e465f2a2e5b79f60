"""Every DPS outcome the real service can produce, played by the emulator's faults, against the firmware on the
Unix port. Each run ends in success or in a classified error carrying the service's fields, and a rejected answer
never changes what the device had stored."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from host_tools.provisioning import pki
from host_tools.provisioning.device_keys import derive_device_key
from tests.helpers import HUB, assert_no_secret, enrollment_doc, free_port, individual, new_key

FAST = ("--fault", "retry_after=0")


def _run(emulator, device, faults=None, emulator_args=FAST, entry_extra=None, **provisioning):
    key = new_key()
    entry = dict(individual("outcome-dev", key), **(entry_extra or {}))
    if faults:
        entry["faults"] = faults
    emu = emulator(enrollment_doc([entry]), *emulator_args)
    dev = device(emu, "outcome-dev", key, **provisioning)
    return emu, dev, dev.run(), key


def _statuses(result) -> list[int]:
    return [int(f["status"]) for f in result.all("dps_status")]


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


# --- retry-after, polling, throttling --------------------------------------------------------------------------


def _seconds(record: dict) -> float:
    return dt.datetime.fromisoformat(record["time"]).timestamp()


def test_throttled_register_honours_retry_after(emulator, device):
    # The throttled spread comes on top of the service's retry-after, never instead of it: at least 3 s between the
    # 429 and the next request. A 30 s budget keeps the spread (at most half of what is left) under 14 s.
    emu, _, result, _ = _run(
        emulator, device, {"throttle_register": {"count": 1, "retry_after": 3}}, registration_timeout_s=30
    )
    assert result.status == 0, result.output
    assert _statuses(result)[:1] == [429]
    retry = result.event("retry_scheduled")
    assert retry["step"] == "provision" and retry["reason"] == "throttled" and float(retry["in_s"]) >= 3
    # Measured by the emulator: from its 429 answer to the registration it assigned after the retry (the 202 in
    # between asks for no wait).
    records = [r for r in emu.registrations() if r["registration_id"] == "outcome-dev"]
    throttled = [r for r in records if r.get("http_status") == 429]
    assigned = [r for r in records if r.get("status") == "assigned"]
    assert len(throttled) == 1 and len(assigned) == 1, records
    waited = _seconds(assigned[0]) - _seconds(throttled[0])
    assert waited >= 3.0, waited


def test_throttled_poll_and_server_error_on_poll(emulator, device):
    _, _, result, _ = _run(
        emulator,
        device,
        {
            "throttle_poll": {"count": 1, "retry_after": 0},
            "server_error": {"status": 503, "on": "poll", "count": 1, "retry_after": 0},
            "assigning_polls": 1,
        },
        registration_timeout_s=30,  # the throttled spread: at most 15 s
    )
    assert result.status == 0, result.output
    statuses = _statuses(result)
    assert 429 in statuses and 503 in statuses


def test_several_assigning_polls(emulator, device):
    _, _, result, _ = _run(emulator, device, {"assigning_polls": 3})
    assert result.status == 0, result.output
    assert _statuses(result) == [202, 202, 202, 202]  # the register's 202 and three polls still assigning


@pytest.mark.parametrize(
    "faults",
    [
        {"topic_param_order": "retry_first"},
        {"retry_after_case": "upper"},
        {"retry_after_case": "title"},
        {"no_retry_after": True},
    ],
)
def test_topic_forms(emulator, device, faults):
    _, _, result, _ = _run(emulator, device, faults)
    assert result.status == 0, result.output


def test_persistent_server_error_gives_up_classified(emulator, device):
    # Retries continue (backing off) until the registration deadline; then the last answer is the error.
    _, _, result, _ = _run(
        emulator,
        device,
        {"server_error": {"status": 503, "count": "always", "retry_after": 0}},
        registration_timeout_s=8,
    )
    assert result.status == 1
    error = result.error
    assert error["kind"] == "service_unavailable" and error["status"] == "503"
    assert error["error_code"].startswith("503") and error["tracking_id"]
    assert len(result.all("dps_status")) >= 2


def test_no_retry_on_4xx(emulator, device):
    emu, _, result, _ = _run(
        emulator,
        device,
        emulator_args=FAST + ("--fault", "unknown_registration=404"),
        entry_extra={"registration_id": "someone-else"},
    )
    assert result.status == 1
    assert result.error["kind"] == "not_found" and result.error["status"] == "404"
    assert result.error["error_code"].startswith("404") and result.error["tracking_id"]
    assert not result.all("dps_status")
    assert len([r for r in emu.registrations() if r["registration_id"] == "outcome-dev"]) == 1


# --- final outcomes ---------------------------------------------------------------------------------------------


def test_failed_assignment(emulator, device):
    _, _, result, _ = _run(emulator, device, entry_extra={"allocation_fails": True})
    assert result.status == 1
    assert result.error["kind"] == "assignment_failed"
    assert result.error["error_code"] == "400207" and result.error["message"]


def test_disabled_enrollment(emulator, device):
    _, _, result, _ = _run(emulator, device, entry_extra={"disabled": True})
    assert result.status == 1 and result.error["kind"] == "disabled"


def test_unknown_registration_is_authentication_error(emulator, device):
    _, _, result, _ = _run(emulator, device, entry_extra={"registration_id": "not-this-device"})
    assert result.status == 1
    assert result.error["kind"] == "authentication" and result.error["error_code"] == "401002"


def test_wrong_key_401(emulator, device, tmp_path):
    emu = emulator(enrollment_doc([individual("outcome-dev", new_key())]), *FAST)
    wrong = new_key()
    result = device(emu, "outcome-dev", wrong).run()
    assert result.status == 1
    assert result.error["kind"] == "authentication" and result.error["status"] == "401"
    assert_no_secret(result.output, wrong)


def test_wrong_key_refused_at_connack(emulator, device):
    emu = emulator(enrollment_doc([individual("outcome-dev", new_key())]), *FAST, "--fault", "auth_failure=connack")
    result = device(emu, "outcome-dev", new_key()).run()
    assert result.status == 1
    assert result.error["kind"] == "authentication" and "CONNACK" in result.error["message"]


def test_server_unavailable_at_connack_is_retried(emulator, device):
    _, _, result, _ = _run(emulator, device, {"connack_refuse": {"code": 3, "count": 1}})
    assert result.status == 0, result.output
    assert [r for r in result.all("retry_scheduled") if r["step"] == "provision"]


# --- dropped connections --------------------------------------------------------------------------------------


@pytest.mark.parametrize("point", ["connack", "suback", "register", "202", "mid_payload"])
def test_dropped_connection_is_resumed(emulator, device, point):
    _, _, result, _ = _run(emulator, device, {"drop_after": point, "assigning_polls": 1})
    assert result.status == 0, result.output
    assert [r for r in result.all("retry_scheduled") if r["step"] == "provision"]
    assert result.event("telemetry_acknowledged")


# --- malformed answers leave stored state untouched -------------------------------------------------------------


@pytest.mark.parametrize(
    "faults, expected",
    [
        ({"malformed_json": {"count": "always"}}, "JSON"),
        ({"omit_fields": ["assignedHub"]}, "assignedHub"),
        ({"omit_fields": ["trustBundle.etag"]}, "trustBundle"),
    ],
)
def test_malformed_response_keeps_stored_state(emulator, device, faults, expected):
    key = new_key()
    emu = emulator(enrollment_doc([individual("outcome-dev", key)]), *FAST)
    dev = device(emu, "outcome-dev", key)
    assert dev.run().status == 0
    before = _snapshot(dev.storage)

    emu.update_enrollments(enrollment_doc([dict(individual("outcome-dev", key), faults=faults)]))
    dev.write_provisioning(force_reprovision=True)
    result = dev.run()

    assert result.status == 1
    assert result.error["kind"] == "malformed_response"
    assert expected in result.error["message"]
    assert _snapshot(dev.storage) == before


def test_oversized_response_is_refused(emulator, device):
    _, dev, result, _ = _run(emulator, device, entry_extra={"payload": {"blob": "x" * 40000}})
    assert result.status == 1
    # The DPS answer's size limit is the free heap (tests/test_large_bundle.py meets it): with room to read this
    # one, the 40 KB payload is what cannot be stored (state.json's limit), and nothing is written.
    assert result.error["kind"] == "malformed_response" and "cannot be stored" in result.error["message"]
    assert not dev.storage.exists() or not any(dev.storage.iterdir())


# --- trust bundle lifecycle -------------------------------------------------------------------------------------


def test_trust_bundle_rotation_null_and_unchanged(emulator, device, tmp_path):
    key = new_key()
    bundle_file = tmp_path / "bundle.pem"
    first = pki.make_decoy_roots(2)
    pki.write_bundle(bundle_file, first)
    doc = enrollment_doc([individual("rotating", key)], bundle=(str(bundle_file), "pki:trust-root"))
    emu = emulator(doc, *FAST)
    dev = device(emu, "rotating", key, force_reprovision=True)

    one = dev.run()
    assert one.status == 0, one.output
    assert one.event("trust_bundle_stored")["certificates"] == "3"
    etag1 = one.event("trust_bundle_stored")["etag"]

    again = dev.run()
    assert again.status == 0 and again.event("trust_bundle_stored")["etag"] == etag1
    assert again.event("trust_bundle_stored")["written"] == "False"

    # Rotate: one decoy leaves the bundle. The emulator re-reads the certificate file and changes the etag.
    pki.write_bundle(bundle_file, first[:1])
    rotated = dev.run()
    assert rotated.status == 0, rotated.output
    assert rotated.event("trust_bundle_stored")["etag"] != etag1
    assert rotated.event("trust_bundle_stored")["certificates"] == "2"
    stored = (dev.storage / "trust_bundle.pem").read_text()
    assert stored.count("BEGIN CERTIFICATE") == 2
    gone = first[1].cert.public_bytes(serialization.Encoding.PEM).decode().strip()
    assert gone not in stored

    # A null bundle removes what DPS installed earlier.
    emu.update_enrollments(
        dict(doc, individual=[dict(individual("rotating", key), faults={"trust_bundle_null": True})])
    )
    nulled = dev.run()
    assert nulled.event("trust_bundle_absent")
    # Without a bundle there is nothing to verify the private gateway with: a classified refusal, not a crash.
    assert nulled.status == 1 and nulled.error["kind"] == "tls_verification"
    assert not (dev.storage / "trust_bundle.pem").exists()
    assert json.loads((dev.storage / "state.json").read_text())["trust_bundle"] is None


# --- group enrollment and payloads ------------------------------------------------------------------------------


def test_group_enrollment_with_host_derived_key(emulator, device):
    group_key = new_key()
    group = {
        "group_id": "fleet-a",
        "group_key": group_key,
        "assigned_hub": HUB,
        "trust_bundle": "bundle",
        "payload": {"site": "north"},
    }
    emu = emulator(enrollment_doc(groups=[group]), *FAST)
    device_key = derive_device_key(group_key, "fleet-a-0007")
    dev = device(emu, "fleet-a-0007", device_key, payload={"firmware": "1.2.3"})

    result = dev.run()

    assert result.status == 0, result.output
    assert result.event("registered")["device_id"] == "fleet-a-0007"
    assert json.loads(result.event("returned_payload")["json"]) == {"site": "north"}
    assert [r for r in emu.telemetry() if r["device_id"] == "fleet-a-0007"]
    sent = [r for r in emu.registrations() if r.get("status") == "assigned"][-1]
    assert sent["request_payload"] == {"firmware": "1.2.3"}
    assert group_key not in dev.root.joinpath("provisioning.json").read_text()
    assert_no_secret(result.output, group_key, device_key)


# --- network failures --------------------------------------------------------------------------------------------


def test_network_failures_are_named_in_words(emulator, device):
    """Issue 21, item 9: a host name that does not resolve and a port nothing listens on were reported as
    "connection failed ([addrinfo error -2])" and "connection failed (111)"."""
    key = new_key()
    emu = emulator(enrollment_doc([individual("net-dev", key)]), "--fault", "retry_after=0")
    dev = device(emu, "net-dev", key, dps_host="no-such-host.invalid", registration_timeout_s=5)
    result = dev.run(timeout=60)
    assert result.status == 1 and result.error["kind"] == "network", result.output
    message = result.error["message"]
    assert message.startswith("DPS: host name not found (-") and message.endswith(")"), message
    dev.write_provisioning(dps_host="localhost", dps_port=free_port())
    result = dev.run(timeout=60)
    assert result.status == 1 and result.error["kind"] == "network", result.output
    assert result.error["message"] == "DPS: connection refused (111)", result.output
