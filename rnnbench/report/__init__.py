"""The report: ``rnnbench-report RESULTS_DIR [--out DIR]`` turns run records into tables,
plots and ``report.md``.

    rnnbench-report results                                   everything under results/
    rnnbench-report results/sweeps/2026-11-22 --out /tmp/rep  one day's sweeps
    rnnbench-report results --task adding --cell gru,lstm     a subset
    rnnbench-report results --where optim.lr=0.001 --group-by cell_preset,cell.hidden_size

Every run record under RESULTS_DIR is one row of a DataFrame (:mod:`.frame`, read through
:class:`rnnbench.record.RunRecord`); ``--task``, ``--cell`` and ``--where KEY=VALUE`` (a
record field, a config key such as ``optim.lr``, or a task parameter) select rows;
``--group-by`` names the keys shown as columns and in legends (the cell preset always).
A row of a table holds runs that differ only in their seeds: runs of unlike configs are
never pooled, and the keys that split them are named. Tuning trials (``stage: tune``)
appear only in the learning-rate sensitivity table and plot. The statistics are those of
:mod:`.stats`; the tables are rendered by :mod:`.tables`, the plots drawn by :mod:`.plots`.

Outputs in ``--out`` (default ``RESULTS_DIR/report``): ``results``, ``horizon`` (tasks with
a length and a solved criterion), ``length_generalisation``, ``tuning`` and ``speed`` (when
there are such records) as ``.md``, ``.csv`` and ``.tex``; ``problems.{md,csv}`` (runs
that did not finish); ``plots/*.png`` and ``*.svg``; ``report.md`` embedding them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import pandas as pd

from ..errors import ConfigError
from . import plots as draw
from . import runfiles, stats
from .document import report_markdown
from .frame import group_columns, label_runs, load_frame, select
from .tables import display_horizon, display_lengths, display_results, display_tuning, horizon_numbers, markdown
from .tables import display_problems, write_table

DEFAULT_GROUP_BY = ("cell_preset",)
SPEED_SHOWN = ("preset", "path", "seq_len", "batch", "hidden", "ms_fwd_bwd", "tokens_per_s_fwd_bwd", "reference",
               "ratio_fwd_bwd", "device_name", "threads")


@dataclass
class Report:
    """What a report holds: the runs compared (tuning trials apart), its tables of numbers,
    the plots made, and the palette (cell preset -> colour) every plot used."""

    out: Path
    runs: pd.DataFrame
    columns: list[str]
    results: pd.DataFrame
    horizon: pd.DataFrame
    problems: pd.DataFrame
    lengths: pd.DataFrame
    tuning: pd.DataFrame
    speed: pd.DataFrame
    trial_count: int = 0
    palette: dict = field(default_factory=dict)
    plots: list[tuple[str, Path]] = field(default_factory=list)

    @property
    def status_counts(self) -> str:
        """``126 finished, 2 failed``: the runs by status, most common first."""
        return ", ".join(f"{n} {s}" for s, n in self.runs["status"].value_counts().items())

    def speed_table(self) -> pd.DataFrame:
        return self.speed[[c for c in SPEED_SHOWN if c in self.speed.columns]]

    def write_tables(self) -> None:
        write_table(display_results(self.results, self.columns), self.out, "results",
                    numbers=self.results.drop(columns=["config_key"]))
        write_table(display_horizon(self.horizon, self.columns), self.out, "horizon",
                    numbers=horizon_numbers(self.horizon))
        write_table(display_problems(self.problems), self.out, "problems", latex=False)
        if not self.lengths.empty:
            write_table(display_lengths(self.lengths, self.columns), self.out, "length_generalisation",
                        numbers=self.lengths.drop(columns=["config_key"]))
        if not self.tuning.empty:
            write_table(display_tuning(self.tuning), self.out, "tuning", numbers=self.tuning)
        if not self.speed.empty:
            write_table(self.speed_table(), self.out, "speed")

    def summary(self) -> str:
        """A few lines for the terminal: run counts, the memory horizon, the results of tasks
        without a length T, and where the report is."""
        lines = [f"rnnbench-report: {len(self.runs)} runs ({self.status_counts})"
                 + (f" and {self.trial_count} tuning trials" if self.trial_count else "")]
        if not self.horizon.empty:
            lines += ["", "Memory horizon (longest T solved by a majority of seeds there and at every shorter T):",
                      markdown(display_horizon(self.horizon, self.columns))]
        unswept = self.results[self.results["T"].isna()]  # tasks without a length T (e.g. real corpora)
        if not unswept.empty:
            lines += ["", "Results (test metric, mean ± 95% CI over seeds):",
                      markdown(display_results(unswept, self.columns))]
        if not self.problems.empty:
            lines += ["", f"{len(self.problems)} run(s) did not finish normally: see {self.out / 'problems.md'}"]
        lines += ["", f"report: {self.out / 'report.md'} ({len(self.plots)} plots)"]
        return "\n".join(lines)


def tabulate(frame: pd.DataFrame, out: Path, group_by: Sequence[str], speed: pd.DataFrame) -> Report:
    """The report's tables of numbers from the selected runs."""
    columns = group_columns(frame, group_by)
    trials = frame["stage"] == "tune"
    runs = label_runs(frame[~trials], group_by)
    return Report(out=out, runs=runs, columns=columns, results=stats.results_table(runs, columns),
                  horizon=stats.horizon_table(runs, columns), problems=stats.problems_table(frame),
                  lengths=stats.length_table(runs, columns), tuning=stats.tuning_table(frame), speed=speed,
                  trial_count=int(trials.sum()))


