"""Promises the README makes that only an outside measurement shows, each checked against the firmware on the Unix
port: the DPS leg verifies its server, tokens live `sas_ttl_s` and no longer, a gateway that stops being trusted
sends the device back to DPS, a silent peer cannot hold the device past its deadline, and reconnects to the gateway
back off. Times and tokens come from the emulator's own records (`--record-credentials`), not from the device's log.
Each test is the one a promise mutant in host_tools/mutation/mutants.toml must fail."""

from __future__ import annotations

import socket
import ssl
import threading
import time
import urllib.parse
from pathlib import Path

from tests.helpers import enrollment_doc, individual, new_key

FAST = ("--fault", "retry_after=0")
RECORD = ("--record-credentials",)


def _token_fields(token: str) -> dict[str, str]:
    assert token.startswith("SharedAccessSignature "), "not a SAS token"
    return dict(urllib.parse.parse_qsl(token.split(" ", 1)[1], keep_blank_values=True))


# --- the DPS leg verifies its server ------------------------------------------------------------------------------


def test_dps_with_an_untrusted_certificate_is_refused_before_any_token_is_sent(emulator, device):
    key = new_key()
    emu = emulator(enrollment_doc([individual("tls-dev", key)]), *FAST, *RECORD)
    dev = device(emu, "tls-dev", key)
    # The gateway's private root instead of the DPS root: the DPS server's chain cannot be verified.
    (dev.root / "certs" / "dps-root.pem").write_text(Path(emu.info["pki"]["trust_root"]).read_text())

    result = dev.run(timeout=60)

    assert result.status == 1
    assert result.error["kind"] == "tls_verification", result.output
    assert not result.event("dps_connected")
    # The impostor test: nothing the device would authenticate with reached the server.
    assert emu.credentials_received() == []
    assert emu.registrations() == []


def test_dps_with_another_host_name_is_refused(emulator, device):
    key = new_key()
    # Listening on every loopback address; the certificate names localhost and 127.0.0.1 only.
    emu = emulator(enrollment_doc([individual("name-dev", key)]), *FAST, *RECORD, "--host", "0.0.0.0")
    dev = device(emu, "name-dev", key, dps_host="127.0.0.2")

    result = dev.run(timeout=60)

    assert result.status == 1
    assert result.error["kind"] == "tls_verification", result.output
    assert emu.credentials_received() == []


# --- SAS lifetimes -------------------------------------------------------------------------------------------------


def test_tokens_on_the_wire_expire_after_sas_ttl(emulator, device):
    key = new_key()
    emu = emulator(enrollment_doc([individual("ttl-dev", key)]), *FAST, *RECORD)
    dev = device(emu, "ttl-dev", key, sas_ttl_s=900)

    result = dev.run()

    assert result.status == 0, result.output
    received = emu.credentials_received()
    assert {r["endpoint"] for r in received} == {"dps", "gateway"}
    for record in received:
        lifetime = int(_token_fields(record["password"])["se"]) - record["time"]
        # A second either way for the clock's resolution and the time between signing and CONNECT.
        assert 900 - 5 <= lifetime <= 900 + 1, (record["endpoint"], lifetime)


# --- a gateway the stored bundle no longer trusts -------------------------------------------------------------------


def test_reregisters_when_gateway_certificate_is_refused(emulator, device, tmp_path):
    from host_tools.provisioning import pki

    key = new_key()
    decoys = tmp_path / "decoys.pem"
    pki.write_bundle(decoys, pki.make_decoy_roots(1, "not the gateway root"))
    # First the enrollment links a bundle that does not hold the gateway's root: what the device stores cannot
    # verify the gateway. Then the operator fixes the bundle; the device learns it only by registering again.
    doc = enrollment_doc([individual("cert-dev", key, trust_bundle="wrong")], wrong=(str(decoys),))
    emu = emulator(doc, *FAST)
    dev = device(emu, "cert-dev", key)
    first = dev.run()
    assert first.status == 1 and first.error["kind"] == "tls_verification", first.output
    assert first.event("trust_bundle_stored")

    emu.update_enrollments(enrollment_doc([individual("cert-dev", key)]))
    second = dev.run()

    assert second.status == 0, second.output
    assert second.event("using_cached_assignment")
    again = second.event("reprovisioning")
    assert again and again["reason"] == "tls_verification" and again["failures"] == "1", second.output
    assert second.event("gateway_verified") and second.event("telemetry_acknowledged")
    assert len([r for r in emu.registrations() if r.get("status") == "assigned"]) == 2


