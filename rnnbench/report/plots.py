"""Every plot of the report, PNG and SVG in ``<out>/plots`` (matplotlib's Agg backend).

One :class:`Palette` keyed by cell preset colours every plot of a report alike (a
preset's second and later series in one plot, e.g. two configs split by the results
table, get other line styles); :class:`Figures` is the one place figures are made
and saved, and every plot with more than one series carries a legend.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import pandas as pd

from .tables import length


LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P")


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    return plt


class Palette:
    """One colour per cell preset (sorted names: the same presets give the same colours in
    every report): seaborn's colour-blind palette, husl beyond ten presets."""

    def __init__(self, presets: Iterable[str]):
        import seaborn as sns

        names = sorted({str(p) for p in presets})
        colours = sns.color_palette("colorblind" if len(names) <= 10 else "husl", max(len(names), 1))
        self.colours = dict(zip(names, (tuple(c) for c in colours)))

    def __getitem__(self, preset: str) -> tuple:
        return self.colours[str(preset)]

    def styles(self, series: Iterable[tuple[str, str]]) -> dict[str, dict]:
        """``label -> {color, linestyle, marker}`` for ``(label, cell preset)`` pairs of one plot."""
        seen: dict[str, int] = defaultdict(int)
        styles = {}
        for label, preset in sorted(set(series)):
            i = seen[preset]
            seen[preset] += 1
            styles[label] = {"color": self[preset], "linestyle": LINESTYLES[i % 4], "marker": MARKERS[i % 6]}
        return styles


class Figures:
    """Makes and saves the report's figures; ``made`` lists ``(title, png path)``.
    ``on_figure(name, figure)`` sees each figure before it is saved and closed (tests)."""

    def __init__(self, out: Path, palette: Palette, on_figure: Optional[Callable] = None):
        self.folder, self.palette, self.on_figure = out / "plots", palette, on_figure
        self.made: list[tuple[str, Path]] = []

    def new(self, panels: int = 1, width: float = 7.0, height: float = 4.5):
        plt = pyplot()
        columns = min(panels, 4)
        rows = math.ceil(panels / columns)
        fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
        for ax in axes.flat[panels:]:
            ax.set_visible(False)
        return fig, list(axes.flat[:panels])

    def save(self, fig, title: str, name: str) -> None:
        """``plots/<name>.png`` and ``.svg``; every panel with labelled series gets a legend,
        unless the figure has one for all its panels (:func:`figure_legend`)."""
        plt = pyplot()
        for ax in fig.axes if not fig.legends else ():
            if ax.get_legend() is None and ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize="small", bbox_to_anchor=(1.02, 1), loc="upper left")
        self.folder.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")  # "lm (ptb_word)" -> "lm_ptb_word"
        fig.tight_layout()
        if self.on_figure is not None:
            self.on_figure(name, fig)
        fig.savefig(self.folder / f"{name}.png", dpi=110, bbox_inches="tight")
        fig.savefig(self.folder / f"{name}.svg", bbox_inches="tight")
        plt.close(fig)
        self.made.append((title, self.folder / f"{name}.png"))


