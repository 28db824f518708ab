"""Rendering the report's tables for people: Markdown (GitHub), LaTeX (booktabs) and CSV.

Each ``display_*`` function turns a table of numbers (:mod:`.stats`) into one of text,
row for row in the same order; ``write_table`` writes the text table as ``.md`` and
``.tex`` and the numbers as ``.csv`` (full precision, for recomputation), so that every
displayed value is the formatting of the CSV value on the same line.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import pandas as pd

from .stats import seed_label

DASH = "-"


def number(value, digits: int = 4) -> str:
    """``0.004374`` -> ``"0.004374"`` (``digits`` significant), ``"-"`` for None / NaN."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return DASH
    return f"{value:.{digits}g}"


def count(value) -> str:
    """``13121`` -> ``"13,121"``, ``"-"`` for None / NaN."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return DASH
    return f"{value:,.0f}"


def length(T) -> str:
    return DASH if T is None or (isinstance(T, float) and math.isnan(T)) else str(int(T))


def mean_text(mean: float, ci95: float, n: int, runs: int) -> str:
    """``0.95 ± 0.02 (n=3)``; ``0.95 (n=1 of 3)`` when the mean covers fewer than all runs
    of the row (the others diverged without a score, failed, or are still running)."""
    of = f"n={n}" if n == runs else f"n={n} of {runs}"
    if n == 0:
        return f"{DASH} ({of})"
    return f"{number(mean)} ± {number(ci95, 2)} ({of})" if n > 1 else f"{number(mean)} ({of})"


def interval(low: float, high: float) -> str:
    return f"[{low:.2f}, {high:.2f}]"


def solved_text(solved: int, ended: int, low: float, high: float, has_criterion: bool = True) -> str:
    """``3/3 [0.29, 1.00]``: solved / ended with the Clopper–Pearson 95% interval; ``-``
    for a task without a solved criterion."""
    if not has_criterion:
        return DASH
    return f"{solved}/{ended} {interval(low, high)}" if ended else "0/0"


def size_text(budget, hidden) -> str:
    """How a row's model was sized: ``budget 20,000`` (matched size) or ``width 64``."""
    if budget is not None and not (isinstance(budget, float) and math.isnan(budget)):
        return f"budget {count(budget)}"
    return f"width {count(hidden)}"


def with_sizes(table: pd.DataFrame, numbers: pd.DataFrame) -> pd.DataFrame:
    """``table`` with the model size columns of every table: ``params``, ``state size``, ``sized by``."""
    return table.assign(**{"params": numbers["params"].map(count).to_numpy(),
                           "state size": numbers["state_size"].map(count).to_numpy(),
                           "sized by": [size_text(b, h) for b, h in zip(numbers["param_budget"],
                                                                         numbers["hidden_size"])]})


def status_text(row) -> str:
    return ", ".join(f"{row[s]} {s}" for s in ("finished", "diverged", "failed", "other") if row[s])


def _identity(table: pd.DataFrame, columns: list[str], with_length: bool) -> pd.DataFrame:
    """The leading columns of a displayed table: task, preset, metric, the group, T, differs."""
    keys = ["task", "task_preset", "metric", *columns] + (["T"] if with_length else [])
    shown = table[keys].rename(columns={c: c.removeprefix("config.") for c in columns})
    if with_length:
        shown["T"] = shown["T"].map(length)
    if table["differs"].astype(bool).any():
        shown["differs"] = table["differs"]
    return shown


