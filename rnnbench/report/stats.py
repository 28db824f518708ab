"""The report's statistics, each a formula a reviewer can recompute by hand.

- **Mean and t interval** over the seeds of one config: ``mean ± t(0.975, n−1)·s/√n``
  with ``s`` the sample standard deviation (n−1 denominator); no interval for n = 1.
  A mean covers the runs that ended (finished or diverged: a diverged run's best
  checkpoint is tested and its score counts) and have a test score; the report prints
  ``n=k of m`` whenever it covers fewer than all m runs of the row.
- **Solved rate** ``k/n``: runs meeting the task's criterion among the n that ended, with
  the exact Clopper–Pearson 95% interval (Clopper & Pearson 1934): the ``α/2`` and
  ``1−α/2`` quantiles of ``Beta(k, n−k+1)`` and ``Beta(k+1, n−k)`` (0 for k = 0, 1 for
  k = n). 3/3 gives [0.29, 1] and 0/3 gives [0, 0.71]: the intervals overlap.
- **Memory horizon** of a config: the longest T such that a strict majority of the
  ended runs solved the task at that T *and at every shorter T tried* (a T whose runs
  all failed breaks the chain: no evidence). A seed's own horizon is the longest T it
  solved at that T and every shorter T it tried (0: not even the shortest). A horizon
  equal to the longest T tried is censored (``≥``): longer T were not tried.
- **Median of the per-seed horizons** with the exact distribution-free order-statistic
  interval ``[x(j), x(n+1−j)]`` (e.g. Conover, *Practical Nonparametric Statistics*,
  §3.2): it covers the median with probability ``P(j ≤ B ≤ n−j)``, ``B ~ Bin(n, 1/2)``;
  j is the largest giving at least 95%. Below n = 6 no j does: the interval is then the
  whole range of the seeds and its own (lower) coverage is printed with it, e.g. 75%
  for 3 seeds.
"""

from __future__ import annotations

import math
import statistics
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from .frame import ENDED, SEED_KEYS, as_float, first

CONFIDENCE = 0.95


def finite(values) -> list[float]:
    """The values that are finite numbers, as floats."""
    return [v for v in map(as_float, values) if math.isfinite(v)]


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, int]:
    """``(mean, half-width of the t interval, n)`` of the finite ``values`` (half-width NaN for n < 2)."""
    from scipy import stats

    values = finite(values)
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    mean = statistics.mean(values)  # exact arithmetic (fractions): 3 × 0.1 has a spread of 0, not 4e-17
    if n < 2:
        return mean, math.nan, n
    return mean, float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * statistics.stdev(values) / math.sqrt(n), n


