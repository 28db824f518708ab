"""The report: ``rnnbench-report RESULTS_DIR [--out DIR]`` turns run records into
tables, plots and ``report.md``.

    rnnbench-report results                                   everything under results/
    rnnbench-report results/sweeps/2026-11-22 --out /tmp/rep  one day's sweeps
    rnnbench-report results --task adding --cell gru,lstm     a subset
    rnnbench-report results --where optim.lr=0.001 --group-by cell_preset,cell.hidden_size

Every ``summary.json`` under RESULTS_DIR becomes one row
(:func:`rnnbench.analysis.load_records`); ``--task``, ``--cell`` (preset or cell
name) and ``--where KEY=VALUE`` (a record field, or a config key such as
``optim.lr``) filter the rows; ``--group-by`` chooses what is compared (default
the cell preset; any record field or config key, several separated by commas).

Statistics
----------
Runs are grouped by task, the ``--group-by`` keys and the sequence length T
(``seq_len``); the runs of a group differ only in what was not grouped on,
normally the seed. Tasks on real data (language modelling, translation) have no
T and are grouped per dataset instead: the ``task`` column reads ``lm (ptb_word)``,
``--task lm`` selects every dataset. For each group:

- ``mean`` and ``ci95`` of the task's primary test metric over the runs that have
  one: ``ci95`` is the half-width of the 95% confidence interval of the mean from
  the t distribution, ``t(0.975, n−1) · s / √n`` with ``s`` the sample standard
  deviation (n−1 denominator); empty for n = 1. With 3 seeds t = 4.30, so the
  interval is wide: it says how well 3 seeds pin the mean down, no better.
- ``solved_rate`` = solved runs / runs that ended (finished or diverged; a
  diverged run counts as not solved). Runs that ``failed`` (a crash or bad input)
  or are still ``running`` are not evidence about the cell: they are counted in
  their own columns and listed under "Runs that did not finish", never dropped.
- ``params`` (trainable, whole model; median), ``tokens_per_s`` (training
  throughput; mean), ``steps_to_solve`` (median over the solved runs).

**Memory horizon**: per task and group, the longest T at which a strict majority
of the ended runs solved the task (``-`` if none did), with every T's
solved/ended counts beside it; only for tasks with a T and a solved criterion.

Outputs in ``--out`` (default ``RESULTS_DIR/report``): ``results.{md,csv,tex}``,
``horizon.{md,csv,tex}``, ``problems.{md,csv}`` (runs that did not finish),
``length_generalisation.{md,csv}`` and ``speed.{md,csv}`` when there are such
records, ``plots/*.png`` and ``*.svg`` (seaborn on matplotlib's Agg backend),
and ``report.md`` embedding them by relative paths.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from .analysis import as_float, load_records
from .errors import ConfigError, is_number

log = logging.getLogger(__name__)

DEFAULT_GROUP_BY = ("cell_preset",)
ENDED = ("finished", "diverged")  # statuses that say something about the cell
LENGTH = "seq_len"


# --- loading and selecting -----------------------------------------------------------------
def load_runs(root: str | Path) -> pd.DataFrame:
    """Every run record under ``root`` (see :func:`~rnnbench.analysis.load_records`),
    with the columns the report needs present even when no record has them."""
    frame = load_records(root)
    if frame.empty:
        return frame
    for column in ("cell_preset", "task", "metric", "status", "solved", LENGTH, "test", "baseline", "params",
                   "tokens_per_s", "steps_to_solve", "metric_mode", "solved_threshold", "length_generalisation",
                   "diagnostics", "seed", "error"):
        if column not in frame.columns:
            frame[column] = None
    frame["cell_preset"] = frame["cell_preset"].fillna(frame["cell"])
    # Tasks on real data are compared per dataset: "lm (ptb_word)", "translation (multi30k)".
    # Synthetic tasks have no dataset and keep their name; task_name is always the registry name.
    frame["task_name"] = frame["task"]
    if "dataset" in frame.columns:
        frame["task"] = [f"{task} ({data})" if isinstance(data, str) and data else task
                         for task, data in zip(frame["task"], frame["dataset"])]
    if "config.task.seq_len" in frame.columns:  # a run refused before it started has no task_params
        frame[LENGTH] = frame[LENGTH].fillna(frame["config.task.seq_len"])
    frame["solved"] = frame["solved"].map(lambda v: isinstance(v, (bool, np.bool_)) and bool(v))
    return frame


def column_for(frame: pd.DataFrame, key: str) -> str:
    """The column a user's key names: a record field as is, else a config key (``optim.lr``)."""
    if key in frame.columns:
        return key
    if f"config.{key}" in frame.columns:
        return f"config.{key}"
    known = sorted(c[len("config."):] for c in frame.columns if c.startswith("config."))
    raise ConfigError(f"no record field or config key {key!r}. Record fields: "
                      f"{', '.join(sorted(c for c in frame.columns if not c.startswith('config.')))}; "
                      f"config keys: {', '.join(known)}.")