def log_fits(values: Iterable[float], ratio: float = 20) -> bool:
    """Positive values spanning more than ``ratio``: a log axis shows them better."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    return bool(values) and min(values) > 0 and max(values) / min(values) > ratio


def draw_lines(ax, rows: pd.DataFrame, x: str, y: str, styles: dict, band: Optional[str] = None) -> None:
    """One line per ``series`` of ``rows`` (sorted by x), with a ``band`` (± that column) if given."""
    for label, line in rows.groupby("series", sort=True):
        line = line.sort_values(x)
        ax.plot(line[x], line[y], label=label, **styles[label])
        if band is not None:
            half = line[band].fillna(0)
            ax.fill_between(line[x], line[y] - half, line[y] + half, alpha=0.15, color=styles[label]["color"],
                            linewidth=0)


# --- over the results table ------------------------------------------------------------------------
def metric_vs_length(figures: Figures, results: pd.DataFrame) -> None:
    """Per task: test metric vs T, a line per series with its 95% CI band, baseline and threshold."""
    for subject, rows in results[results["T"].notna() & (results["n"] > 0)].groupby("subject", sort=True):
        fig, (ax,) = figures.new()
        styles = figures.palette.styles(zip(rows["series"], rows["cell_preset"]))
        draw_lines(ax, rows, "T", "mean", styles, band="ci95")
        baseline = rows.groupby("T")["baseline"].mean().dropna()
        ax.plot(baseline.index, baseline.values, "k--", label="memoryless baseline")
        if rows["solved_threshold"].notna().any():
            ax.axhline(rows["solved_threshold"].dropna().iloc[0], color="grey", linestyle=":", label="solved threshold")
        shown = [*rows["mean"], *baseline.values]
        if rows["metric_mode"].iloc[0] == "min" and log_fits(shown):
            ax.set_yscale("log")
        else:  # bands wider than the data (2 seeds: t = 12.7) are cut at the axes
            low, high = min(shown), max(shown)
            ax.set_ylim(low - 0.1 * (high - low or 1), high + 0.1 * (high - low or 1))
        ax.set_xscale("log" if log_fits(rows["T"], 7.9) else "linear")
        metric = rows["metric"].iloc[0]
        ax.set(xlabel="sequence length T", ylabel=f"test {metric}", title=f"{subject}: test {metric} (mean, 95% CI)")
        figures.save(fig, f"{subject}: test {metric} vs T", f"metric_vs_T_{subject}")


def solved_heatmap(figures: Figures, results: pd.DataFrame) -> None:
    """Per task: solved rate per series and T, annotated ``k/n``."""
    import seaborn as sns

    for subject, rows in results[results["T"].notna() & results["has_criterion"]].groupby("subject", sort=True):
        rate = rows.assign(rate=rows["solved"] / rows["ended"].where(rows["ended"] > 0))
        grid = rate.pivot_table(index="series", columns="T", values="rate", aggfunc="first", dropna=False)
        text = rate.assign(k=[f"{s}/{e}" for s, e in zip(rows["solved"], rows["ended"])]).pivot_table(
            index="series", columns="T", values="k", aggfunc="first", dropna=False).reindex_like(grid).fillna("")
        grid.columns = [length(c) for c in grid.columns]
        fig, (ax,) = figures.new(width=1.6 + 0.9 * grid.shape[1], height=1.2 + 0.45 * grid.shape[0])
        sns.heatmap(grid, annot=text.to_numpy(), fmt="", vmin=0, vmax=1, cmap="viridis",
                    cbar_kws={"label": "solved rate (solved / ended)"}, ax=ax)
        ax.set(xlabel="T", ylabel="", title=f"{subject}: solved / ended runs")
        figures.save(fig, f"{subject}: solved rate", f"solved_rate_{subject}")


def metric_vs_throughput(figures: Figures, results: pd.DataFrame) -> None:
    """Per task: test metric vs training tokens/s (cost against benefit), a marker per row."""
    for subject, rows in results[(results["n"] > 0) & results["tokens_per_s"].notna()].groupby("subject", sort=True):
        fig, (ax,) = figures.new()
        styles = figures.palette.styles(zip(rows["series"], rows["cell_preset"]))
        for label, points in rows.groupby("series", sort=True):
            ax.scatter(points["tokens_per_s"], points["mean"], label=label, color=styles[label]["color"],
                       marker=styles[label]["marker"], s=60)
        ax.set_xscale("log")
        if rows["metric_mode"].iloc[0] == "min" and log_fits(rows["mean"]):
            ax.set_yscale("log")
        metric = rows["metric"].iloc[0]
        ax.set(xlabel="training throughput (tokens/s)", ylabel=f"test {metric} (mean over seeds)",
               title=f"{subject}: {metric} vs throughput (a marker per T)")
        figures.save(fig, f"{subject}: {metric} vs throughput", f"metric_vs_throughput_{subject}")


def metric_vs_state_size(figures: Figures, results: pd.DataFrame) -> None:
    """Per task with runs at two or more state sizes: test metric vs recurrent state size
    (floats per sequence, log axis), a line per cell preset, a panel per T that has two or
    more state sizes (Zoology's view: Arora et al. 2023, arXiv:2312.04927)."""
    rows = results[(results["n"] > 0) & results["state_size"].notna()]
    sizes = rows.groupby(["subject", "T"], dropna=False)["state_size"].transform("nunique")
    for subject, task_rows in rows[sizes >= 2].groupby("subject", sort=True):
        lengths = sorted(task_rows["T"].unique(), key=lambda T: (math.isnan(T), T))
        fig, axes = figures.new(panels=len(lengths), width=5.5, height=4.2)
        for ax, T in zip(axes, lengths):
            panel = task_rows[task_rows["T"].isna() if math.isnan(T) else task_rows["T"] == T]
            for preset, line in panel.groupby("cell_preset", sort=True):
                line = line.sort_values("state_size")
                ax.errorbar(line["state_size"], line["mean"], yerr=line["ci95"].fillna(0), label=preset,
                            color=figures.palette[preset], marker="o", capsize=3)
            ax.set_xscale("log")
            ax.set(xlabel="recurrent state size (floats)", ylabel=f"test {panel['metric'].iloc[0]}",
                   title=f"T={length(T)}")
            fig.suptitle(f"{subject}: test metric vs state size (mean, 95% CI)")
        figures.save(fig, f"{subject}: metric vs state size", f"metric_vs_state_size_{subject}")


def steps_to_solve(figures: Figures, runs: pd.DataFrame) -> None:
    """Per task: steps to solve vs T of the solved runs (a dot per run), the median per series."""
    solved = runs[runs["solved"].astype(bool) & runs["T"].notna() & runs["steps_to_solve"].notna()]
    for subject, rows in solved.groupby("subject", sort=True):
        fig, (ax,) = figures.new()
        styles = figures.palette.styles(zip(rows["series"], rows["cell_preset"]))
        for label, points in rows.groupby("series", sort=True):
            ax.scatter(points["T"], points["steps_to_solve"], color=styles[label]["color"], alpha=0.35, s=18)
        median = rows.groupby(["series", "T"], as_index=False)["steps_to_solve"].median()
        draw_lines(ax, median, "T", "steps_to_solve", styles)
        ax.set_xscale("log" if log_fits(rows["T"], 7.9) else "linear")
        ax.set_yscale("log" if log_fits(rows["steps_to_solve"], 9.9) else "linear")
        ax.set(xlabel="sequence length T", ylabel="steps to solve (validation)",
               title=f"{subject}: steps to solve (dots: runs; lines: median)")
        figures.save(fig, f"{subject}: steps to solve vs T", f"steps_to_solve_{subject}")


def length_generalisation(figures: Figures, lengths: pd.DataFrame) -> None:
    """Per task: metric vs evaluation length, a line per series and training T."""
    if lengths.empty:
        return
    rows = lengths[lengths["eval"] != "test"]
    for subject, task_rows in rows.groupby("subject", sort=True):
        task_rows = task_rows.assign(length=task_rows["eval"].astype(float),
                                     series=[f"{s} (trained at T={length(T)})"
                                             for s, T in zip(task_rows["series"], task_rows["T"])])
        fig, (ax,) = figures.new()
        styles = figures.palette.styles(zip(task_rows["series"], task_rows["cell_preset"]))
        draw_lines(ax, task_rows, "length", "mean", styles)
        if log_fits(task_rows["length"], 7.9):
            ax.set_xscale("log")
        metric = task_rows["metric"].iloc[0]
        ax.set(xlabel="evaluation length T'", ylabel=f"test {metric} (mean over seeds)",
               title=f"{subject}: length generalisation")
        figures.save(fig, f"{subject}: length generalisation", f"length_generalisation_{subject}")


def lr_sensitivity(figures: Figures, tuning: pd.DataFrame) -> None:
    """Per task: the tuning metric (best validation) vs the learning rate, a curve per cell
    preset (mean, 95% CI over seeds); the chosen rate starred."""
    for subject, rows in tuning[tuning["val_mean"].notna()].groupby("subject", sort=True):
        fig, (ax,) = figures.new()
        for preset, line in rows.groupby("cell_preset", sort=True):
            line = line.sort_values("lr")
            colour = figures.palette[preset]
            ax.errorbar(line["lr"], line["val_mean"], yerr=line["val_ci95"].fillna(0), label=preset, color=colour,
                        marker="o", capsize=3)
            chosen = line[line["chosen"] != ""]
            ax.scatter(chosen["lr"], chosen["val_mean"], marker="*", s=260, color=colour, edgecolor="k", zorder=5)
        ax.set_xscale("log")
        ax.set_xticks(sorted(rows["lr"].unique()), [f"{lr:.2g}" for lr in sorted(rows["lr"].unique())])
        ax.minorticks_off()  # the tried rates label the axis; log minor labels would overlap them
        metric = rows["metric"].iloc[0]
        ax.set(xlabel="learning rate (optim.lr)", ylabel=f"validation {metric} (best; mean over seeds)",
               title=f"{subject}: learning-rate sensitivity (★ chosen)")
        figures.save(fig, f"{subject}: learning-rate sensitivity", f"lr_sensitivity_{subject}")


def speed(figures: Figures, speed_rows: pd.DataFrame) -> None:
    """Training-step throughput (forward + backward) of every preset and path vs T (rnnbench-speed);
    not the ``projection`` floor (one GEMM, not a training step: it stays in the table)."""
    if not speed_rows.empty:
        speed_rows = speed_rows[speed_rows["path"] != "projection"]
    if speed_rows.empty:
        return
    rows = speed_rows.drop_duplicates(subset=["preset", "path", "seq_len", "batch", "hidden", "source"])
    several = rows["path"].nunique() > 1
    rows = rows.assign(series=[f"{p} ({path})" if several else str(p) for p, path in zip(rows["preset"], rows["path"])],
                       tokens=rows["tokens_per_s_fwd_bwd"])
    mean = rows.groupby(["series", "preset", "seq_len"], as_index=False)["tokens"].mean()
    fig, (ax,) = figures.new()
    draw_lines(ax, mean, "seq_len", "tokens", figures.palette.styles(zip(mean["series"], mean["preset"])))
    ax.set_yscale("log")
    ax.set(xlabel="sequence length T", ylabel="tokens/s (forward + backward)", title="speed benchmark (rnnbench-speed)")
    figures.save(fig, "speed benchmark", "speed")


# --- over the runs' own files -----------------------------------------------------------------------
def learning_curves(figures: Figures, runs: pd.DataFrame, curves: pd.DataFrame) -> None:
    """Per task: validation metric vs step, a panel per T, a line per series (mean over seeds)."""
    if curves.empty:
        return
    columns = ["run_dir", "subject", "series", "cell_preset", "T", "metric", "metric_mode"]
    curves = curves.merge(runs[columns], on="run_dir")
    for subject, rows in curves.groupby("subject", sort=True):
        lengths = sorted(rows["T"].unique(), key=lambda T: (math.isnan(T), T))
        fig, axes = figures.new(panels=len(lengths), width=4.6, height=3.6)
        styles = figures.palette.styles(zip(rows["series"], rows["cell_preset"]))
        for ax, T in zip(axes, lengths):
            panel = rows[rows["T"].isna() if math.isnan(T) else rows["T"] == T]
            mean = panel.groupby(["series", "step"], as_index=False)["value"].mean()
            draw_lines(ax, mean, "step", "value", {k: {**v, "marker": None} for k, v in styles.items()})
            if panel["metric_mode"].iloc[0] == "min" and log_fits(panel["value"]):
                ax.set_yscale("log")
            ax.set(xlabel="step", ylabel=f"validation {panel['metric'].iloc[0]}", title=f"T={length(T)}")
        figure_legend(fig, axes)
        fig.suptitle(f"{subject}: learning curves (mean over seeds)")
        figures.save(fig, f"{subject}: learning curves", f"learning_curves_{subject}")


def figure_legend(fig, axes: Sequence) -> None:
    """One legend for a figure of panels: every labelled line of any panel, once."""
    handles: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 0.95))