def clopper_pearson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The exact (Clopper–Pearson) interval of a proportion ``k/n``; NaNs for n = 0."""
    from scipy.stats import beta

    if n == 0:
        return math.nan, math.nan
    alpha = 1 - confidence
    low = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high


def median_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """``(x(j), x(n+1−j), coverage)``: the order-statistic interval of the median (see the
    module docstring); NaNs for no values."""
    from scipy.stats import binom

    x = sorted(values)
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan
    for j in range(n // 2, 0, -1):  # narrowest first
        coverage = float(binom.cdf(n - j, n, 0.5) - binom.cdf(j - 1, n, 0.5))
        if coverage >= confidence:
            return x[j - 1], x[n - j], coverage
    return x[0], x[-1], float(binom.cdf(n - 1, n, 0.5) - binom.cdf(0, n, 0.5))


def chain_horizon(solved_by_length: dict[float, bool]) -> float:
    """The longest T such that every T up to it (in increasing order) is solved; 0 if the shortest is not."""
    horizon = 0.0
    for length in sorted(solved_by_length):
        if not solved_by_length[length]:
            break
        horizon = length
    return horizon


# --- tables of numbers --------------------------------------------------------------------------
def row_numbers(runs: pd.DataFrame) -> dict:
    """The numbers of one results row (the runs of one config, differing only in their seeds)."""
    ended = runs[runs["status"].isin(ENDED)]
    solved = ended[ended["solved"].astype(bool)]
    mean, ci95, n = mean_ci(ended["test"])
    low, high = clopper_pearson(len(solved), len(ended))
    counts = {s: int((runs["status"] == s).sum()) for s in ("finished", "diverged", "failed")}
    return {
        "runs": len(runs), **counts, "other": len(runs) - sum(counts.values()),
        "n": n, "mean": mean, "ci95": ci95, "baseline": _mean(runs["baseline"]),
        "solved": len(solved), "ended": len(ended), "solved_low": low, "solved_high": high,
        "has_criterion": bool(runs["solved_threshold"].notna().any()),
        "steps_to_solve": _median(solved["steps_to_solve"]), **sizes(runs), "tokens_per_s": _mean(runs["tokens_per_s"]),
        "metric_mode": first(runs["metric_mode"]), "solved_threshold": first(runs["solved_threshold"]),
    }


def sizes(runs: pd.DataFrame) -> dict:
    """How big the models of a row are (the same for runs of one config): parameters (whole
    model) and recurrent state size (floats per sequence), medians; the budget or width set."""
    return {"params": _median(runs["params"]), "state_size": _median(runs["state_size"]),
            "param_budget": first(runs["param_budget"]), "hidden_size": first(runs["hidden_size"])}


def results_table(runs: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """One row per task × task preset × ``columns`` (the group) × T × config: see :func:`row_numbers`."""
    keys = ["task", "task_preset", "metric", *columns, "T", "config_key"]
    rows = []
    for values, group in runs.groupby(keys, dropna=False, sort=True):
        rows.append({**dict(zip(keys, values)), **_labels(group), **row_numbers(group)})
    return pd.DataFrame(rows, columns=[*keys, *_labels(runs), *row_numbers(runs.iloc[:0])])


def series_horizon(runs: pd.DataFrame) -> dict:
    """The horizon numbers of one config over T (see the module docstring)."""
    ended = runs[runs["status"].isin(ENDED)]
    tried = sorted(runs["T"].dropna().unique())
    counts = {T: (int(ended.loc[ended["T"] == T, "solved"].sum()), int((ended["T"] == T).sum())) for T in tried}
    by_length = {T: (s, e, *clopper_pearson(s, e)) for T, (s, e) in counts.items()}
    horizon = chain_horizon({T: e > 0 and 2 * s > e for T, (s, e) in counts.items()})
    seeds = []
    for seed, own in ended.groupby(list(SEED_KEYS), dropna=False, sort=True):
        solved = own.groupby("T")["solved"].all()
        value = chain_horizon(solved.to_dict())
        seeds.append({"seed": seed, "horizon": value, "censored": value == max(solved.index)})
    values = [s["horizon"] for s in seeds]
    median = float(np.median(values)) if values else math.nan
    low, high, coverage = median_interval(values)
    censored = [s["horizon"] for s in seeds if s["censored"]]
    return {"horizon": horizon, "horizon_censored": bool(tried) and horizon == tried[-1] and horizon > 0,
            "seeds": seeds, "median": median, "median_low": low, "median_high": high, "median_coverage": coverage,
            # the median is a lower bound if a censored value may be larger than its upper middle value
            "median_censored": bool(values) and any(c <= sorted(values)[len(values) // 2] for c in censored),
            "high_censored": any(c <= high for c in censored),
            "tried": tried, "by_length": by_length}


def horizon_table(runs: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Per task × task preset × group × config (over T): :func:`series_horizon`. Only tasks
    with a length T and a solved criterion have a horizon."""
    has_criterion = runs.groupby("task")["solved_threshold"].transform(lambda t: t.notna().any()).astype(bool)
    runs = runs[runs["T"].notna() & has_criterion]
    keys = ["task", "task_preset", "metric", *columns, "config_key"]
    rows = []
    for values, group in runs.groupby(keys, dropna=False, sort=True):
        rows.append({**dict(zip(keys, values)), **_labels(group), **series_horizon(group), **sizes(group)})
    return pd.DataFrame(rows, columns=[*keys, *_labels(runs), *series_horizon(runs.iloc[:0]), *sizes(runs.iloc[:0])])


def _labels(runs: pd.DataFrame) -> dict:
    """What every run of a row shares besides its keys: ``differs``, ``series``, ``subject``."""
    return {k: runs[k].iloc[0] if len(runs) else None for k in ("differs", "series", "subject")}