def select(frame: pd.DataFrame, tasks: Sequence[str] = (), cells: Sequence[str] = (),
           where: Sequence[str] = ()) -> pd.DataFrame:
    """Rows of the given tasks and cells (preset or registry name) meeting every ``KEY=VALUE``."""
    import yaml

    if tasks:
        frame = frame[frame["task"].isin(tasks) | frame["task_name"].isin(tasks)]
    if cells:
        frame = frame[frame["cell_preset"].isin(cells) | frame["cell"].isin(cells)]
    for condition in where:
        key, sep, text = condition.partition("=")
        if not sep or not key:
            raise ConfigError(f"--where {condition!r} is invalid: expected KEY=VALUE, e.g. optim.lr=0.001.")
        column = column_for(frame, key.strip())
        wanted = yaml.safe_load(text)
        frame = frame[frame[column].map(lambda value: _equal(value, wanted))]
    return frame


def _equal(value, wanted) -> bool:
    if is_number(wanted) and isinstance(value, (int, float)):
        return not isinstance(value, bool) and math.isclose(float(value), float(wanted), rel_tol=1e-9)
    return str(value) == str(wanted)


# --- statistics ------------------------------------------------------------------------------
def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, int]:
    """``(mean, half-width of the t confidence interval, n)`` of the finite ``values``
    (half-width NaN when n < 2)."""
    from scipy import stats

    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(finite)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(finite) / n
    if n < 2:
        return mean, math.nan, n
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1))
    return mean, float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n), n


def group_keys(frame: pd.DataFrame, group_by: Sequence[str]) -> list[str]:
    return ["task", "metric", *[column_for(frame, key) for key in group_by], LENGTH]


def results_table(frame: pd.DataFrame, group_by: Sequence[str] = DEFAULT_GROUP_BY) -> pd.DataFrame:
    """One row per task × group × T: run counts by status, metric mean and CI, solved rate, cost."""
    keys = group_keys(frame, group_by)
    rows = []
    for values, runs in frame.groupby(keys, dropna=False, sort=True):
        mean, ci95, n = mean_ci(runs["test"].tolist())
        ended = runs[runs["status"].isin(ENDED)]
        solved = ended[ended["solved"]]
        row = dict(zip(keys, values))
        row.update(
            group=runs["group"].iloc[0],
            runs=len(runs), finished=int((runs["status"] == "finished").sum()),
            diverged=int((runs["status"] == "diverged").sum()), failed=int((runs["status"] == "failed").sum()),
            other=int((~runs["status"].isin(("finished", "diverged", "failed"))).sum()),
            n=n, mean=mean, ci95=ci95, std=_std(runs["test"]), baseline=_mean(runs["baseline"]),
            solved=len(solved), ended=len(ended), solved_rate=len(solved) / len(ended) if len(ended) else math.nan,
            steps_to_solve=_median(solved["steps_to_solve"]), params=_median(runs["params"]),
            tokens_per_s=_mean(runs["tokens_per_s"]), metric_mode=_first(runs["metric_mode"]),
            solved_threshold=_mean(runs["solved_threshold"]),
        )
        rows.append(row)
    return pd.DataFrame(rows)


def horizon_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per task × group: the longest T solved by a strict majority of the ended runs.
    Only tasks with a length T and a solved criterion (copy, adding) have a horizon."""
    keys = [k for k in results.columns[: results.columns.get_loc(LENGTH)] if k != "metric"]
    results = results[results[LENGTH].notna() & _has_criterion(results)]
    rows = []
    for values, group in results.groupby(keys, dropna=False, sort=True):
        group = group.sort_values(LENGTH)
        majority = group[(group["ended"] > 0) & (group["solved"] * 2 > group["ended"])]
        row = dict(zip(keys, values))
        row["horizon"] = majority[LENGTH].max() if not majority.empty else None
        row["solved / ended by T"] = ", ".join(
            f"{_length(T)}: {s}/{e}" for T, s, e in zip(group[LENGTH], group["solved"], group["ended"]))
        rows.append(row)
    return pd.DataFrame(rows, columns=[*keys, "horizon", "solved / ended by T"])


def _has_criterion(results: pd.DataFrame) -> pd.Series:
    """Rows of tasks with a solved criterion (a group whose runs all failed before
    starting has none recorded, but its task does)."""
    return results.groupby("task")["solved_threshold"].transform(lambda t: t.notna().any()).astype(bool)


def problems_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Every run that did not finish normally, with its error."""
    bad = frame[frame["status"] != "finished"]
    columns = ["task", "cell_preset", LENGTH, "seed", "status", "error", "run_dir"]
    table = bad[columns].sort_values(["task", "cell_preset", LENGTH, "seed"], na_position="last", kind="stable")
    return table.assign(error=table["error"].map(lambda e: str(e).splitlines()[0][:160] if e else ""))


