"""The whole path on the MicroPython Unix port against the emulator: provisioning file -> SAS -> DPS over MQTT/TLS ->
trust bundle stored in flash -> gateway verified with it -> telemetry acknowledged and recorded by the gateway."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from host_tools.board import runtimes
from host_tools.provisioning import pki
from tests.helpers import HUB, assert_no_secret, enrollment_doc, individual, new_key


def _pem_certs(text: str) -> list[str]:
    return [block.strip() for block in text.replace("\r\n", "\n").split("-----END CERTIFICATE-----") if block.strip()]


@pytest.mark.parametrize("use_mpy", [False, True], ids=["source", "mpy"])
def test_provision_store_verify_and_send(emulator, device, use_mpy):
    key = new_key()
    emu = emulator(enrollment_doc([individual("e2e-device", key, payload={"greeting": "hello"})]))
    dev = device(emu, "e2e-device", key, use_mpy=use_mpy, payload={"model": "m1"})

    result = dev.run()

    assert result.status == 0, result.output
    registered = result.event("registered")
    assert registered == {"hub": HUB, "device_id": "e2e-device", "substatus": "initialAssignment"}
    assert json.loads(result.event("returned_payload")["json"]) == {"greeting": "hello"}
    stored = result.event("trust_bundle_stored")
    assert stored["certificates"] == "1" and stored["written"] == "True"
    assert result.event("gateway_verified")["host"] == emu.info["gateway"]["hostname"]
    assert result.event("telemetry_acknowledged")["device_id"] == "e2e-device"

    # What the device stored in its flash is exactly the root DPS handed out, in PEM with "\n" endings.
    trust_root = Path(emu.info["pki"]["trust_root"]).read_text()
    stored_pem = (dev.storage / "trust_bundle.pem").read_text()
    assert "\r" not in stored_pem
    assert _pem_certs(stored_pem) == _pem_certs(trust_root)
    state = json.loads((dev.storage / "state.json").read_text())
    assert state["assignment"]["assigned_hub"] == HUB
    assert state["assignment"]["payload"] == {"greeting": "hello"}
    cert_meta = state["trust_bundle"]["certificates"][0]
    assert cert_meta["sha256"] == result.event("trust_bundle_cert")["sha256"]
    assert state["trust_bundle"]["etag"] == stored["etag"]
    assert not list(dev.storage.glob("*.tmp")) and not list(dev.storage.glob("*.new"))

    # The gateway's own record of what it acknowledged.
    records = [r for r in emu.telemetry() if r["device_id"] == "e2e-device"]
    assert len(records) == 1
    assert records[0]["hub"] == HUB and records[0]["qos"] == 1
    assert records[0]["properties"].get("$.ct") == "application/json"
    assert json.loads(records[0]["payload"])["registrationId"] == "e2e-device"
    # The registration request carried the device's custom payload.
    regs = [r for r in emu.registrations() if r.get("registration_id") == "e2e-device"]
    assert regs and regs[-1].get("api_version") == "2021-11-01-preview"

    assert_no_secret(result.output, key)


# umqtt.simple 1.3.4 wraps its socket with `ussl.wrap_socket(sock, **ssl_params)`; 1.6 and later (frozen into the
# ESP32 firmware) call `ssl.wrap_socket(sock, server_hostname=server)` on the SSLContext passed as `ssl`. Only the
# 1.3.4 file can be installed here, so the later shape is made from it by swapping exactly that call.
_LEGACY_WRAP = """            import ussl
            self.sock = ussl.wrap_socket(self.sock, **self.ssl_params)"""
_CONTEXT_WRAP = """            self.sock = self.ssl.wrap_socket(self.sock, server_hostname=self.server)"""


def _use_context_shaped_umqtt(root: Path) -> None:
    path = root / "lib" / "umqtt" / "simple.py"
    source = path.read_text()
    assert _LEGACY_WRAP in source
    path.write_text(source.replace(_LEGACY_WRAP, _CONTEXT_WRAP))


@pytest.mark.parametrize("umqtt_shape", ["1.3.4", "sslcontext"])
def test_bundle_of_three_where_only_the_last_signs_the_gateway(emulator, device, runtime, tmp_path, umqtt_shape):
    frozen = runtimes.get(runtime).frozen
    if frozen and umqtt_shape == "1.3.4":
        pytest.skip("a frozen build carries micropython-lib's umqtt.simple 1.8.0, the SSLContext shape")
    key = new_key()
    decoys = pki.write_bundle(tmp_path / "decoys.pem", pki.make_decoy_roots(2))
    emu = emulator(enrollment_doc([individual("three-certs", key)], bundle=(str(decoys), "pki:trust-root")))
    dev = device(emu, "three-certs", key)
    if umqtt_shape == "sslcontext" and not frozen:
        _use_context_shaped_umqtt(dev.root)

    result = dev.run()

    assert result.status == 0, result.output
    assert result.event("trust_bundle_stored")["certificates"] == "3"
    assert len(result.all("trust_bundle_cert")) == 3
    assert len(_pem_certs((dev.storage / "trust_bundle.pem").read_text())) == 3
    assert result.event("telemetry_acknowledged")


def test_gateway_chained_to_another_root_is_refused(emulator, device, tmp_path):
    key = new_key()
    other_root = pki.write_bundle(tmp_path / "other-root.pem", [pki.make_root()])
    emu = emulator(enrollment_doc([individual("wrong-root", key)], bundle=(str(other_root),)))
    dev = device(emu, "wrong-root", key)

    result = dev.run()

    assert result.status == 1
    assert result.event("trust_bundle_stored")
    assert result.error["kind"] == "tls_verification"
    assert not result.event("telemetry_acknowledged")
    assert not [r for r in emu.telemetry() if r["device_id"] == "wrong-root"]
