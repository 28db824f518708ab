"""Run records as a pandas DataFrame: one row per record, nested fields flattened, and the
compact per-run table printed at the end of a sweep and by ``rnnbench table``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Union

import pandas as pd

from .record import RunRecord
from .store import load_records as load_record_list


def record_row(record: RunRecord) -> dict:
    """One flat row: the record's plain fields, ``task_params`` (e.g. ``seq_len``), the primary
    metric's ``test`` and ``val_best``, its ``baseline``, the solved criterion's ``solved_threshold``,
    every resolved config value as ``config.<dotted key>``; ``length_generalisation`` stays a dict."""
    data = record.to_dict()
    metric, metrics = record.metric, record.metrics or {}
    row = {k: v for k, v in data.items() if not isinstance(v, (dict, list))}
    row.update(record.task_params or {})
    row["test"] = as_float((metrics.get("test") or {}).get(metric))
    row["val_best"] = as_float((metrics.get("val_best") or {}).get(metric))
    row["baseline"] = as_float((record.baseline or {}).get(metric))
    row["solved_threshold"] = as_float((record.solved_criterion or {}).get("threshold"))
    row["length_generalisation"] = metrics.get("length_generalisation")
    row.update(_flatten(record.config or {}, "config."))
    return row


def records_frame(records: Iterable[RunRecord]) -> pd.DataFrame:
    return pd.DataFrame([record_row(r) for r in records])


def load_records(root: Union[str, Path]) -> pd.DataFrame:
    """One row per run record under ``root`` (reused runs of sweep jobs included)."""
    return records_frame(load_record_list(root))


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


def summary_table(records) -> str:
    """A plain-text table: one line per run, sorted by task, T, cell and seed."""
    frame = records if isinstance(records, pd.DataFrame) else records_frame(records)
    columns = [c for c in ("task", "seq_len", "cell_preset", "cell", "hidden_size", "bidirectional", "num_layers",
                           "seed", "status", "metric", "test", "baseline", "solved", "steps", "steps_to_solve",
                           "params", "tokens_per_s", "wall_time_s") if c in frame.columns]
    sort = [c for c in ("task", "seq_len", "cell_preset", "cell", "seed") if c in frame.columns]
    table = frame[columns].sort_values(sort, kind="stable").rename(columns={"cell_preset": "preset"})
    return table.to_string(index=False, float_format=lambda x: f"{x:.4g}", na_rep="-")
