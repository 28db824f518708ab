"""``report.md``: every table and plot of a report, with the words that say how to read them,
the comparison protocol the records carry, and how the cells were sized."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import pandas as pd

from .frame import SEED_KEYS
from .stats import sizing
from .tables import (display_horizon, display_lengths, display_problems, display_results, display_tuning,
                     markdown)

if TYPE_CHECKING:
    from . import Report

HOW_TO_READ = (
    "How to read the tables. A row holds runs that differ only in their seeds ({seeds}); runs whose configs "
    "differ in anything else are never pooled: they get rows of their own, and the `differs` column names the "
    "keys and values that tell them apart. Test metric: the mean over the row's runs that ended (finished, or "
    "diverged: a diverged run's best checkpoint is tested) with a test score, ± the half-width of its 95% "
    "confidence interval (t distribution, n−1 degrees of freedom; none for n = 1); `n=k of m` says that only k of "
    "the row's m runs have a score. Solved: runs meeting the task's criterion / runs that ended, with the exact "
    "Clopper–Pearson 95% interval (3/3 is [0.29, 1.00], 0/3 is [0.00, 0.71]: with 3 seeds they overlap). "
    "Every table is also written as CSV (the unrounded numbers, row for row) and LaTeX beside this file.")

HORIZON_TEXT = (
    "`horizon`: the longest T such that a strict majority of the ended runs solved the task at that T and at "
    "every shorter T tried (`-`: not at the shortest; `≥`: the longest T tried, longer ones were not). Each "
    "seed's own horizon is the longest T it solved at that T and every shorter T it tried. The median of the "
    "seeds' horizons comes with the exact order-statistic interval [x(j), x(n+1−j)] and its coverage "
    "P(j ≤ B ≤ n−j), B ~ Binomial(n, 1/2): below 6 seeds no such interval reaches 95%, and the range of the "
    "seeds is shown with its lower coverage (75% for 3 seeds): weak evidence.")


def protocol_text(runs: pd.DataFrame) -> list[str]:
    """What the records' ``protocol.tuning`` says: the search (keys, ranges, budget, seeds), the
    settings chosen per cell and task preset, and how many evaluation runs carry it."""
    tuned = runs[runs["tuning"].map(bool)]
    if tuned.empty:
        return []
    lines = ["## Protocol", ""]
    searches = {json.dumps({k: v for k, v in (t.get("search") or {}).items()}, sort_keys=True, default=str)
                for t in tuned["tuning"]}
    for search in sorted(searches):
        parts = [f"{k}: {v}" for k, v in json.loads(search).items()]
        lines += [f"- Tuned on validation before these runs; search: {'; '.join(parts) or 'not recorded'}."]
    chosen = tuned.drop_duplicates(["cell_preset", "task_preset"])
    lines += ["- Chosen: " + "; ".join(
        f"{c} on {t}: " + ", ".join(f"{k}={v}" for k, v in (tuning.get("values") or {}).items())
        for c, t, tuning in zip(chosen["cell_preset"], chosen["task_preset"], chosen["tuning"])) + "."]
    files = sorted({str(t.get("file")) for t in tuned["tuning"]})
    lines += [f"- {len(tuned)} of {len(runs)} runs carry this provenance (from {', '.join(f'`{f}`' for f in files)}).",
              ""]
    return lines


def sizing_text(report: "Report") -> str:
    how = sizing(report.results)
    if how is None:
        return ""
    return (f"Cells were compared at {how}; every row shows its parameter count (`params`, whole model) and "
            f"recurrent state size (`state size`, floats per sequence), and `sized by` says how it was sized.")


def filters_text(root: Path, tasks: Sequence[str], cells: Sequence[str], where: Sequence[str]) -> str:
    filters = [f"task ∈ {{{', '.join(tasks)}}}" if tasks else "", f"cell ∈ {{{', '.join(cells)}}}" if cells else "",
               *where]
    shown = "; ".join(f for f in filters if f)
    return f"from `{root}`" + (f", filtered by {shown}" if shown else "")


def report_markdown(report: "Report", root: Path, tasks: Sequence[str], cells: Sequence[str],
                    where: Sequence[str]) -> str:
    columns = report.columns
    trials = f"; {report.trial_count} tuning trials (stage `tune`) appear only under Learning-rate sensitivity" \
        if report.trial_count else ""
    parts = ["# rnnbench report", "",
             f"{len(report.runs)} runs ({report.status_counts}) {filters_text(root, tasks, cells, where)}; compared "
             f"by {', '.join(c.removeprefix('config.') for c in columns)}{trials}.", "",
             HOW_TO_READ.format(seeds=", ".join(SEED_KEYS)), "", sizing_text(report), ""]
    parts += protocol_text(report.runs)
    if not report.horizon.empty:
        parts += ["## Memory horizon", "", HORIZON_TEXT, "", markdown(display_horizon(report.horizon, columns)), ""]
    parts += ["## Results", "", markdown(display_results(report.results, columns)), ""]
    parts += ["## Runs that did not finish", "", markdown(display_problems(report.problems))
              if not report.problems.empty else "None: every run finished.", ""]
    if not report.lengths.empty:
        parts += ["## Length generalisation", "", "Test metric (mean over the seeds of each row) of models trained "
                  "at `T`, tested after training at each `T'`; `test (as recorded)` is the record's own test score "
                  "(at T, or the task's own summary over lengths).", "",
                  markdown(display_lengths(report.lengths, columns)), ""]
    if not report.tuning.empty:
        parts += ["## Learning-rate sensitivity", "", "Tuning trials: the tuning metric (best validation score) "
                  "at each learning rate tried, over the trial seeds; `chosen` is the rate the evaluation runs "
                  "applied, or the best on validation when no evaluation run says.", "",
                  markdown(display_tuning(report.tuning)), ""]
    if not report.speed.empty:
        parts += ["## Speed benchmark", "", markdown(report.speed_table()), ""]
    if report.plots:
        parts += ["## Plots", "", "One colour per cell preset in every plot.", ""]
        for title, path in report.plots:
            parts += [f"### {title}", "", f"![{title}]({path.relative_to(report.out).as_posix()})", ""]
    return "\n".join(parts)
