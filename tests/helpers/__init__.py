"""Helpers shared by tests, imported explicitly by the tests that use them (``from
helpers.cli import run_cli``); ``conftest.py`` holds only fixtures and session settings.

- :mod:`helpers.cli`: the real CLI in a subprocess (only from tests marked ``slow``),
  composing configs as the CLI does, tiny training budgets, reading records back;
- :mod:`helpers.records`: run records written by hand through the typed RunRecord;
- :mod:`helpers.data`: where the read-only shared corpora are.
"""
