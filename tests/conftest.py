"""Fixtures and session settings only; helpers live in ``tests/helpers`` and are imported
explicitly by the tests that use them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from helpers import cli

# One intra-op thread for the whole session: the tests' tensors are tiny, and on a busy
# 2-core machine two threads wait on each other (measured: LSTM gradcheck 3.1 s with two,
# 0.7 s with one). Runs the tests start keep their own trainer.threads setting.
torch.set_num_threads(1)

# The read-only corpora: ``RNNBENCH_DATA_DIR``, else ``../shared/data`` beside the
# repository (where CI clones it), or beside its parent folder (a git worktree one level
# deeper). Set for the whole session, so that every test and every command line a test
# starts reads them the way a user would, through the variable.
_REPO = Path(__file__).resolve().parent.parent
if not os.environ.get("RNNBENCH_DATA_DIR"):
    for _candidate in (_REPO.parent / "shared" / "data", _REPO.parents[1] / "shared" / "data"):
        if _candidate.is_dir():
            os.environ["RNNBENCH_DATA_DIR"] = str(_candidate)
            break


@pytest.fixture(autouse=True)
def _current_test(request):
    """Tell helpers.cli which test runs, so a CLI subprocess from an unmarked test fails."""
    cli.current_test = request.node
    yield
    cli.current_test = None


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A fresh directory outside the repository to launch the CLI from."""
    path = tmp_path / "work"
    path.mkdir()
    return path


def _snapshot(root: Path | None) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*")} if root is not None and root.is_dir() else {}


@pytest.fixture(scope="session", autouse=True)
def data_dir_is_never_written():
    """No test may create, change or delete anything under the data directory."""
    root = Path(os.environ["RNNBENCH_DATA_DIR"]) if os.environ.get("RNNBENCH_DATA_DIR") else None
    before = _snapshot(root)
    yield
    assert _snapshot(root) == before, f"a test wrote under the data directory {root}"
