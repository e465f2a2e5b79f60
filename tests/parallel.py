"""How the suite runs on several pytest-xdist workers (`-n`, set in pyproject.toml; `-n 0` runs it in one process).

Most tests wait on child processes (MicroPython, the emulator, Mosquitto), so more workers than cores pay: `auto`
is twice the cores. tests/conftest.py imports these hooks.

- The MicroPython runtimes the `device` fixture uses are brought up to date once, by the controller, before any worker
  starts (a worker would otherwise find a stale frozen build and run `make`; host_tools/board/runtimes.py also
  holds a lock around that build).
- Tests that share an expensive set-up run on one worker (`--dist loadgroup`, groups from group_of()): each device
  module of tests/test_device_suite.py is run once per runtime and reported test by test, and a module-scoped
  fixture would be made again on every worker that gets one of its tests.
- Long tests (marked `slow`, or in LONG_TESTS) start first, so none of them is left to run alone at the end.
"""

from __future__ import annotations

import os
import sys

import pytest

from host_tools.board import runtimes

# Modules whose module-scoped fixture costs more than the parallelism inside the module gains: one worker each.
ONE_WORKER_MODULES = (
    "tests/test_bad_input_bulk.py",  # 4 checks of one bulk run
    "tests/test_large_bundle.py",  # nine RSA-4096 roots
    "tests/provisioning/test_pki_profiles.py",  # an Azure-shaped PKI
)


# Long tests in files this list's author may not mark `slow` (waits of 10-25 s each, in the serial run of 2026-12-02):
# they start first too. A name that no longer exists matches nothing.
LONG_TESTS = (
    "tests/test_runloop_faults.py::test_dps_unreachable_at_boot_then_back",
    "tests/test_runloop_faults.py::test_board_reset_after_consecutive_failures_carries_the_backoff",
    "tests/test_runloop_faults.py::test_watchdog_resets_a_hang_in_the_socket_layer",
    "tests/test_runloop_faults.py::test_wifi_gone_for_a_while",
    "tests/test_hub_features.py::test_default_app_twin_methods_c2d_across_drop_and_renewal",
    "tests/test_field.py::test_token_renewed_across_expiries",
    "tests/test_large_bundle.py::",
)


def _long(item) -> bool:
    return item.get_closest_marker("slow") is not None or item.nodeid.startswith(LONG_TESTS)


def _distributed(config) -> bool:
    return bool(getattr(config.option, "numprocesses", None)) and getattr(config.option, "dist", "no") != "no"


@pytest.hookimpl(optionalhook=True)  # a hook of xdist's: unknown without it (`-p no:xdist`)
def pytest_xdist_auto_num_workers(config) -> int | None:
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # xdist's own: that number
    return 2 * (os.cpu_count() or 1)


def pytest_sessionstart(session):
    config = session.config
    if hasattr(config, "workerinput") or not _distributed(config):
        return
    for name in runtimes.TESTED:  # the `device` fixture's runtimes; another one is built by the test that asks
        runtime = runtimes.get(name)
        if runtime.source_built:
            try:
                runtime.binary()
            except runtimes.RuntimeUnavailable as exc:
                # The tests that need it report it; the others still run.
                print(f"[runtimes] {exc}", file=sys.stderr)


def group_of(nodeid: str) -> str | None:
    """The work unit a test belongs to (a name shared with the tests that must run with it), or None (alone)."""
    path, _, rest = nodeid.partition("::")
    if path == "tests/test_device_suite.py" and "[" in rest:
        return "device-suite-" + rest.split("[", 1)[1].split("::")[0]  # e.g. device-suite-wheel-test_store
    if path in ONE_WORKER_MODULES:
        return path
    return None


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadgroup` with the groups of group_of(). xdist 3.8.0 reads `xdist_group` marks by appending them to
    the node id, which pytest 9.2's structured node ids no longer allow (pytest-xdist issue 1386): the groups are
    worked out here, on the controller, from the node ids themselves."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class GroupScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid) or super()._split_scope(nodeid)

    # Work units in collection order (pytest_collection_modifyitems puts the long tests first), not biggest first.
    config.option.loadscopereorder = False
    return GroupScheduling(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    if hasattr(config, "workerinput"):  # on a worker; one process keeps the order as written
        items.sort(key=lambda item: not _long(item))