def length_table(long: pd.DataFrame) -> pd.DataFrame:
    """Per task × group × training T × evaluation T (from :func:`length_rows`): metric mean
    and CI, solved rate."""
    if long.empty:
        return long
    keys = ["task", "metric", "group", "train T", "eval T"]
    rows = []
    for values, runs in long.groupby(keys, sort=True):
        mean, ci95, n = mean_ci(runs["value"].tolist())
        rows.append({**dict(zip(keys, values)), "n": n, "mean": mean, "ci95": ci95,
                     "solved_rate": runs["solved"].mean(), "baseline": _mean(runs["baseline"])})
    return pd.DataFrame(rows)


def length_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per run (with its ``group``) and evaluated length (the training length
    included, from the test)."""
    rows = []
    for _, run in frame.iterrows():
        per_length = run["length_generalisation"]
        if not isinstance(per_length, dict) or not per_length:
            continue
        base = {"task": run["task"], "metric": run["metric"], "metric_mode": run["metric_mode"], "group": run["group"],
                "train T": run[LENGTH]}
        rows.append({**base, "eval T": run[LENGTH], "value": run["test"], "solved": bool(run["solved"]),
                     "baseline": run["baseline"]})
        for T, metrics in per_length.items():
            rows.append({**base, "eval T": int(T), "value": as_float(metrics.get(run["metric"])),
                         "solved": bool(metrics.get("solved")), "baseline": as_float(metrics.get("baseline"))})
    return pd.DataFrame(rows)


def group_labels(frame: pd.DataFrame, group_by: Sequence[str]) -> pd.Series:
    """The compared group of each row as one label (``"gru"``, ``"gru / 0.001"``)."""
    columns = [column_for(frame, key) for key in group_by]
    return frame[columns].astype(str).agg(" / ".join, axis=1)


def _first(series: pd.Series):
    values = series.dropna()
    return values.iloc[0] if len(values) else None


def _mean(series: pd.Series) -> float:
    values = pd.to_numeric(series, errors="coerce").dropna()
    return float(values.mean()) if len(values) else math.nan


def _median(series: pd.Series) -> float:
    values = pd.to_numeric(series, errors="coerce").dropna()
    return float(values.median()) if len(values) else math.nan


def _std(series: pd.Series) -> float:
    values = pd.to_numeric(series, errors="coerce").dropna()
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan


def _length(T) -> str:
    return "-" if T is None or (isinstance(T, float) and math.isnan(T)) else str(int(T))


# --- rendering tables --------------------------------------------------------------------------
def display_results(results: pd.DataFrame) -> pd.DataFrame:
    """The results table for people: ``mean ± ci95``, solved k/n, status counts in words."""
    def metric(row) -> str:
        if row["n"] == 0:
            return "-"
        text = f"{row['mean']:.4g}"
        return text + (f" ± {row['ci95']:.2g}" if row["n"] > 1 else " (n=1)")

    def status(row) -> str:
        parts = [f"{row[s]} {s}" for s in ("finished", "diverged", "failed", "other") if row[s]]
        return ", ".join(parts)

    keys = list(results.columns[: results.columns.get_loc(LENGTH) + 1])
    table = results[keys].rename(columns={LENGTH: "T"}).copy()
    table["T"] = table["T"].map(_length)
    table["test (mean ± 95% CI)"] = results.apply(metric, axis=1)
    table["baseline"] = results["baseline"].map(lambda b: f"{b:.4g}" if math.isfinite(b) else "-")
    table["solved"] = [f"{s}/{e}" if criterion else "-"  # "-": the task has no solved criterion
                       for s, e, criterion in zip(results["solved"], results["ended"], _has_criterion(results))]
    table["runs"] = results.apply(status, axis=1)
    table["params"] = results["params"].map(lambda p: f"{p:,.0f}" if math.isfinite(p) else "-")
    table["tokens/s"] = results["tokens_per_s"].map(lambda t: f"{t:,.0f}" if math.isfinite(t) else "-")
    return table


def display_horizon(horizon: pd.DataFrame) -> pd.DataFrame:
    return horizon.assign(horizon=horizon["horizon"].map(_length))


def display_lengths(lengths: pd.DataFrame) -> pd.DataFrame:
    """One row per task × group × training T, one column per evaluation T: ``mean (solved k%)``."""
    cells = lengths.assign(value=[
        "-" if n == 0 else f"{m:.3g} ({100 * r:.0f}% solved)"
        for n, m, r in zip(lengths["n"], lengths["mean"], lengths["solved_rate"])])
    table = cells.pivot_table(index=["task", "metric", "group", "train T"], columns="eval T", values="value",
                              aggfunc="first").reset_index()
    table.columns = [f"T={c}" if isinstance(c, (int, np.integer)) else c for c in table.columns]
    return table.fillna("")


def write_table(table: pd.DataFrame, out: Path, stem: str, latex: bool = True,
                numbers: Optional[pd.DataFrame] = None) -> dict[str, Path]:
    """``stem.md`` (GitHub Markdown) and, if ``latex``, ``stem.tex`` (booktabs) of ``table``;
    ``stem.csv`` of ``numbers`` (the unformatted values) if given, else of ``table``."""
    paths = {"md": out / f"{stem}.md", "csv": out / f"{stem}.csv"}
    paths["md"].write_text(markdown(table) + "\n", encoding="utf-8")
    (table if numbers is None else numbers).to_csv(paths["csv"], index=False)
    if latex:
        paths["tex"] = out / f"{stem}.tex"
        tex = table.astype(str).to_latex(index=False, escape=True).replace("±", r"$\pm$")
        paths["tex"].write_text(tex, encoding="utf-8")
    return paths


def markdown(table: pd.DataFrame) -> str:
    return table.to_markdown(index=False, floatfmt=".4g") if not table.empty else "(none)"


# --- plots ------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    return plt, sns


def _save(fig, out: Path, name: str) -> Path:
    """``plots/name.png`` and ``plots/name.svg``; returns the PNG path."""
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")  # "lm (ptb_word)" -> "lm_ptb_word"
    fig.tight_layout()
    fig.savefig(plots / f"{name}.png", dpi=110)
    fig.savefig(plots / f"{name}.svg")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return plots / f"{name}.png"


def _log_scale_fits(values: Sequence[float], mode) -> bool:
    finite = [v for v in values if math.isfinite(v)]
    return mode == "min" and bool(finite) and min(finite) > 0 and max(finite) / min(finite) > 20


def plot_metric_vs_length(results: pd.DataFrame, out: Path, title: str = "group") -> list[tuple[str, Path]]:
    """Per task: test metric vs T, one line per group with its 95% CI band, the baseline dashed."""
    plt, sns = _pyplot()
    made = []
    for task, rows in results.groupby("task", sort=True):
        rows = rows.dropna(subset=[LENGTH])
        if rows.empty or rows["n"].sum() == 0:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        palette = dict(zip(sorted(rows["group"].astype(str).unique()), sns.color_palette(n_colors=rows["group"].nunique())))
        for label, line in rows.groupby(rows["group"].astype(str), sort=True):
            line = line[line["n"] > 0].sort_values(LENGTH)
            if line.empty:
                continue
            ax.plot(line[LENGTH], line["mean"], marker="o", label=label, color=palette[label])
            low, high = line["mean"] - line["ci95"].fillna(0), line["mean"] + line["ci95"].fillna(0)
            ax.fill_between(line[LENGTH], low, high, alpha=0.18, color=palette[label], linewidth=0)
        baseline = rows.groupby(LENGTH)["baseline"].mean()
        ax.plot(baseline.index, baseline.values, "k--", label="memoryless baseline")
        threshold = rows["solved_threshold"].dropna()
        if not threshold.empty:
            ax.axhline(threshold.iloc[0], color="grey", linestyle=":", label="solved threshold")
        metric, mode = rows["metric"].iloc[0], rows["metric_mode"].iloc[0]
        shown = [v for v in [*rows["mean"], *baseline.values, *threshold] if math.isfinite(v)]
        if _log_scale_fits(shown, mode):
            ax.set_yscale("log")
        else:  # bands wider than the data (n = 2 seeds: t = 12.7) are cut at the axes
            low, high = min(shown), max(shown)
            ax.set_ylim(low - 0.1 * (high - low or 1), high + 0.1 * (high - low or 1))
        ax.set_xscale("log" if rows[LENGTH].max() / max(rows[LENGTH].min(), 1) >= 8 else "linear")
        ax.set(xlabel="sequence length T", ylabel=f"test {metric}", title=f"{task}: test {metric} vs T (mean, 95% CI)")
        ax.legend(fontsize="small", title=title, bbox_to_anchor=(1.02, 1), loc="upper left")
        made.append((f"{task}: test {metric} vs T", _save(fig, out, f"metric_vs_T_{task}")))
    return made


def plot_solved_heatmap(results: pd.DataFrame, out: Path, title: str = "group") -> list[tuple[str, Path]]:
    """Per task: solved rate, group × T."""
    plt, sns = _pyplot()
    made = []
    for task, rows in results.groupby("task", sort=True):
        grid = rows.dropna(subset=[LENGTH]).pivot_table(index="group", columns=LENGTH, values="solved_rate",
                                                        aggfunc="mean")
        if grid.empty:
            continue
        grid.columns = [_length(c) for c in grid.columns]
        fig, ax = plt.subplots(figsize=(1.2 + 0.9 * grid.shape[1], 1.2 + 0.45 * grid.shape[0]))
        sns.heatmap(grid, annot=True, fmt=".2f", vmin=0, vmax=1, cmap="viridis", cbar_kws={"label": "solved rate"},
                    ax=ax)
        ax.set(xlabel="T", ylabel=title, title=f"{task}: solved rate")
        made.append((f"{task}: solved rate", _save(fig, out, f"solved_rate_{task}")))
    return made


def plot_metric_vs_throughput(results: pd.DataFrame, out: Path, title: str = "group") -> list[tuple[str, Path]]:
    """Per task: test metric vs training tokens/s (cost against benefit), marker size by T."""
    plt, sns = _pyplot()
    made = []
    for task, rows in results.groupby("task", sort=True):
        rows = rows[(rows["n"] > 0) & rows["tokens_per_s"].notna()].copy()
        if rows.empty:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        rows[title] = rows["group"].astype(str)
        rows["T"] = rows[LENGTH]
        sized = {"size": "T", "sizes": (30, 200)} if rows["T"].notna().any() else {"s": 80}  # LM, translation: no T
        sns.scatterplot(data=rows, x="tokens_per_s", y="mean", hue=title, hue_order=sorted(rows[title].unique()),
                        ax=ax, **sized)
        ax.set_xscale("log")
        if _log_scale_fits(list(rows["mean"]), rows["metric_mode"].iloc[0]):
            ax.set_yscale("log")
        metric = rows["metric"].iloc[0]
        ax.set(xlabel="training throughput (tokens/s)", ylabel=f"test {metric} (mean over seeds)",
               title=f"{task}: {metric} vs throughput")
        ax.legend(fontsize="small", bbox_to_anchor=(1.02, 1), loc="upper left")
        made.append((f"{task}: {metric} vs throughput", _save(fig, out, f"metric_vs_throughput_{task}")))
    return made


def learning_curves(frame: pd.DataFrame) -> pd.DataFrame:
    """Validation curves from every run's ``metrics.csv``: run_dir, step, value (the primary metric)."""
    parts = []
    for run_dir, metric in zip(frame["run_dir"], frame["metric"]):
        path = Path(str(run_dir)) / "metrics.csv"
        if not isinstance(metric, str) or not path.is_file():
            continue
        try:
            csv = pd.read_csv(path)
        except (OSError, ValueError, pd.errors.EmptyDataError):
            log.warning("skipping unreadable %s", path)
            continue
        column = f"val/{metric}"
        if column not in csv.columns or "step" not in csv.columns:
            continue
        curve = csv[["step", column]].dropna().rename(columns={column: "value"})
        parts.append(curve.assign(run_dir=run_dir))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["step", "value", "run_dir"])


