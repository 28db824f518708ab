"""Shared helpers: run the real CLI in a subprocess, from a temporary directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Tiny budgets: every CLI run trains for seconds, but through the real code paths.
TINY = [
    "trainer.max_steps=20",
    "trainer.val_check_interval=10",
    "trainer.progress_bar=none",
    "cell.hidden_size=16",
    "task.seq_len=10",
    "task.batch_size=16",
    "task.val_size=64",
    "task.test_size=64",
]


def run_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m rnnbench ARGS`` in ``cwd``; returns the finished process (text output)."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    full_env.pop("RNNBENCH_RESULTS_DIR", None)
    return subprocess.run([sys.executable, "-m", "rnnbench", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def compose_config(overrides: list[str], *, resolved: bool = True, hydra: bool = False):
    """The config the ``rnnbench`` command composes for ``overrides``: a resolved plain
    dict, or (``resolved=False``) the DictConfig, with Hydra's own node if ``hydra``."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("rnnbench.conf", version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=hydra)
    return OmegaConf.to_container(cfg, resolve=True) if resolved else cfg


def run_path(cell, path: str, x, state, lengths=None):
    """A cell's forward over ``x`` by one of its paths: "steps" (the reference loop of
    ``step``), "fused" or "loop" (``forward`` with ``use_fused`` on or off)."""
    if path == "steps":
        return cell.loop_steps(x, state, lengths)
    cell.use_fused = path == "fused"
    return cell(x, state, lengths)


def summaries(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.rglob("summary.json"))]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A fresh directory outside the repository to launch the CLI from."""
    path = tmp_path / "work"
    path.mkdir()
    return path


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


def shared_data(required: str) -> Path | None:
    """The corpora folder, if it holds ``required`` (a file or folder path inside it)."""
    value = os.environ.get("RNNBENCH_DATA_DIR")
    return Path(value) if value and (Path(value) / required).exists() else None


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
