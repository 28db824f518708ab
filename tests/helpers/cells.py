"""Running a cell by one of its computation paths, for tests that compare them."""

from __future__ import annotations


def run_path(cell, path: str, x, state, lengths=None):
    """A cell's forward over ``x`` by one of its paths: "steps" (the reference loop of
    ``step``), "fused" or "loop" (``forward`` with ``use_fused`` on or off)."""
    if path == "steps":
        return cell.loop_steps(x, state, lengths)
    cell.use_fused = path == "fused"
    return cell(x, state, lengths)