DIAGNOSTIC_PANELS = {  # view: (x label, y label, log y, title)
    "gradient": ("step t", "‖∂ℓ/∂s_t‖ (layer 0)", True, "gradient through time"),
    "retention": ("step t", "mean retention gate", False, "retention gate (near 1: keep the state)"),
    "saturation": ("step t", "fraction of units", False, "saturated units (no gradient passes)"),
    "aligned": ("steps after the first event", "mean retention gate", False, "retention gate at the first event"),
}


def diagnostics(figures: Figures, runs: pd.DataFrame, views: pd.DataFrame) -> None:
    """Per task and T: gradient norm through time, the retention gate, the saturation of cells
    without gates, the retention gate aligned on the task's first event; mean over seeds."""
    if views.empty:
        return
    views = views.merge(runs[["run_dir", "subject", "series", "cell_preset", "T"]], on="run_dir")
    for (subject, T), rows in views.groupby(["subject", "T"], sort=True, dropna=False):
        shown = [v for v in DIAGNOSTIC_PANELS if v in set(rows["view"])]
        fig, axes = figures.new(panels=len(shown), width=5.2, height=4.2)
        styles = figures.palette.styles(zip(rows["series"], rows["cell_preset"]))
        for ax, view in zip(axes, shown):
            xlabel, ylabel, log_y, title = DIAGNOSTIC_PANELS[view]
            for label, series in rows[rows["view"] == view].groupby("series", sort=True):
                size = series["values"].map(len).mode().iloc[0]  # the runs' common length
                same = series[series["values"].map(len) == size]
                stack = np.stack(same["values"].tolist())
                seen = np.isfinite(stack).sum(0)  # runs with a value at each step (an event may lack some)
                mean = np.where(seen > 0, np.nansum(stack, 0) / np.maximum(seen, 1), np.nan)
                ax.plot(same["x"].iloc[0], mean, label=label, **{**styles[label], "marker": None})
            if log_y:
                ax.set_yscale("log")
            if view == "aligned":
                ax.axvline(0, color="k", linestyle=":", linewidth=1)
            ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
        figure_legend(fig, axes)
        fig.suptitle(f"{subject}, T={length(T)}: diagnostics on one test batch (mean over seeds)")
        figures.save(fig, f"{subject}, T={length(T)}: diagnostics", f"diagnostics_{subject}_T{length(T)}")
