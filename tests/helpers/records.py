"""Builders shared by tests: run records written by hand through the typed RunRecord."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from rnnbench.files import write_json_atomic
from rnnbench.record import RunRecord


def write_record(root: Path, name: str, *, cell: str = "gru", task: str = "adding", task_preset: Optional[str] = None,
                 T: Optional[int] = 10, seed: int = 0, status: str = "finished", score: Optional[float] = None,
                 solved: Optional[bool] = None, metric: str = "mse", mode: str = "min",
                 threshold: Optional[float] = 0.01, lr: float = 0.002, hidden: int = 16,
                 param_budget: Optional[int] = None, stage: Optional[str] = None, val: Optional[float] = None,
                 task_options: Optional[dict] = None, task_params: Optional[dict] = None,
                 overrides: Optional[dict] = None, more_metrics: Optional[dict] = None, **fields: Any) -> RunRecord:
    """A run record in ``root/name``: ``score`` is the test value of the primary ``metric``;
    ``solved`` defaults to the score meeting ``threshold``; ``overrides`` sets config keys
    (dotted); other RunRecord fields by keyword."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    if solved is None:
        solved = score is not None and threshold is not None and (
            score <= threshold if mode == "min" else score >= threshold)
    task_config = {"name": task, **({"seq_len": T} if T is not None else {}), **(task_options or {})}
    config = {"cell": {"name": cell, "hidden_size": hidden, "num_layers": 1, "bidirectional": False},
              "task": task_config, "optim": {"name": "adam", "lr": lr}, "model": {"param_budget": param_budget},
              "trainer": {"max_steps": 100}, "seed": seed, "data_seed": seed, "init_seed": seed, "stage": stage,
              "results_dir": str(root)}
    for dotted, value in (overrides or {}).items():
        node = config
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    metrics: dict[str, Any] = {}
    if score is not None:
        metrics["test"] = {metric: score}
    if val is not None:
        metrics["val_best"] = {metric: val}
    metrics.update(more_metrics or {})
    fields.setdefault("params", 977)
    fields.setdefault("state_size", hidden)
    record = RunRecord(
        run_dir=str(run_dir), status=status, cell=cell, task=task, cell_preset=cell, task_preset=task_preset or task,
        task_params=task_params if task_params is not None else ({"seq_len": T} if T is not None else {}),
        hidden_size=hidden, num_layers=1, bidirectional=False, param_budget=param_budget,
        seed=seed, data_seed=seed, init_seed=seed, metric=metric, metric_mode=mode,
        solved_criterion={"metric": metric, "mode": mode, "threshold": threshold}, metrics=metrics,
        baseline={metric: 1 / 6}, solved=bool(solved), steps=100, tokens_per_s=1000.0, config=config, **fields)
    record.write(run_dir)
    return record


def markdown_rows(path: Path) -> list[dict[str, str]]:
    """The rows of the (first) Markdown table in a file, as ``{column: cell text}``."""
    lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]


def full_report_records(root: Path) -> None:
    """Records, learning curves, diagnostics and a speed CSV for every kind of plot."""
    from rnnbench.speed import COLUMNS

    for cell, hidden in (("gru", 16), ("lstm", 16), ("lstm", 32), ("rnn", 16)):
        for T in (10, 20):
            for seed in range(2):
                name = f"{cell}{hidden}_{T}_{seed}"
                write_record(root, name, cell=cell, hidden=hidden, T=T, seed=seed, score=0.005 * (seed + 1) * T / 10,
                             steps_to_solve=100 * T, diagnostics="diagnostics.json", more_metrics={
                                 "length_generalisation": {"40": {"mse": 0.1, "solved": False}}})
                pd.DataFrame({"step": [10, 20, 30], "val/mse": [0.2, 0.1, 0.01 * (seed + 1)]}).to_csv(
                    root / name / "metrics.csv", index=False)
                view = {"gate": f"l0.fwd.{cell[0]}", "values": list(np.linspace(0.5, 0.9, T))}
                write_json_atomic(root / name / "diagnostics.json", {
                    "grad_norm": list(np.linspace(0.1, 1, T)), "retention": view, "saturation": view,
                    "aligned_first_marker": {"offsets": list(range(-5, T)), view["gate"]: [0.5] * (T + 5)}})
    for lr in (1e-3, 1e-2):
        write_record(root, f"tune_{lr}", lr=lr, stage="tune", val=lr)
    rows = [{**{c: "" for c in COLUMNS}, "preset": p, "cell": p, "path": "fast", "seq_len": T, "batch": 8,
             "hidden": 16, "ms_fwd_bwd": 2.0, "tokens_per_s_fwd_bwd": 8 * T / 2.0 * 1000}
            for p in ("gru", "lstm") for T in (50, 100)]
    pd.DataFrame(rows, columns=COLUMNS).to_csv(root / "speed_bench.csv", index=False)


def labelled(ax) -> list:
    """The artists of ``ax`` that carry a legend label: lines, scatters, error bars."""
    artists = [*ax.get_lines(), *ax.collections, *ax.containers]
    return [a for a in artists if not str(a.get_label()).startswith("_")]


def colour_of(artist) -> tuple:
    from matplotlib.collections import Collection
    from matplotlib.colors import to_rgb

    if isinstance(artist, Collection):
        return to_rgb(artist.get_facecolor()[0])
    return to_rgb(artist.get_color() if hasattr(artist, "get_color") else artist[0].get_color())