def display_results(results: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    table = _identity(results, columns, with_length=True)
    table["test (mean ± 95% CI)"] = [mean_text(*v) for v in zip(results["mean"], results["ci95"], results["n"],
                                                                 results["runs"])]
    table["baseline"] = results["baseline"].map(number)
    table["solved [95% CI]"] = [solved_text(*v) for v in zip(results["solved"], results["ended"], results["solved_low"],
                                                            results["solved_high"], results["has_criterion"])]
    table["runs"] = results.apply(status_text, axis=1)
    table = with_sizes(table, results)
    table["steps to solve"] = results["steps_to_solve"].map(count)
    table["tokens/s"] = results["tokens_per_s"].map(count)
    return table


def horizon_text(value: float, censored: bool) -> str:
    """``50``, ``≥50`` (censored: the longest T tried), ``-`` (not even the shortest T)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    return DASH if value == 0 else ("≥" if censored else "") + f"{value:g}"


def display_horizon(horizon: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    table = _identity(horizon, columns, with_length=False)
    table["horizon"] = [horizon_text(h, c) for h, c in zip(horizon["horizon"], horizon["horizon_censored"])]
    table["seeds' horizons"] = [", ".join(f"{seed_label(s['seed'])}: {horizon_text(s['horizon'], s['censored'])}"
                                          for s in seeds) for seeds in horizon["seeds"]]
    table["median [interval] (coverage)"] = [
        DASH if math.isnan(r.median) else
        f"{horizon_text(r.median, r.median_censored)} [{horizon_text(r.median_low, False)}, "
        f"{horizon_text(r.median_high, r.high_censored)}] ({r.median_coverage:.0%})"
        for r in horizon.itertuples()]
    table["T tried"] = horizon["tried"].map(lambda ts: ", ".join(length(T) for T in ts))
    table["solved / ended by T [95% CI]"] = horizon["by_length"].map(lambda by: ", ".join(
        f"{length(T)}: {solved_text(*counts)}" for T, counts in by.items()))
    return with_sizes(table, horizon)


def horizon_numbers(horizon: pd.DataFrame) -> pd.DataFrame:
    """The horizon table's CSV: numbers, and the per-seed and per-T lists as their text."""
    shown = display_horizon(horizon, [])
    numbers = horizon.drop(columns=["seeds", "tried", "by_length", "config_key"])
    return numbers.assign(seed_horizons=shown["seeds' horizons"], tried=shown["T tried"],
                          by_length=shown["solved / ended by T [95% CI]"])


def display_lengths(lengths: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """One row per results row, one column per evaluation: ``mean (n=…; solved k/n)``."""
    cell = [f"{number(m, 3)} (" + (f"n={n} of {e}; " if n != e else "") + f"{s}/{e} solved)" if n else DASH
            for m, n, s, e in zip(lengths["mean"], lengths["n"], lengths["solved"], lengths["ended"])]
    index = ["task", "task_preset", "metric", *columns, "T", "differs", "series"]
    evals = sorted(set(lengths["eval"]), key=lambda e: (e != "test", float(e) if e != "test" else 0))
    groups = list(lengths.assign(value=cell).groupby(index, dropna=False, sort=False))
    rows = [{**dict(zip(index, values)), **dict(zip(group["eval"], group["value"]))} for values, group in groups]
    wide = with_sizes(pd.DataFrame(rows, columns=[*index, *evals]), lengths.loc[[g.index[0] for _, g in groups]])
    wide["T"] = wide["T"].map(length)
    wide = wide.drop(columns=["series"] if wide["differs"].astype(bool).any() else ["series", "differs"])
    return wide.fillna("").rename(columns={"test": "test (as recorded)", **{e: f"T'={e}" for e in evals if e != "test"},
                                           **{c: c.removeprefix("config.") for c in columns}})


def display_tuning(tuning: pd.DataFrame) -> pd.DataFrame:
    table = tuning[["task", "task_preset", "metric", "cell_preset", "lr"]].copy()
    table["lr"] = table["lr"].map(lambda v: number(v, 3))
    table["validation (mean ± 95% CI)"] = [mean_text(m, c, n, n) for m, c, n in
                                           zip(tuning["val_mean"], tuning["val_ci95"], tuning["n"])]
    table["chosen"] = tuning["chosen"]
    return with_sizes(table, tuning)


def display_problems(problems: pd.DataFrame) -> pd.DataFrame:
    return problems.assign(T=problems["T"].map(length))


def markdown(table: pd.DataFrame) -> str:
    return table.to_markdown(index=False, floatfmt=".4g") if not table.empty else "(none)"


def write_table(table: pd.DataFrame, out: Path, stem: str, latex: bool = True,
                numbers: Optional[pd.DataFrame] = None) -> dict[str, Path]:
    """``stem.md`` and (``latex``) ``stem.tex`` of ``table``; ``stem.csv`` of ``numbers`` (the
    unformatted values, row for row) if given, else of ``table``."""
    paths = {"md": out / f"{stem}.md", "csv": out / f"{stem}.csv"}
    paths["md"].write_text(markdown(table) + "\n", encoding="utf-8")
    (table if numbers is None else numbers).to_csv(paths["csv"], index=False)
    if latex:
        paths["tex"] = out / f"{stem}.tex"
        tex = table.astype(str).to_latex(index=False, escape=True)
        paths["tex"].write_text(tex.replace("±", r"$\pm$").replace("≥", r"$\geq$"), encoding="utf-8")
    return paths
