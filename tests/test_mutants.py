"""`make mutants` stays honest: every promise mutant still applies to the code (its anchor occurs exactly once) and
names tests that exist, and the quick subset of mutants is killed by its tests on every `make test`."""

from __future__ import annotations

import pytest

from host_tools.mutation import runner

MUTANTS = runner.load()


def test_catalogue_covers_the_issue_15_mutants():
    origins = [m.origin for m in MUTANTS]
    assert origins.count("issue-15 survivor") == 8
    assert origins.count("issue-15 caught") == 9


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.id)
def test_mutant_applies_and_names_existing_tests(mutant):
    assert runner.anchor_problem(mutant) is None, f"{mutant.id}: {runner.anchor_problem(mutant)} in {mutant.file}"
    assert not runner.missing_tests(mutant), f"{mutant.id}: tests not found {runner.missing_tests(mutant)}"


@pytest.mark.parametrize("mutant", [m for m in MUTANTS if m.fast], ids=lambda m: m.id)
def test_fast_mutant_is_killed(mutant):
    outcome = runner.run_mutant(mutant, timeout=300)
    assert outcome.killed, f"{mutant.id}: {outcome.result}\n{outcome.detail}"
