"""Run records as one pandas DataFrame: one row per record, read only through the typed
:class:`~rnnbench.record.RunRecord` (:func:`rnnbench.store.read_records`).

Every column is computed from the record itself, for every record, so no column is
ever missing or filled in afterwards:

- the record's plain fields (``status``, ``cell_preset``, ``params``, ``state_size``, ...);
- ``task``: the task's registry name, with its dataset when it has one (``lm (ptb_word)``:
  runs on different corpora are different comparisons), ``task_name`` the registry name;
- ``subject``: the task and its preset when the preset is not the task (``copy [copy_small]``);
- ``T``: the length ``task_params.seq_len`` (the key a memory-horizon search varies, by
  convention of :meth:`rnnbench.task.Task.key_parameters`), else the configured
  ``task.seq_len`` (a run refused before it started has no task parameters), else NaN;
- ``test``, ``val_best``, ``baseline``: the primary metric's test score, best validation
  score and memoryless baseline; ``solved_threshold`` from the solved criterion;
- ``stage`` (``tune``, ``horizon`` or None: :mod:`rnnbench.config`) and ``lr`` from the config;
- ``comparison``: the resolved config without what does not change the experiment (the
  seeds, :data:`rnnbench.record.HASH_EXCLUDED_KEYS`, ``plugins`` paths, ``stage``) and
  without the length ``task.seq_len`` (its own column ``T``), as a flat dict;
  ``config_key`` its canonical JSON: runs with equal ``config_key`` and ``T`` differ only
  in their seeds;
- ``task_params.<key>`` and ``config.<dotted key>`` for filters (``--where``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Iterable, Optional, Sequence

import pandas as pd

from .. import config as config_schema
from ..errors import ConfigError, is_number
from ..record import ENDED, HASH_EXCLUDED_KEYS, RunRecord
from ..store import read_records, record_paths

LENGTH = "seq_len"  # the task parameter that is the sequence length T
SEED_KEYS = ("seed", "data_seed", "init_seed")
# Keys that never split a comparison: the seeds (what a row averages over), what the config
# hash ignores (where and how verbosely a run reports), plugin file paths, the protocol stage.
IGNORED_KEYS = (*SEED_KEYS, *HASH_EXCLUDED_KEYS, "plugins", "stage", f"task.{LENGTH}")
# The record's fields that hold dicts or lists (flattened below, or read where they are needed).
NESTED_FIELDS = {f.name for f in dataclasses.fields(RunRecord) if "dict" in str(f.type) or "list" in str(f.type)}
MAX_DIFFERS = 4  # differing keys named in a label before "and N more"


def as_float(value) -> float:
    """``float(value)``, or NaN for None and anything that is no number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": 0.1}``; lists become strings (hashable)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value) if isinstance(value, (list, tuple)) else value
    return flat


def comparison(record: RunRecord) -> dict[str, Any]:
    """The record's config as a flat dict without :data:`IGNORED_KEYS` (a config from an older
    rnnbench gets the core defaults it predates: :func:`rnnbench.config.with_defaults`)."""
    if not isinstance(record.config, dict):
        return {}
    flat = flatten(config_schema.with_defaults(record.config))
    return {k: v for k, v in sorted(flat.items())
            if not any(k == key or k.startswith(key + ".") for key in IGNORED_KEYS)}


def record_row(record: RunRecord) -> dict[str, Any]:
    """One flat row of the frame (see the module docstring)."""
    data = record.to_dict()
    metrics, config = record.metrics or {}, record.config or {}
    row = {k: v for k, v in data.items() if k not in NESTED_FIELDS}
    # A version-1 record may name no presets: the cell and task it names are its presets.
    row["cell_preset"], row["task_preset"] = record.cell_preset or record.cell, record.task_preset or record.task
    row["task_name"] = record.task
    dataset = (record.task_params or {}).get("dataset")
    row["task"] = f"{record.task} ({dataset})" if isinstance(dataset, str) and dataset else record.task
    # What one plot shows: the task, and its preset when that is not the task itself (copy [copy_small]).
    row["subject"] = row["task"] if row["task_preset"] == record.task else f"{row['task']} [{row['task_preset']}]"
    length = (record.task_params or {}).get(LENGTH, (config.get("task") or {}).get(LENGTH))
    row["T"] = float(length) if is_number(length) else math.nan
    row["test"] = as_float(record.test_score)
    row["val_best"] = as_float((metrics.get("val_best") or {}).get(record.metric))
    row["baseline"] = as_float((record.baseline or {}).get(record.metric))
    row["solved_threshold"] = as_float((record.solved_criterion or {}).get("threshold"))
    row["length_generalisation"] = metrics.get("length_generalisation") or {}
    row["stage"] = config.get("stage")
    row["lr"] = as_float((config.get("optim") or {}).get("lr"))
    row["tuning"] = (record.protocol or {}).get("tuning") or {}
    row["comparison"] = comparison(record)
    row["config_key"] = json.dumps(row["comparison"], sort_keys=True, default=str)
    row.update({f"task_params.{k}": v for k, v in (record.task_params or {}).items()})
    row.update(flatten(config, "config."))
    return row


def records_frame(records: Iterable[RunRecord]) -> pd.DataFrame:
    return pd.DataFrame([record_row(r) for r in records])