def length_table(runs: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Per results row with ``metrics.length_generalisation`` and per evaluated length (and
    ``eval = "test"``, the record's own test score: at T, or a task's summary over lengths):
    the metric's mean and t interval, solved k / n."""
    keys = ["task", "task_preset", "subject", "metric", *columns, "T", "config_key", "differs", "series"]
    rows = []
    with_lengths = runs[runs["length_generalisation"].map(bool) & runs["status"].isin(ENDED)]
    for values, group in with_lengths.groupby(keys, dropna=False, sort=True):
        scores = {"test": list(zip(group["test"], group["solved"]))}
        for per_length, metric in zip(group["length_generalisation"], group["metric"]):
            for length, metrics in per_length.items():
                scores.setdefault(str(length), []).append((as_float(metrics.get(metric)), metrics.get("solved")))
        for evaluation, pairs in scores.items():
            mean, ci95, n = mean_ci([value for value, _ in pairs])
            rows.append({**dict(zip(keys, values)), **sizes(group), "eval": evaluation, "n": n, "mean": mean,
                         "ci95": ci95, "solved": sum(bool(s) for _, s in pairs), "ended": len(pairs)})
    return pd.DataFrame(rows)


def tuning_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Learning-rate trials (``stage: tune``) per task × task preset × cell preset × lr: the
    tuning metric (``val_best``) mean and t interval over seeds, and which lr was chosen:
    ``applied`` (the evaluation runs' ``protocol.tuning`` used it) or, when no evaluation
    run says, ``best on validation``."""
    trials, used = runs[runs["stage"] == "tune"], runs[runs["stage"] != "tune"]
    keys = ["task", "task_preset", "subject", "metric", "cell_preset", "lr"]
    rows = []
    for values, group in trials.groupby(keys, dropna=False, sort=True):
        mean, ci95, n = mean_ci(group["val_best"])
        rows.append({**dict(zip(keys, values)), "n": n, "val_mean": mean, "val_ci95": ci95,
                     "metric_mode": first(group["metric_mode"]), "chosen": "", **sizes(group)})
    table = pd.DataFrame(rows, columns=[*keys, "n", "val_mean", "val_ci95", "metric_mode", "chosen",
                                        *sizes(trials.iloc[:0])])
    for (task_preset, cell_preset), trial in table.groupby(["task_preset", "cell_preset"], sort=False):
        same = used[(used["task_preset"] == task_preset) & (used["cell_preset"] == cell_preset)]
        applied = finite((t.get("values") or {}).get("optim.lr") for t in same["tuning"])
        if applied:
            hits = trial.index[np.isclose(trial["lr"], applied[0], rtol=1e-9)]
            table.loc[hits, "chosen"] = "applied"
        elif trial["val_mean"].notna().any():
            best = trial["val_mean"].idxmax() if trial["metric_mode"].iloc[0] == "max" else trial["val_mean"].idxmin()
            table.loc[best, "chosen"] = "best on validation"
    return table


def problems_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Every run that did not finish normally, with the first line of its error."""
    columns = ["task", "task_preset", "cell_preset", "T", "seed", "stage", "status", "error", "run_dir"]
    bad = runs.loc[runs["status"] != "finished", columns]
    bad = bad.sort_values(["task", "cell_preset", "T", "seed"], na_position="last", kind="stable")
    return bad.assign(error=bad["error"].map(lambda e: str(e).splitlines()[0][:160] if e else ""))


def _mean(series: pd.Series) -> float:
    values = finite(pd.to_numeric(series, errors="coerce"))
    return float(np.mean(values)) if values else math.nan


def _median(series: pd.Series) -> float:
    values = finite(pd.to_numeric(series, errors="coerce"))
    return float(np.median(values)) if values else math.nan


def seed_label(seed: tuple) -> str:
    """``0`` when the data and init seeds follow the seed, else ``0/1/2`` (seed/data/init)."""
    seed = tuple(None if isinstance(s, float) and math.isnan(s) else int(s) if isinstance(s, float) else s
                 for s in seed)
    return str(seed[0]) if len(set(seed)) == 1 else "/".join(str(s) for s in seed)


def sizing(results: pd.DataFrame) -> Optional[str]:
    """How cells were sized: ``matched size (model.param_budget=N)``, ``equal width
    (cell.hidden_size=H)``, or a mixture (None: no rows)."""
    if results.empty:
        return None
    budgets = {b for b in results["param_budget"] if b is not None and not pd.isna(b)}
    widths = {int(h) for h in results["hidden_size"] if h is not None and not pd.isna(h)}
    if budgets and results["param_budget"].notna().all():
        return f"matched size (model.param_budget={', '.join(str(int(b)) for b in sorted(budgets))})"
    if not budgets and len(widths) == 1:
        return f"equal width (cell.hidden_size={widths.pop()}), not matched size"
    if not budgets:
        return f"set widths (cell.hidden_size: {', '.join(str(w) for w in sorted(widths))}), not matched size"
    return "mixed: some rows at matched size (model.param_budget), others at a set width (cell.hidden_size)"
