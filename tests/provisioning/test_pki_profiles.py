"""The Azure-shaped PKI profile (`pki --profile azure`): key kinds and sizes, the chains each server sends, the
several-root trust bundle, the profile a folder keeps for the emulator, and a device provisioning through it."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner
from cryptography.x509 import DNSName
from cryptography.x509.verification import PolicyBuilder, Store

from host_tools.provisioning import pki
from host_tools.provisioning.pki import ensure_emulator_pki, key_kind, load_certificates
from tests.helpers import enrollment_doc, individual, new_key


def _kinds(path) -> list[str]:
    return [key_kind(c.public_key()) for c in load_certificates(path)]


def _verify(roots_file, chain_file, hostname: str) -> list:
    leaf, *intermediates = load_certificates(chain_file)
    verifier = PolicyBuilder().store(Store(load_certificates(roots_file))).build_server_verifier(DNSName(hostname))
    return verifier.verify(leaf, intermediates)


@pytest.fixture(scope="module")
def azure_pki(tmp_path_factory):
    return ensure_emulator_pki(tmp_path_factory.mktemp("azure-pki"), profile="azure")


def test_azure_profile_is_rsa_shaped_like_the_real_services(azure_pki):
    # DPS: RSA-2048 server, sent with its RSA-4096 issuing CA, under an RSA-4096 root.
    assert _kinds(azure_pki.dps_server) == ["rsa2048", "rsa4096"]
    assert _kinds(azure_pki.dps_root) == ["rsa4096"]
    assert len(_verify(azure_pki.dps_root, azure_pki.dps_server, "localhost")) == 3  # server, issuing CA, root
    # Gateway: the same shape under the trust root.
    assert _kinds(azure_pki.gateway_server) == ["rsa2048", "rsa4096"]
    assert len(_verify(azure_pki.trust_root, azure_pki.gateway_server, "localhost")) == 3
    # The trust bundle: several RSA-4096 roots, the one that signs the gateway last.
    bundle = load_certificates(azure_pki.trust_bundle)
    assert [key_kind(c.public_key()) for c in bundle] == ["rsa4096"] * 3
    assert bundle[-1] == load_certificates(azure_pki.trust_root)[0]
    assert len({c.subject for c in bundle}) == 3
    assert (azure_pki.folder / "profile").read_text().strip() == "azure"


def test_the_emulator_keeps_the_folders_profile_and_lab_stays_default(azure_pki, tmp_path):
    before = {name: path for name, path in azure_pki.paths().items()}
    again = ensure_emulator_pki(azure_pki.folder)  # what the emulator calls: no profile
    assert again.profile == "azure" and set(again.actions.values()) == {"reused"}
    assert again.paths() == before
    lab = ensure_emulator_pki(tmp_path / "lab")
    assert lab.profile == "lab" and lab.trust_bundle is None and lab.dps_ca is None
    assert _kinds(lab.dps_server) == ["p256"] and _kinds(lab.gateway_server) == ["p256", "p256"]
    # Asking for the other profile replaces every certificate with the new kinds.
    switched = ensure_emulator_pki(tmp_path / "lab", profile="azure")
    assert switched.actions["trust_root"] == "created" and switched.profile == "azure"
    assert _kinds(switched.trust_root) == ["rsa4096"] and _kinds(switched.gateway_server) == ["rsa2048", "rsa4096"]


def test_pki_command_profile_option(tmp_path):
    result = CliRunner().invoke(
        pki.pki_command, ["--out", str(tmp_path), "--gateway-host", "gw.lan", "--profile", "azure"]
    )
    assert result.exit_code == 0, result.output
    assert "profile: azure" in result.output and "trust-bundle.pem" in result.output
    assert _kinds(tmp_path / "gateway-server.pem") == ["rsa2048", "rsa4096"]
    refused = CliRunner().invoke(pki.pki_command, ["--out", str(tmp_path), "--gateway-host", "gw", "--profile", "x"])
    assert refused.exit_code != 0 and "x" in refused.output


def test_device_provisions_through_azure_shaped_chains(emulator, device, tmp_path, azure_pki):
    # The emulator's state dir, made beforehand: a copy of the module's Azure-shaped PKI (its RSA keys are slow to make).
    shutil.copytree(azure_pki.folder, tmp_path / "emulator" / "pki")
    key = new_key()
    emu = emulator(enrollment_doc([individual("azure-shaped", key)], bundle=("pki:trust-bundle",)))
    assert key_kind(load_certificates(emu.info["pki"]["gateway_server"])[0].public_key()) == "rsa2048"
    dev = device(emu, "azure-shaped", key)

    result = dev.run()

    assert result.status == 0, result.output
    assert result.event("dps_connected")
    assert result.event("trust_bundle_stored")["certificates"] == "3"
    assert result.event("gateway_verified")
    assert result.event("telemetry_acknowledged")