def plot_learning_curves(frame: pd.DataFrame, out: Path, title: str = "group") -> list[tuple[str, Path]]:
    """Per task: validation metric vs step, one panel per T, one line per group (mean over seeds)."""
    plt, sns = _pyplot()
    curves = learning_curves(frame)
    if curves.empty:
        return []
    curves = curves.merge(frame[["run_dir", "task", "metric", "group", LENGTH, "metric_mode"]], on="run_dir")
    made = []
    for task, rows in curves.groupby("task", sort=True):
        rows = rows.assign(T=rows[LENGTH].map(_length), **{title: rows["group"]})
        order = sorted(rows["T"].unique(), key=lambda t: (len(t), t))
        grid = sns.relplot(data=rows, x="step", y="value", hue=title, hue_order=sorted(rows[title].unique()),
                           col="T", col_order=order, kind="line",
                           errorbar=None, col_wrap=min(4, len(order)), height=3, aspect=1.2,
                           facet_kws={"sharey": True})
        metric = rows["metric"].iloc[0]
        if _log_scale_fits(list(rows["value"]), rows["metric_mode"].iloc[0]):
            grid.set(yscale="log")
        grid.set_axis_labels("step", f"validation {metric}")
        sns.move_legend(grid, "upper left", bbox_to_anchor=(1.0, 0.9))
        grid.figure.suptitle(f"{task}: learning curves (mean over seeds)", y=1.02)
        made.append((f"{task}: learning curves", _save(grid.figure, out, f"learning_curves_{task}")))
    return made


