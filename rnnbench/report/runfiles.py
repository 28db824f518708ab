"""The files a run writes beside its record, which the plots read: ``metrics.csv`` (learning
curves), ``diagnostics.json`` (:mod:`rnnbench.diagnostics`: gradient norms through time
and the generic ``retention`` / ``saturation`` views), and the CSV files of
``rnnbench-speed`` found under the results folder. An unreadable file is skipped with a
warning naming it; the record's own numbers never come from here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from ..files import read_json

log = logging.getLogger(__name__)

SPEED_COLUMNS = {"preset", "path", "seq_len", "ms_fwd_bwd", "tokens_per_s_fwd_bwd"}


def learning_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """Validation curves of the primary metric from every run's ``metrics.csv``: the run's
    ``run_dir``, ``step``, ``value``."""
    parts = []
    for run_dir, metric in zip(runs["run_dir"], runs["metric"]):
        path = Path(str(run_dir)) / "metrics.csv"
        if not isinstance(metric, str) or not path.is_file():
            continue
        try:
            csv = pd.read_csv(path)
        except (OSError, ValueError, pd.errors.EmptyDataError):
            log.warning("skipping unreadable %s", path)
            continue
        column = f"val/{metric}"
        if column in csv.columns and "step" in csv.columns:
            curve = csv[["step", column]].dropna().rename(columns={column: "value"})
            parts.append(curve.assign(run_dir=run_dir))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["step", "value", "run_dir"])


def _values(view) -> Optional[np.ndarray]:
    """A list of numbers (None: missing) as floats with NaN, or None."""
    if not isinstance(view, list) or not view:
        return None
    return np.array([np.nan if v is None else float(v) for v in view])


def diagnostics(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run with a ``diagnostics.json`` and per view: ``run_dir``, ``view``
    (``gradient``, ``retention``, ``saturation``, ``aligned``), ``x`` and ``values`` (arrays).
    ``aligned``: the retention gate aligned on the task's first event (offsets from it)."""
    rows = []
    for run_dir, name in zip(runs["run_dir"], runs["diagnostics"]):
        if not isinstance(name, str):
            continue
        path = Path(str(run_dir)) / name
        try:
            data = read_json(path)
        except (OSError, ValueError) as exc:
            log.warning("skipping unreadable diagnostics %s: %s", path, exc)
            continue
        views = {"gradient": data.get("grad_norm"), "retention": (data.get("retention") or {}).get("values"),
                 "saturation": (data.get("saturation") or {}).get("values")}
        for view, values in views.items():
            values = _values(values)
            if values is not None:
                rows.append({"run_dir": run_dir, "view": view, "x": np.arange(len(values)), "values": values})
        aligned, gate = data.get("aligned_first_marker") or {}, (data.get("retention") or {}).get("gate")
        if gate and _values(aligned.get(gate)) is not None:
            rows.append({"run_dir": run_dir, "view": "aligned", "x": np.array(aligned["offsets"]),
                         "values": _values(aligned[gate])})
    return pd.DataFrame(rows, columns=["run_dir", "view", "x", "values"])


def load_speed(root: Path, out: Optional[Path] = None) -> pd.DataFrame:
    """Rows of every ``rnnbench-speed`` CSV under ``root`` (recognised by its columns), except
    the ``speed.csv`` tables of reports: in ``out`` or in a ``report`` folder below ``root``."""
    parts = []
    for path in sorted(root.rglob("*.csv")):
        in_report = "report" in path.relative_to(root).parts[:-1] or (
            out is not None and path.resolve().is_relative_to(out.resolve()))
        if path.name == "metrics.csv" or in_report:
            continue
        try:
            csv = pd.read_csv(path)
        except (OSError, ValueError, pd.errors.EmptyDataError):
            continue
        if SPEED_COLUMNS <= set(csv.columns):
            parts.append(csv.assign(source=str(path)))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
