"""Test PKI (create/reuse, chains, host names, CLI) and the trust bundle JSON shape (reference section 4)."""

import datetime as dt
import json
import os
import re
import stat

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.x509 import DNSName, IPAddress
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from host_tools.emulator.trust_bundle import TrustBundleRegistry, content_etag, format_name, serial_hex
from host_tools.provisioning import pki as pki_module
from host_tools.provisioning.pki import (
    ensure_emulator_pki,
    load_certificates,
    make_decoy_roots,
    make_root,
    make_root_chain,
    make_server_cert,
    reissue_gateway_cert,
    write_bundle_with_decoys,
)


def verify_server(roots, chain_file, hostname):
    """Verify a server chain file (leaf + intermediates) for a host name with cryptography's verifier."""
    leaf, *intermediates = load_certificates(chain_file)
    verifier = PolicyBuilder().store(Store(roots)).build_server_verifier(hostname)
    return verifier.verify(leaf, intermediates)


def test_pki_files_and_chains(tmp_path):
    pki = ensure_emulator_pki(tmp_path / "pki", gateway_hostname="edge-gw.example.local")
    for name in pki_module.FILES:
        assert getattr(pki, name).is_file(), name
    assert stat.S_IMODE(os.stat(pki.gateway_server_key).st_mode) == 0o600
    trust_root = load_certificates(pki.trust_root)
    # gateway-server.pem is "server + edge CA" and chains to the trust root for every name in its SAN.
    assert len(load_certificates(pki.gateway_server)) == 2
    for name in (
        DNSName("edge-gw.example.local"),
        DNSName("localhost"),
        IPAddress(__import__("ipaddress").ip_address("127.0.0.1")),
    ):
        verify_server(trust_root, pki.gateway_server, name)
    verify_server(load_certificates(pki.dps_root), pki.dps_server, DNSName("localhost"))
    with pytest.raises(VerificationError):  # the two hierarchies are independent
        verify_server(load_certificates(pki.dps_root), pki.gateway_server, DNSName("localhost"))
    with pytest.raises(VerificationError):
        verify_server(trust_root, pki.gateway_server, DNSName("other.example"))
    for cert in load_certificates(pki.gateway_server) + trust_root:
        assert cert.public_key().curve.name == "secp256r1"


def test_pki_is_reused_and_host_change_reissues_only_the_server_cert(tmp_path):
    first = ensure_emulator_pki(tmp_path)
    before = {name: getattr(first, name).read_bytes() for name in pki_module.FILES}
    second = ensure_emulator_pki(tmp_path)
    assert set(second.actions.values()) == {"reused"}
    assert before == {name: getattr(second, name).read_bytes() for name in pki_module.FILES}
    third = ensure_emulator_pki(tmp_path, gateway_hostname="gw.lan", ip_addresses=["192.168.1.20"])
    assert third.actions["gateway_server"] == "reissued" and third.actions["dps_server"] == "reissued"
    assert third.actions["trust_root"] == third.actions["edge_ca"] == third.actions["dps_root"] == "reused"
    assert first.trust_root.read_bytes() == before["trust_root"]
    verify_server(load_certificates(third.trust_root), third.gateway_server, DNSName("gw.lan"))


def test_broken_files_are_replaced(tmp_path):
    pki = ensure_emulator_pki(tmp_path)
    pki.edge_ca.write_text("garbage")
    again = ensure_emulator_pki(tmp_path)
    assert again.actions["edge_ca"] == "reissued" and again.actions["gateway_server"] == "reissued"
    assert again.actions["trust_root"] == "reused"
    verify_server(load_certificates(again.trust_root), again.gateway_server, DNSName("localhost"))


def test_bundle_with_decoys_only_last_signs_the_gateway(tmp_path):
    pki = ensure_emulator_pki(tmp_path / "pki")
    bundle = load_certificates(write_bundle_with_decoys(pki, tmp_path / "bundle.pem", decoys=2))
    assert len(bundle) == 3
    for cert in bundle[:2]:
        with pytest.raises(VerificationError):
            verify_server([cert], pki.gateway_server, DNSName("localhost"))
    verify_server([bundle[2]], pki.gateway_server, DNSName("localhost"))
    verify_server(bundle, pki.gateway_server, DNSName("localhost"))


