"""The soak's short version (`make soak` runs the full one: tests/soak.py): one device process, compressed time,
the emulator dropping the connection every second; every message acknowledged, no re-registration, no leak, no
growth."""

from __future__ import annotations

import pytest

from tests.soak import Targets, run_soak, table


@pytest.mark.slow
@pytest.mark.runtimes("unix32-frozen")
def test_short_soak(runtime, tmp_path):
    result = run_soak(Targets(messages=1200, renewals=40, drops=20), runtime, workdir=tmp_path)
    print(table(result))
    assert result.passed, table(result)
    # The gateway may hold one message more than the device saw acknowledged: the one in flight when it was stopped.
    assert result.acknowledged >= 1200 and result.missing == 0
    assert result.acknowledged <= result.recorded - result.duplicates_recorded <= result.acknowledged + 1
