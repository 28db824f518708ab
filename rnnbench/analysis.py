"""Reading run records back: every ``summary.json`` under a results root becomes one
row of a pandas DataFrame, and :func:`summary_table` turns that into the compact
per-run table printed at the end of a sweep.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .records import read_records, record_paths


def load_records(root: str | Path) -> pd.DataFrame:
    """One row per run record under ``root`` (searched recursively), and per record a
    sweep job under ``root`` reused from an earlier run (see ``records.REUSED_FILE``).

    Unreadable records are skipped with a warning naming the file. Nested fields
    are flattened: ``task_params.seq_len`` -> ``seq_len``, the primary test and
    best-validation metrics -> ``test`` and ``val_best``, the solved criterion ->
    ``metric_mode`` and ``solved_threshold``, every resolved config value ->
    ``config.<dotted key>`` (e.g. ``config.optim.lr``); the per-length results
    (``metrics.length_generalisation``) stay one dict-valued column.
    """
    root = Path(root)
    rows = []
    for path, record in read_records(record_paths(root)):
        metric = record.get("metric")
        metrics = record.get("metrics") or {}
        row = {k: v for k, v in record.items() if not isinstance(v, (dict, list))}
        row.update(record.get("task_params") or {})
        row["run_dir"] = record.get("run_dir", str(path.parent))
        row["test"] = as_float((metrics.get("test") or {}).get(metric))
        row["val_best"] = as_float((metrics.get("val_best") or {}).get(metric))
        row["baseline"] = as_float((record.get("baseline") or {}).get(metric))
        criterion = record.get("solved_criterion") or {}
        row["metric_mode"], row["solved_threshold"] = criterion.get("mode"), as_float(criterion.get("threshold"))
        row["length_generalisation"] = metrics.get("length_generalisation")
        row.update(_flatten(record.get("config") or {}, "config."))
        rows.append(row)
    return pd.DataFrame(rows)


def _flatten(tree: dict, prefix: str) -> dict:
    """``{"optim": {"lr": 0.1}}`` -> ``{"config.optim.lr": 0.1}``; lists become strings (hashable columns)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value) if isinstance(value, list) else value
    return flat


def as_float(value) -> float:
    """``float(value)``, or NaN for None and anything that is no number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def summary_table(frame: pd.DataFrame) -> str:
    """A plain-text table: one line per run, sorted by task, T, cell and seed."""
    columns = [c for c in ("task", "seq_len", "cell_preset", "cell", "hidden_size", "bidirectional", "num_layers", "seed",
                           "status", "metric", "test", "baseline", "solved", "steps", "steps_to_solve",
                           "params", "tokens_per_s", "wall_time_s") if c in frame.columns]
    sort = [c for c in ("task", "seq_len", "cell_preset", "cell", "seed") if c in frame.columns]
    table = frame[columns].sort_values(sort, kind="stable").rename(columns={"cell_preset": "preset"})
    return table.to_string(index=False, float_format=lambda x: f"{x:.4g}", na_rep="-")