def test_building_blocks_for_other_chains(tmp_path):
    pki = ensure_emulator_pki(tmp_path / "pki")
    cert, key = reissue_gateway_cert(pki, ["other-gw.example"])
    verify_server(load_certificates(pki.trust_root), cert, DNSName("other-gw.example"))
    with pytest.raises(VerificationError):
        verify_server(load_certificates(pki.trust_root), cert, DNSName("localhost"))
    chain = make_root_chain(3)
    leaf = make_server_cert(chain[-1], ["deep.example"])
    assert [c.subject for c in leaf.chain] == [chain[2].cert.subject, chain[1].cert.subject]
    roots = make_decoy_roots(2)
    assert roots[0].cert.subject != roots[1].cert.subject


def test_pki_cli_writes_and_prints_a_table(tmp_path):
    out = tmp_path / "lab"
    result = CliRunner().invoke(
        pki_module.pki_command, ["--out", str(out), "--gateway-host", "edge.lab", "--ip", "10.1.2.3"]
    )
    assert result.exit_code == 0, result.output
    for name in ("trust-root.pem", "edge-ca.pem", "gateway-server.pem", "edge-ca-key.pem"):
        assert name in result.output
        assert (out / name).is_file()
    assert "PRIVATE KEY" not in result.output
    verify_server(load_certificates(out / "trust-root.pem"), out / "gateway-server.pem", DNSName("edge.lab"))
    bad = CliRunner().invoke(pki_module.pki_command, ["--out", str(out), "--gateway-host", "x", "--ip", "nope"])
    assert bad.exit_code == 2 and "not an IP address" in bad.output


# ------------------------------------------------------------------------------------------- bundle JSON


def test_certificate_entry_shape(tmp_path):
    pki = ensure_emulator_pki(tmp_path)
    certs = load_certificates(pki.trust_root) + load_certificates(pki.edge_ca)
    bundle = TrustBundleRegistry().build("TestTrustBundle", certs)
    assert set(bundle) == {"certificates", "id", "createdDateTime", "lastModifiedDateTime", "etag"}
    assert re.fullmatch(r'"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"', bundle["etag"])
    for key in ("createdDateTime", "lastModifiedDateTime"):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}", bundle[key]), bundle[key]
    root_entry, edge_entry = bundle["certificates"]
    pem = root_entry["certificate"]
    assert pem.startswith("-----BEGIN CERTIFICATE-----\r\n") and pem.endswith("-----END CERTIFICATE-----\r\n")
    assert "\n" not in pem.replace("\r\n", "")
    assert x509.load_pem_x509_certificate(pem.encode()) == certs[0]
    meta = root_entry["metadata"]
    assert meta["subjectName"] == meta["issuerName"]  # a root
    assert meta["subjectName"].startswith("CN=azprov trust root") and meta["subjectName"].endswith(", C=US")
    assert edge_entry["metadata"]["issuerName"] == meta["subjectName"]
    assert re.fullmatch(r"[0-9A-F]{40}", meta["sha1Thumbprint"])
    assert re.fullmatch(r"[0-9A-F]{64}", meta["sha256Thumbprint"])
    assert re.fullmatch(r"[0-9A-F]+", meta["serialNumber"])
    for key in ("notBeforeUtc", "notAfterUtc"):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", meta[key])
    assert meta["version"] == 3
    json.dumps(bundle)  # plain JSON types only


def test_name_and_serial_formatting():
    root = make_root("root, with comma")
    assert format_name(root.cert.subject) == 'CN="root, with comma", OU=test, O=azprov test PKI, C=US'
    cert = root.cert
    expected = cert.serial_number.to_bytes((cert.serial_number.bit_length() + 8) // 8, "big").hex().upper()
    assert serial_hex(cert) == expected
    assert len(serial_hex(cert)) % 2 == 0


def test_etag_follows_content_and_dates_follow_etag():
    a, b = make_root().cert, make_root().cert
    assert content_etag("x", [a]) == content_etag("x", [a])
    assert content_etag("x", [a]) != content_etag("x", [a, b]) != content_etag("y", [a, b])
    moments = iter([dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=m) for m in range(10)])
    registry = TrustBundleRegistry(clock=lambda: next(moments))
    first = registry.build("edge", [a])
    same = registry.build("edge", [a])
    changed = registry.build("edge", [a, b])
    assert same["etag"] == first["etag"] and same["lastModifiedDateTime"] == first["lastModifiedDateTime"]
    assert changed["etag"] != first["etag"]
    assert changed["createdDateTime"] == first["createdDateTime"]
    assert changed["lastModifiedDateTime"] > first["lastModifiedDateTime"]
