"""`make mutants`: promise mutants (one real bug each) and the mutation score of the I/O-free firmware core.

mutants.toml   the promise mutants: file, the one change, the promise it breaks, the tests that must catch it
runner.py      `mutants`: applies each to a scratch copy of the repository, runs its tests, prints a table
score.py       the mutation score of the I/O-free core (dps, sas, pem, bundle, config, encoding, hub) with mutmut
"""
