"""The suite tells the truth about itself: every test asserts something (an ``assert``,
``pytest.raises``/``warns``, or a helper of its own file that does), and a test that starts
the CLI in a subprocess without the ``slow`` mark fails (tests/helpers/cli.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from helpers import cli

TESTS = sorted(Path(__file__).parent.glob("test_*.py"))
CHECKS = {"raises", "warns", "fail", "approx"}  # pytest's ways of stating an expectation


def _asserts(node: ast.AST, local: dict[str, ast.FunctionDef], seen: frozenset = frozenset()) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Assert) or (isinstance(sub, ast.Attribute) and sub.attr in CHECKS):
            return True
        if isinstance(sub, ast.Call):
            name = sub.func.id if isinstance(sub.func, ast.Name) else getattr(sub.func, "attr", "")
            if name.startswith("assert"):
                return True
            if name in local and name not in seen and _asserts(local[name], local, seen | {name}):
                return True
    return False


@pytest.mark.parametrize("path", TESTS, ids=lambda p: p.name)
def test_every_test_asserts_something(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    local = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    silent = [name for name, node in local.items() if name.startswith("test_") and not _asserts(node, local)]
    assert silent == []


def test_an_unmarked_test_cannot_start_the_cli(tmp_path):
    with pytest.raises(AssertionError, match="mark it @pytest.mark.slow"):
        cli.run_cli(["list"], tmp_path)