def load_frame(root: str | os.PathLike) -> pd.DataFrame:
    """One row per run record under ``root`` (reused runs of sweep jobs included), its
    ``run_dir`` the folder the record is in now (results may have been moved or copied since
    the run wrote them; metrics.csv and diagnostics are read from there)."""
    return records_frame(dataclasses.replace(record, run_dir=str(path.parent))
                         for path, record in read_records(record_paths(root)))


# --- selecting -----------------------------------------------------------------------------
def column_for(frame: pd.DataFrame, key: str) -> str:
    """The column a user's key names: a record field or frame column as is, else a config key
    (``optim.lr``), else a task parameter (``n_symbols``)."""
    for column in (key, f"config.{key}", f"task_params.{key}"):
        if column in frame.columns:
            return column
    fields = sorted(c for c in frame.columns if "." not in c)
    known = sorted(c[len("config."):] for c in frame.columns if c.startswith("config."))
    raise ConfigError(f"no record field or config key {key!r}. Record fields: {', '.join(fields)}; "
                      f"config keys: {', '.join(known)}.")


def select(frame: pd.DataFrame, tasks: Sequence[str] = (), cells: Sequence[str] = (),
           where: Sequence[str] = ()) -> pd.DataFrame:
    """Rows of the given tasks (label, registry name or preset) and cells (preset or registry
    name) meeting every ``KEY=VALUE``."""
    import yaml

    if tasks:
        frame = frame[frame["task"].isin(tasks) | frame["task_name"].isin(tasks) | frame["task_preset"].isin(tasks)]
    if cells:
        frame = frame[frame["cell_preset"].isin(cells) | frame["cell"].isin(cells)]
    for condition in where:
        key, sep, text = condition.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--where {condition!r} is invalid: expected KEY=VALUE, e.g. optim.lr=0.001.")
        column = column_for(frame, key.strip())
        wanted = yaml.safe_load(text)
        frame = frame[frame[column].map(lambda value: _equal(value, wanted))]
    return frame


def _equal(value, wanted) -> bool:
    if is_number(wanted) and is_number(value):
        return math.isclose(float(value), float(wanted), rel_tol=1e-9)
    return str(value) == str(wanted)


# --- what a row compares ------------------------------------------------------------------------
def group_columns(frame: pd.DataFrame, group_by: Sequence[str]) -> list[str]:
    """The columns the report shows for ``--group-by``; the cell preset is always one."""
    return list(dict.fromkeys(["cell_preset", *(column_for(frame, key) for key in group_by)]))


def differs_labels(frame: pd.DataFrame, identity: list[str]) -> pd.Series:
    """For runs that agree on ``identity`` but not on ``config_key``: the config keys whose
    values differ, with this run's values (``"task.n_symbols=10, cell.hidden_size=128"``);
    "" where the runs of ``identity`` share one config."""
    labels = pd.Series("", index=frame.index, dtype=object)
    for _, runs in frame.groupby(identity, dropna=False, sort=False):
        variants = runs.drop_duplicates("config_key")
        if len(variants) < 2:
            continue
        keys = sorted({k for c in variants["comparison"] for k in c})
        missing = object()
        differ = [k for k in keys if len({repr(c.get(k, missing)) for c in variants["comparison"]}) > 1]
        for index, comparison_ in zip(runs.index, runs["comparison"]):
            parts = [f"{k}={comparison_.get(k, '(unset)')}" for k in differ[:MAX_DIFFERS]]
            extra = f" and {len(differ) - MAX_DIFFERS} more" if len(differ) > MAX_DIFFERS else ""
            labels[index] = ", ".join(parts) + extra
    return labels


def label_runs(frame: pd.DataFrame, group_by: Sequence[str]) -> pd.DataFrame:
    """``frame`` with ``group`` (the ``--group-by`` values as one label), ``differs`` (the keys
    that split runs otherwise alike, across T: a curve over T is one config) and ``series``
    (group and differs: one line of a plot, one row of the horizon table)."""
    columns = group_columns(frame, group_by)
    group = frame[columns].astype(str).agg(" / ".join, axis=1) if len(frame) else pd.Series(dtype=object)
    frame = frame.assign(group=group)
    differs = differs_labels(frame, ["task", "task_preset", "metric", *columns])
    series = [g if not d else f"{g} [{d}]" for g, d in zip(frame["group"], differs)]
    return frame.assign(differs=differs, series=series)


def summary_table(records) -> str:
    """A plain-text table: one line per run, sorted by task, T, cell and seed (``rnnbench
    table`` and the end of a sweep)."""
    frame = records_frame(records)
    columns = ["task", "T", "cell_preset", "cell", "hidden_size", "bidirectional", "num_layers", "seed", "status",
               "metric", "test", "baseline", "solved", "steps", "steps_to_solve", "params", "state_size",
               "tokens_per_s", "wall_time_s"]
    table = frame[columns].sort_values(["task", "T", "cell_preset", "seed"], kind="stable", na_position="last")
    return table.rename(columns={"cell_preset": "preset"}).to_string(index=False, float_format=lambda x: f"{x:.4g}",
                                                                    na_rep="-")


def first(values: Iterable) -> Optional[Any]:
    """The first value that is not None or NaN."""
    return next((v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))), None)