def plot_length_generalisation(long: pd.DataFrame, out: Path, title: str = "group") -> list[tuple[str, Path]]:
    """Per task: metric vs evaluation length (rows of :func:`length_rows`), one line per group
    and training T (mean over seeds)."""
    plt, sns = _pyplot()
    made = []
    if long.empty:
        return made
    for task, rows in long.groupby("task", sort=True):
        rows = rows.assign(**{"trained at T": rows["train T"].map(_length), title: rows["group"]})
        fig, ax = plt.subplots(figsize=(7, 4.5))
        sns.lineplot(data=rows, x="eval T", y="value", hue=title, hue_order=sorted(rows[title].unique()),
                     style="trained at T", markers=True,
                     errorbar=None, ax=ax)
        baseline = rows.groupby("eval T")["baseline"].mean()
        ax.plot(baseline.index, baseline.values, "k--", label="memoryless baseline")
        metric = rows["metric"].iloc[0]
        if _log_scale_fits([*rows["value"], *baseline.values], rows["metric_mode"].iloc[0]):
            ax.set_yscale("log")
        ax.set(xlabel="evaluation length T", ylabel=f"test {metric}", title=f"{task}: length generalisation")
        ax.legend(fontsize="small", bbox_to_anchor=(1.02, 1), loc="upper left")
        made.append((f"{task}: length generalisation", _save(fig, out, f"length_generalisation_{task}")))
    return made