def draw_plots(report: Report, on_figure: Optional[Callable] = None) -> None:
    presets = [*report.runs["cell_preset"], *report.tuning["cell_preset"],
               *(report.speed["preset"] if not report.speed.empty else [])]
    figures = draw.Figures(report.out, draw.Palette(presets), on_figure)
    draw.metric_vs_length(figures, report.results)
    draw.learning_curves(figures, report.runs, runfiles.learning_curves(report.runs))
    draw.solved_heatmap(figures, report.results)
    draw.steps_to_solve(figures, report.runs)
    draw.metric_vs_throughput(figures, report.results)
    draw.metric_vs_state_size(figures, report.results)
    draw.length_generalisation(figures, report.lengths)
    draw.lr_sensitivity(figures, report.tuning)
    draw.diagnostics(figures, report.runs, runfiles.diagnostics(report.runs))
    draw.speed(figures, report.speed)
    report.palette, report.plots = figures.palette.colours, figures.made


def build_report(root: str | Path, out: Optional[str | Path] = None, tasks: Sequence[str] = (),
                 cells: Sequence[str] = (), where: Sequence[str] = (), group_by: Sequence[str] = DEFAULT_GROUP_BY,
                 plots: bool = True, on_figure: Optional[Callable] = None) -> Report:
    """Load, select, tabulate, plot and write ``report.md``; returns what was made.
    ``on_figure(name, figure)`` is called with each figure before it is saved and closed."""
    root = Path(root)
    out = Path(out) if out is not None else root / "report"
    frame = load_frame(root)
    if frame.empty:
        raise ConfigError(f"no run records (summary.json) under {root}.")
    frame = select(frame, tasks, cells, where)
    if frame.empty:
        raise ConfigError(f"no run records under {root} match the filters "
                          f"(task={list(tasks)}, cell={list(cells)}, where={list(where)}).")
    out.mkdir(parents=True, exist_ok=True)
    for stale in (out / "plots").glob("*.[ps][nv]g"):  # plots of an earlier report into the same folder
        stale.unlink()
    report = tabulate(frame, out, list(group_by) or list(DEFAULT_GROUP_BY), runfiles.load_speed(root, out))
    report.write_tables()
    if plots:
        draw_plots(report, on_figure)
    (out / "report.md").write_text(report_markdown(report, root, tasks, cells, where), encoding="utf-8")
    return report


# --- command line -----------------------------------------------------------------------------------
def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="rnnbench-report", description="Tables, plots and report.md from the run records under RESULTS_DIR.",
        epilog="Example: rnnbench-report results --task adding --cell gru,lstm --where optim.lr=0.002")
    parser.add_argument("results_dir", help="folder searched recursively for summary.json records")
    parser.add_argument("--out", help="output folder (default: RESULTS_DIR/report)")
    parser.add_argument("--task", type=_comma_list, default=[], help="only these tasks or task presets (comma list)")
    parser.add_argument("--cell", type=_comma_list, default=[], help="only these cell presets or cell names")
    parser.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                        help="only runs whose record field, config key or task parameter equals VALUE (repeatable), "
                             "e.g. optim.lr=0.002 or cell.hidden_size=64")
    parser.add_argument("--group-by", type=_comma_list, default=list(DEFAULT_GROUP_BY), metavar="KEYS",
                        help="keys shown as columns and in legends: record fields or config keys, comma separated "
                             "(default: cell_preset, always included); runs of unlike configs are never pooled")
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
