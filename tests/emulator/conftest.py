"""Fixtures for the emulator tests. Helpers live in host_tools.emulator.testing (importable under any pytest
import mode); here are only fixtures and the enrollment document the tests share."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from host_tools.emulator import Emulator, demo_enrollments
from host_tools.emulator.testing import TEST_HUB as HUB
from host_tools.emulator.testing import ForwardingProxy, individual_key
from host_tools.provisioning.pki import ensure_emulator_pki


@pytest.fixture(scope="session")
def shared_pki_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pki-shared")
    ensure_emulator_pki(folder)
    return folder


@pytest.fixture
def state_dir(tmp_path, shared_pki_dir) -> Path:
    # Each emulator gets a copy of one PKI: it is reused (fast) and a test may change its own copy.
    state = tmp_path / "state"
    shutil.copytree(shared_pki_dir, state / "pki")
    return state


@pytest.fixture
def enrollment_doc() -> dict:
    """dev-1, dev-2 (individual, trust bundle 'edge', payload), group 'fleet', dev-disabled, dev-fails."""
    doc = demo_enrollments(hub=HUB, devices=("dev-1", "dev-2"), group_id="fleet", payload={"role": "sensor"})
    key = doc["individual"][0]["symmetric_key"]
    doc["individual"].append(
        {"registration_id": "dev-disabled", "symmetric_key": key, "assigned_hub": HUB, "disabled": True}
    )
    doc["individual"].append(
        {"registration_id": "dev-fails", "symmetric_key": key, "assigned_hub": HUB, "allocation_fails": True}
    )
    return doc


@pytest.fixture
def key(enrollment_doc) -> str:
    """dev-1's key."""
    return individual_key(enrollment_doc, "dev-1")


@pytest.fixture
def make_emulator(state_dir, enrollment_doc):
    started = []

    def make(doc=None, **options) -> Emulator:
        emu = Emulator(state_dir, doc if doc is not None else enrollment_doc, **options).start()
        started.append(emu)
        return emu

    yield make
    for emu in started:
        emu.stop()


@pytest.fixture
def emu(make_emulator) -> Emulator:
    return make_emulator()


@pytest.fixture
def proxy_factory():
    proxies = []

    def make(port: int) -> ForwardingProxy:
        proxy = ForwardingProxy(port)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


@pytest.fixture(autouse=True)
def _emulator_logging(caplog):
    caplog.set_level(logging.INFO, logger="host_tools.emulator")