# --- silent peers ---------------------------------------------------------------------------------------------------


class SilentTlsPeer:
    """Accepts TCP, completes the TLS handshake with the emulator's DPS certificate, then never says a word."""

    def __init__(self, cert: str, key: str):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.handshakes = 0
        self.received = 0
        self._held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            try:
                conn = self.ctx.wrap_socket(raw, server_side=True)
            except (OSError, ssl.SSLError):
                raw.close()
                continue
            self.handshakes += 1
            self._held.append(conn)
            threading.Thread(target=self._swallow, args=(conn,), daemon=True).start()

    def _swallow(self, conn: socket.socket) -> None:
        try:
            while data := conn.recv(4096):
                self.received += len(data)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()
        for conn in self._held:
            conn.close()


def test_silent_dps_peer_ends_in_a_timeout_at_the_deadline(emulator, device):
    key = new_key()
    emu = emulator(enrollment_doc([individual("silent-dev", key)]), *FAST)
    pki_paths = emu.info["pki"]
    peer = SilentTlsPeer(pki_paths["dps_server"], pki_paths["dps_server_key"])
    try:
        dev = device(emu, "silent-dev", key, dps_port=peer.port, registration_timeout_s=5)
        started = time.monotonic()
        result = dev.run(timeout=45)
        elapsed = time.monotonic() - started
    finally:
        peer.close()

    assert peer.handshakes >= 1 and peer.received > 0, result.output  # the device got as far as its CONNECT
    assert result.status == 1
    assert result.error["kind"] == "timeout", result.output
    # The registration deadline (5 s) bounds every wait, the CONNACK that never comes included.
    assert elapsed < 5 + 6, elapsed


def test_dps_answers_slower_than_the_deadline_end_in_a_timeout(emulator, device):
    key = new_key()
    entry = dict(individual("slow-dev", key), faults={"delay_ms": 30000})
    emu = emulator(enrollment_doc([entry]), *FAST)
    dev = device(emu, "slow-dev", key, registration_timeout_s=5)
    started = time.monotonic()
    result = dev.run(timeout=45)
    elapsed = time.monotonic() - started

    assert result.status == 1
    assert result.error["kind"] == "timeout", result.output
    assert result.event("dps_connected")  # connected, then the answer never came in time
    assert elapsed < 5 + 6, elapsed


# --- reconnects back off ----------------------------------------------------------------------------------------------


def test_gateway_reconnects_back_off(emulator, device):
    key = new_key()
    entry = dict(individual("backoff-dev", key), faults={"gateway_drop_after": {"at": "connack", "count": 2}})
    emu = emulator(enrollment_doc([entry]), *FAST, *RECORD)
    dev = device(emu, "backoff-dev", key, max_gateway_failures=5)

    result = dev.run()

    assert result.status == 0, result.output
    assert len(result.gateway_retries()) == 2
    connects = [r["time"] for r in emu.credentials_received() if r["endpoint"] == "gateway"]
    assert len(connects) == 3
    gaps = [b - a for a, b in zip(connects, connects[1:])]
    # Backoff after the n-th failure: between half and all of retry_base_ms * 2**(n-1) (jitter), measured between
    # CONNECTs.
    assert gaps[0] >= 0.5 and gaps[1] >= 1.0, gaps