def _diagnostics(frame: pd.DataFrame) -> list[tuple[pd.Series, dict]]:
    found = []
    for _, run in frame.iterrows():
        name = run.get("diagnostics")
        if not isinstance(name, str):
            continue
        path = Path(str(run["run_dir"])) / name
        try:
            found.append((run, json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError) as exc:
            log.warning("skipping unreadable diagnostics %s: %s", path, exc)
    return found


RETENTION_GATES = ("l0.fwd.z", "l0.fwd.f")  # GRU update gate; LSTM and SRU forget gates: near 1 = keep the state


def plot_diagnostics(frame: pd.DataFrame, out: Path) -> list[tuple[str, Path]]:
    """Per task and T: gradient norm through time, retention gates over time, saturation of
    ungated cells, and (adding) gates aligned on the first marker. Means over seeds."""
    plt, sns = _pyplot()
    found = _diagnostics(frame)
    if not found:
        return []
    grads, gates, saturation, aligned = [], [], [], []
    for run, data in found:
        key = {"task": run["task"], LENGTH: run[LENGTH], "group": run["group"]}
        grads += [{**key, "t": t, "value": v} for t, v in enumerate(data.get("grad_norm", []))]
        run_gates = data.get("gates", {})
        gate = next((g for g in RETENTION_GATES if g in run_gates), None)
        if gate:
            label = f"{run['group']} ({gate.rsplit('.', 1)[1]})"
            gates += [{**key, "group": label, "t": t, "value": v} for t, v in enumerate(run_gates[gate])]
        nonlinearity = run.get("config.cell.nonlinearity")
        which = "l0.fwd.a.nonpositive" if nonlinearity == "relu" else "l0.fwd.a.abs_gt_2"
        if which in run_gates:
            label = f"{run['group']} ({'a<=0' if nonlinearity == 'relu' else '|a|>2'})"
            saturation += [{**key, "group": label, "t": t, "value": v} for t, v in enumerate(run_gates[which])]
        marker = data.get("aligned_first_marker") or {}
        if gate and gate in marker:
            label = f"{run['group']} ({gate.rsplit('.', 1)[1]})"
            aligned += [{**key, "group": label, "offset": k, "value": v}
                        for k, v in zip(marker["offsets"], marker[gate]) if v is not None]
    panels = [("t", grads, "‖∂ℓ/∂s_t‖ (layer 0)", True, "gradient through time"),
              ("t", gates, "mean gate", False, "retention gates (z, f: 1 = keep)"),
              ("t", saturation, "fraction of units", False, "saturation of ungated cells"),
              ("offset", aligned, "mean gate", False, "gates aligned on the first marker")]
    made = []
    long = {name: pd.DataFrame(rows) for (_, rows, _, _, name) in panels}
    tasks_lengths = sorted({(run["task"], run[LENGTH]) for run, _ in found}, key=lambda k: (k[0], as_float(k[1])))
    for task, T in tasks_lengths:
        used = [p for p in panels if not long[p[4]].empty
                and not _rows_for(long[p[4]], task, T).empty]
        fig, axes = plt.subplots(1, len(used), figsize=(5.2 * len(used), 4.2), squeeze=False)
        for ax, (x, _, ylabel, log_y, name) in zip(axes[0], used):
            rows = _rows_for(long[name], task, T)
            sns.lineplot(data=rows, x=x, y="value", hue="group", hue_order=sorted(rows["group"].unique()),
                         errorbar=None, ax=ax)
            if log_y:
                ax.set_yscale("log")
            if x == "offset":
                ax.axvline(0, color="k", linestyle=":", linewidth=1)
            ax.set(xlabel="step t" if x == "t" else "steps after the first marker", ylabel=ylabel, title=name)
            ax.legend(fontsize="x-small")
        fig.suptitle(f"{task}, T={_length(T)}: diagnostics on one test batch (mean over seeds)")
        made.append((f"{task}, T={_length(T)}: diagnostics", _save(fig, out, f"diagnostics_{task}_T{_length(T)}")))
    return made


def _rows_for(rows: pd.DataFrame, task: str, T) -> pd.DataFrame:
    same_length = rows[LENGTH].isna() if T is None or (isinstance(T, float) and math.isnan(T)) else rows[LENGTH] == T
    return rows[(rows["task"] == task) & same_length]


SPEED_COLUMNS = {"preset", "path", "seq_len", "ms_fwd_bwd", "tokens_per_s_fwd_bwd"}


def load_speed(root: Path, out: Optional[Path] = None) -> pd.DataFrame:
    """Rows of every ``rnnbench-speed`` CSV under ``root`` (recognised by its columns),
    except the ``speed.csv`` tables of reports: in ``out`` or in a ``report`` folder below ``root``."""
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


def plot_speed(speed: pd.DataFrame, out: Path) -> list[tuple[str, Path]]:
    """Training-step throughput (forward + backward) of every preset and path vs T."""
    plt, sns = _pyplot()
    if speed.empty:
        return []
    rows = speed.drop_duplicates(subset=["preset", "path", "seq_len", "batch", "hidden", "source"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = rows.assign(T=rows["seq_len"].astype(str))
    sns.pointplot(data=rows, x="T", y="tokens_per_s_fwd_bwd", hue="preset", linestyles="-", errorbar=None,
                  markers="o", ax=ax, dodge=0.2) if rows["path"].nunique() == 1 else sns.lineplot(
        data=rows, x="seq_len", y="tokens_per_s_fwd_bwd", hue="preset", style="path", markers=True, errorbar=None,
        ax=ax)
    ax.set_yscale("log")
    ax.set(xlabel="sequence length T", ylabel="tokens/s (forward + backward)", title="speed benchmark (rnnbench-speed)")
    ax.legend(fontsize="small", bbox_to_anchor=(1.02, 1), loc="upper left")
    return [("speed benchmark", _save(fig, out, "speed"))]


# --- the whole report ------------------------------------------------------------------------------
@dataclass
class Report:
    out: Path
    runs: pd.DataFrame
    results: pd.DataFrame
    horizon: pd.DataFrame
    problems: pd.DataFrame
    lengths: pd.DataFrame
    speed: pd.DataFrame
    plots: list[tuple[str, Path]] = field(default_factory=list)

    @property
    def status_counts(self) -> str:
        """``126 finished, 2 failed``: the runs by status, most common first."""
        return ", ".join(f"{n} {s}" for s, n in self.runs["status"].value_counts().items())

    def summary(self) -> str:
        """A few lines for the terminal: run counts, the memory horizon table, where the report is."""
        lines = [f"rnnbench-report: {len(self.runs)} runs ({self.status_counts})"]
        if not self.horizon.empty:
            lines += ["", "Memory horizon (longest T solved by a majority of seeds):", markdown(display_horizon(self.horizon))]
        unswept = self.results[self.results[LENGTH].isna()]  # language modelling, translation: no T axis
        if not unswept.empty:
            lines += ["", "Results (test metric, mean ± 95% CI over seeds):", markdown(display_results(unswept))]
        if not self.problems.empty:
            lines += ["", f"{len(self.problems)} run(s) did not finish normally: see {self.out / 'problems.md'}"]
        lines += ["", f"report: {self.out / 'report.md'} ({len(self.plots)} plots)"]
        return "\n".join(lines)


def build_report(root: str | Path, out: Optional[str | Path] = None, tasks: Sequence[str] = (),
                 cells: Sequence[str] = (), where: Sequence[str] = (),
                 group_by: Sequence[str] = DEFAULT_GROUP_BY, plots: bool = True) -> Report:
    """Load, select, tabulate, plot and write ``report.md``; returns what was made."""
    root = Path(root)
    out = Path(out) if out is not None else root / "report"
    runs = load_runs(root)
    if runs.empty:
        raise ConfigError(f"no run records (summary.json) under {root}.")
    runs = select(runs, tasks, cells, where)
    if runs.empty:
        raise ConfigError(f"no run records under {root} match the filters "
                          f"(task={list(tasks)}, cell={list(cells)}, where={list(where)}).")
    group_by = list(group_by) or list(DEFAULT_GROUP_BY)
    runs = runs.assign(group=group_labels(runs, group_by))
    out.mkdir(parents=True, exist_ok=True)
    for stale in (out / "plots").glob("*.[ps][nv]g"):  # plots of an earlier report into the same folder
        stale.unlink()
    results = results_table(runs, group_by)
    long = length_rows(runs)
    report = Report(out=out, runs=runs, results=results, horizon=horizon_table(results),
                    problems=problems_table(runs), lengths=length_table(long), speed=load_speed(root, out))
    write_table(display_results(results), out, "results", numbers=results)
    write_table(display_horizon(report.horizon), out, "horizon", numbers=report.horizon)
    write_table(report.problems, out, "problems", latex=False)
    if not report.lengths.empty:
        write_table(display_lengths(report.lengths), out, "length_generalisation", numbers=report.lengths)
    if not report.speed.empty:
        write_table(_speed_display(report.speed), out, "speed")
    if plots:
        title = " / ".join(group_by)
        report.plots += plot_metric_vs_length(results, out, title)
        report.plots += plot_learning_curves(runs, out, title)
        report.plots += plot_solved_heatmap(results, out, title)
        report.plots += plot_metric_vs_throughput(results, out, title)
        report.plots += plot_length_generalisation(long, out, title)
        report.plots += plot_diagnostics(runs, out)
        report.plots += plot_speed(report.speed, out)
    (out / "report.md").write_text(_report_markdown(report, root, group_by, tasks, cells, where), encoding="utf-8")
    return report


def _speed_display(speed: pd.DataFrame) -> pd.DataFrame:
    columns = [c for c in ("preset", "path", "seq_len", "batch", "hidden", "ms_fwd_bwd", "tokens_per_s_fwd_bwd",
                           "reference", "ratio_fwd_bwd", "device_name", "threads") if c in speed.columns]
    return speed[columns]


def _report_markdown(report: Report, root: Path, group_by, tasks, cells, where) -> str:
    filters = [f"task ∈ {{{', '.join(tasks)}}}" if tasks else "", f"cell ∈ {{{', '.join(cells)}}}" if cells else "",
               *where]
    parts = [
        "# rnnbench report", "",
        f"{len(report.runs)} runs ({report.status_counts}) from `{root}`"
        + (f", filtered by {'; '.join(f for f in filters if f)}" if any(filters) else "")
        + f"; compared by {', '.join(group_by)}.", "",
        "Test metric: mean over seeds ± the half-width of its 95% confidence interval (t distribution, "
        "n−1 degrees of freedom); solved: runs meeting the task's criterion / runs that ended (finished or "
        "diverged). Tables also as CSV and LaTeX beside this file.", "",
    ]
    if not report.horizon.empty:
        parts += ["## Memory horizon", "", "Longest T solved by a strict majority of the runs (seeds) of each cell.", "",
                  markdown(display_horizon(report.horizon)), ""]
    parts += ["## Results", "", markdown(display_results(report.results)), ""]
    parts += ["## Runs that did not finish", "",
              markdown(report.problems) if not report.problems.empty else "None: every run finished.", ""]
    if not report.lengths.empty:
        parts += ["## Length generalisation", "", "Test metric (mean over seeds) of models trained at `train T` "
                  "and tested at each T after training (the training T's column is its own test).", "",
                  markdown(display_lengths(report.lengths)), ""]
    if not report.speed.empty:
        parts += ["## Speed benchmark", "", markdown(_speed_display(report.speed)), ""]
    if report.plots:
        parts += ["## Plots", ""]
        for title, path in report.plots:
            parts += [f"### {title}", "", f"![{title}]({path.relative_to(report.out).as_posix()})", ""]
    return "\n".join(parts)


# --- command line and Hydra callback -------------------------------------------------------------------
def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="rnnbench-report", description="Tables, plots and report.md from the run records under RESULTS_DIR.",
        epilog="Example: rnnbench-report results --task adding --cell gru,lstm --where optim.lr=0.002")
    parser.add_argument("results_dir", help="folder searched recursively for summary.json records")
    parser.add_argument("--out", help="output folder (default: RESULTS_DIR/report)")
    parser.add_argument("--task", type=_comma_list, default=[], help="only these tasks (comma list)")
    parser.add_argument("--cell", type=_comma_list, default=[], help="only these cell presets or cell names")
    parser.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                        help="only runs whose record field or config key equals VALUE (repeatable), e.g. "
                             "optim.lr=0.002 or cell.hidden_size=64")
    parser.add_argument("--group-by", type=_comma_list, default=list(DEFAULT_GROUP_BY), metavar="KEYS",
                        help="what is compared: record fields or config keys, comma separated (default: cell_preset)")
    parser.add_argument("--no-plots", action="store_true", help="tables and report.md only")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console script ``rnnbench-report``."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="rnnbench-report: %(levelname)s: %(message)s")
    try:
        report = build_report(args.results_dir, args.out, args.task, args.cell, args.where, args.group_by,
                              plots=not args.no_plots)
    except ConfigError as exc:
        print(f"rnnbench-report: error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(report.summary())


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra is a dependency; the report works without it
    Callback = object


class SweepReport(Callback):
    """Hydra callback: at the end of a sweep, write the report of its records into
    ``<sweep dir>/report`` and print its summary. A report that fails is logged; the
    records stay as they are."""

    def __init__(self, group_by: Sequence[str] = DEFAULT_GROUP_BY, plots: bool = True):
        self.group_by = list(group_by)
        self.plots = plots

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            report = build_report(sweep_dir, sweep_dir / "report", group_by=self.group_by, plots=self.plots)
        except Exception:
            log.exception("the report of %s could not be written; run rnnbench-report %s", sweep_dir, sweep_dir)
            return
        print("\n" + report.summary())


if __name__ == "__main__":
    main()
