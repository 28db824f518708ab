"""The report's statistics, each checked against an independent computation (scipy's own
interval functions, exact binomial sums, the definitions written out again here), on run
records written by hand through the typed RunRecord; and real sweeps through the CLI."""

from __future__ import annotations

import json
import math
import statistics
from math import comb
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from helpers.cli import TINY, run_cli, summaries
from helpers.records import colour_of, full_report_records, labelled, markdown_rows, write_record
from rnnbench.errors import ConfigError
from rnnbench.files import write_json_atomic
from rnnbench.record import SUMMARY_FILE
from rnnbench.report import build_report, main
from rnnbench.report.stats import clopper_pearson, mean_ci, median_interval


def t_half_width(values: list[float]) -> float:
    low, high = scipy_stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=scipy_stats.sem(values))
    return (high - low) / 2


def rows_by(table: pd.DataFrame, *keys: str) -> dict:
    return {tuple(getattr(r, k) for k in keys): r for r in table.itertuples()}


def test_means_t_intervals_and_runs_without_a_score(tmp_path):
    """Means and 95% t intervals over seeds; a mean never silently omits runs that ended
    without a score (issue 12.10: 1 finished at 0.95 + 2 diverged is "0.95 (n=1 of 3)")."""
    root = tmp_path / "results"
    gru_10, gru_20, lstm_10 = [0.004, 0.006, 0.02], [0.009, 0.15], [0.003, 0.2]
    for seed, mse in enumerate(gru_10):
        write_record(root, f"g10_{seed}", T=10, seed=seed, score=mse)
    for seed, mse in enumerate(gru_20):
        write_record(root, f"g20_{seed}", T=20, seed=seed, score=mse)
    write_record(root, "g20_2", T=20, seed=2, status="failed", error="RuntimeError: out of memory\ntraceback...")
    write_record(root, "l10_0", cell="lstm", T=10, seed=0, score=lstm_10[0])
    write_record(root, "l10_1", cell="lstm", T=10, seed=1, score=lstm_10[1], status="diverged")  # best ckpt tested
    copy = dict(cell="lstm", task="copy", metric="recall_acc", mode="max", threshold=0.99)
    write_record(root, "c0", **copy, seed=0, score=0.95)
    write_record(root, "c1", **copy, seed=1, status="diverged", error="loss became nan at step 40")
    write_record(root, "c2", **copy, seed=2, status="diverged", error="loss became nan at step 7")

    report = build_report(root, tmp_path / "out", plots=False)
    rows = rows_by(report.results, "task", "cell_preset", "T")
    for key, values in {("adding", "gru", 10): gru_10, ("adding", "gru", 20): gru_20,
                        ("adding", "lstm", 10): lstm_10}.items():
        assert rows[key].mean == pytest.approx(np.mean(values))
        assert rows[key].ci95 == pytest.approx(t_half_width(values), rel=1e-9)
        assert rows[key].n == len(values)
    assert (rows["adding", "gru", 20].runs, rows["adding", "gru", 20].failed, rows["adding", "gru", 20].ended) == (3, 1, 2)
    assert (rows["adding", "lstm", 10].diverged, rows["adding", "lstm", 10].solved) == (1, 1)
    shown = {(r["task"], r["cell_preset"], r["T"]): r for r in markdown_rows(tmp_path / "out" / "results.md")}
    assert shown["copy", "lstm", "10"]["test (mean ± 95% CI)"] == "0.95 (n=1 of 3)"
    assert shown["adding", "gru", "20"]["test (mean ± 95% CI)"].endswith("(n=2 of 3)")
    assert shown["adding", "lstm", "10"]["test (mean ± 95% CI)"].endswith("(n=2)")  # the diverged score counts
    assert shown["adding", "gru", "20"]["runs"] == "2 finished, 1 failed"
    assert shown["copy", "lstm", "10"]["runs"] == "1 finished, 2 diverged"
    problems = (tmp_path / "out" / "problems.md").read_text()
    assert "RuntimeError: out of memory" in problems and "traceback" not in problems  # first line only
    assert sorted(report.problems["status"]) == ["diverged", "diverged", "diverged", "failed"]
    assert r"\pm" in (tmp_path / "out" / "results.tex").read_text()


@pytest.mark.parametrize("k, n", [(0, 3), (3, 3), (2, 3), (1, 2), (5, 9), (0, 1)])
def test_clopper_pearson_is_the_exact_interval(k, n):
    exact = scipy_stats.binomtest(k, n).proportion_ci(0.95, method="exact")
    assert clopper_pearson(k, n) == pytest.approx((exact.low, exact.high), abs=1e-12)


def test_solved_rates_carry_exact_intervals(tmp_path):
    """3/3 against 0/3 reads as the weak evidence it is: [0.29, 1.00] against [0.00, 0.71]."""
    root = tmp_path / "results"
    for seed in range(3):
        write_record(root, f"g{seed}", seed=seed, score=0.001)
        write_record(root, f"r{seed}", cell="rnn", seed=seed, score=0.1)
    report = build_report(root, tmp_path / "out", plots=False)
    shown = {r["cell_preset"]: r["solved [95% CI]"] for r in markdown_rows(tmp_path / "out" / "results.md")}
    high = scipy_stats.binomtest(0, 3).proportion_ci(method="exact").high
    low = scipy_stats.binomtest(3, 3).proportion_ci(method="exact").low
    assert shown == {"gru": f"3/3 [{low:.2f}, 1.00]", "rnn": f"0/3 [0.00, {high:.2f}]"}
    assert low < high  # the intervals overlap
    row = rows_by(report.results, "cell_preset")["gru",]
    assert (row.solved_low, row.solved_high) == pytest.approx((low, 1.0))


def oracle_horizon(counts: dict[float, tuple[int, int]]) -> float:
    """The longest T whose runs and every shorter T's runs were solved by a strict majority (0: none)."""
    good = [T for T in counts if all(2 * s > e > 0 for t, (s, e) in counts.items() if t <= T)]
    return max(good, default=0)


def oracle_median_interval(values: list[float]) -> tuple[float, float, float]:
    """The widest-j order-statistic interval with at least 95% coverage, by exact binomial sums."""
    x, n = sorted(values), len(values)
    for j in range(n // 2, 0, -1):
        coverage = sum(comb(n, i) for i in range(j, n - j + 1)) / 2 ** n
        if coverage >= 0.95:
            return x[j - 1], x[n - j], coverage
    return x[0], x[-1], sum(comb(n, i) for i in range(1, n)) / 2 ** n


def test_memory_horizon_is_monotone_with_per_seed_horizons(tmp_path):
    root = tmp_path / "results"
    # Issue 12.11: LSTM 0/3 at T=10, 0/3 at 25, 2/3 at 50 has no horizon (not 50).
    for T, solved in ((10, [0, 0, 0]), (25, [0, 0, 0]), (50, [1, 1, 0])):
        for seed, ok in enumerate(solved):
            write_record(root, f"lstm_{T}_{seed}", cell="lstm", T=T, seed=seed, score=0.001 if ok else 0.1)
    # Nine seeds of SRU on a grid; each seed solves the T in its set.
    grid = (10, 20, 40, 80)
    solves = [set(), {10}, {10, 20}, {10, 20}, {10, 20, 40}, {10, 20, 40}, {10, 40}, {10, 20, 40, 80},
              {10, 20, 40, 80}]
    for seed, solved in enumerate(solves):
        for T in grid:
            write_record(root, f"sru_{T}_{seed}", cell="sru", T=T, seed=seed, score=0.001 if T in solved else 0.1)
    # An adaptive search: each seed tried its own lengths.
    for seed, tried in enumerate(({10: 1, 20: 1, 40: 1}, {10: 1, 20: 1, 30: 0})):
        for T, ok in tried.items():
            write_record(root, f"gru_{T}_{seed}", cell="gru", T=T, seed=seed, score=0.001 if ok else 0.1)

    report = build_report(root, tmp_path / "out", plots=False)
    rows = rows_by(report.horizon, "cell_preset")
    assert rows["lstm",].horizon == 0
    counts = {T: (sum(T in s for s in solves), len(solves)) for T in grid}
    assert rows["sru",].horizon == oracle_horizon(counts) == 40
    seed_horizons = [max([T for T in grid if all(t in s for t in grid if t <= T)], default=0) for s in solves]
    assert [s["horizon"] for s in rows["sru",].seeds] == seed_horizons
    low, high, coverage = oracle_median_interval(seed_horizons)
    assert (rows["sru",].median, rows["sru",].median_low, rows["sru",].median_high) == (
        statistics.median(seed_horizons), low, high)
    assert rows["sru",].median_coverage == pytest.approx(coverage) and coverage >= 0.95
    assert [s["horizon"] for s in rows["gru",].seeds] == [40, 20]
    assert rows["gru",].horizon == 20 and rows["gru",].tried == [10, 20, 30, 40]
    assert median_interval([10, 20, 50])[2] == pytest.approx(0.75)  # 3 seeds: 75%, never 95%

    shown = {r["cell_preset"]: r for r in markdown_rows(tmp_path / "out" / "horizon.md")}
    assert shown["lstm"]["horizon"] == "-"
    assert shown["lstm"]["solved / ended by T [95% CI]"].startswith("10: 0/3 [0.00, 0.71]")
    assert shown["gru"]["seeds' horizons"] == "0: ≥40, 1: 20"  # seed 0 solved the longest T it tried
    assert shown["sru"]["T tried"] == "10, 20, 40, 80" and shown["sru"]["horizon"] == "40"
    assert shown["lstm"]["median [interval] (coverage)"] == "- [-, -] (75%)"
    assert (shown["sru"]["params"], shown["sru"]["state size"], shown["sru"]["sized by"]) == ("977", "16", "width 16")


def test_matched_size_is_labelled(tmp_path):
    root = tmp_path / "results"
    for cell, hidden, params in (("gru", 70, 19_950), ("lstm", 60, 20_100)):
        for seed in range(2):
            write_record(root, f"{cell}{seed}", cell=cell, hidden=hidden, param_budget=20_000, params=params,
                         state_size=hidden * (2 if cell == "lstm" else 1), seed=seed, score=0.005)
    build_report(root, tmp_path / "out", plots=False)
    shown = {r["cell_preset"]: r for r in markdown_rows(tmp_path / "out" / "results.md")}
    assert [(r["params"], r["state size"], r["sized by"]) for r in shown.values()] == [
        ("19,950", "70", "budget 20,000"), ("20,100", "120", "budget 20,000")]
    assert "compared at matched size (model.param_budget=20000)" in (tmp_path / "out" / "report.md").read_text()


def test_unlike_configs_are_split_and_the_differing_keys_named(tmp_path):
    """Issue 12.9: copy with 10 symbols and hidden 128 is not pooled with 5 symbols and hidden
    64; copy_small is its own row; seeds, results folders, threads and plugin paths never split."""
    root = tmp_path / "results"
    copy = dict(task="copy", metric="recall_acc", mode="max", threshold=0.99)
    for seed in range(2):
        write_record(root, f"big{seed}", **copy, hidden=128, task_options={"n_symbols": 10}, seed=seed,
                     score=0.9 + seed / 100, overrides={"results_dir": f"/r{seed}", "trainer.threads": seed + 1,
                                                       "plugins": [f"/home/u{seed}/cells.py"]})
        write_record(root, f"small{seed}", **copy, hidden=64, task_options={"n_symbols": 5}, seed=seed, score=0.5)
        write_record(root, f"preset{seed}", **copy, task_preset="copy_small", seed=seed, score=0.7)
    report = build_report(root, tmp_path / "out", plots=False)
    assert len(report.results) == 3 and set(report.results["runs"]) == {2}
    shown = {(r["task_preset"], r["differs"]): r for r in markdown_rows(tmp_path / "out" / "results.md")}
    assert set(shown) == {("copy", "cell.hidden_size=128, task.n_symbols=10"),
                          ("copy", "cell.hidden_size=64, task.n_symbols=5"), ("copy_small", "")}
    assert shown["copy", "cell.hidden_size=128, task.n_symbols=10"]["state size"] == "128"
    assert shown["copy", "cell.hidden_size=64, task.n_symbols=5"]["sized by"] == "width 64"
    assert "set widths (cell.hidden_size: 16, 64, 128), not matched size" in (tmp_path / "out" / "report.md").read_text()


def test_tuning_trials_are_excluded_from_results_and_drawn(tmp_path):
    """Trials (stage: tune) only in the learning-rate table and plot; the protocol paragraph."""
    root = tmp_path / "results"
    val = {("gru", 1e-3): [0.05, 0.07], ("gru", 1e-2): [0.01, 0.02], ("lstm", 1e-3): [0.03, 0.04],
           ("lstm", 1e-2): [0.09, 0.2]}
    for (cell, lr), values in val.items():
        for seed, v in zip((100, 101), values):
            write_record(root, f"tune_{cell}_{lr}_{seed}", cell=cell, lr=lr, seed=seed, stage="tune", val=v, score=v)
    tuning = {"file": "/x/tuned.yaml", "values": {"optim.lr": 0.01},
              "search": {"keys": ["optim.lr"], "range": [0.001, 0.01], "budget": 200, "seeds": [100, 101]}}
    for seed in range(2):
        write_record(root, f"gru_{seed}", lr=0.01, seed=seed, score=0.005, protocol={"tuning": tuning})
    figures = {}
    report = build_report(root, tmp_path / "out", on_figure=lambda name, fig: figures.update({name: fig}))
    assert list(report.results["cell_preset"]) == ["gru"] and list(report.results["runs"]) == [2]
    assert list(report.horizon["cell_preset"]) == ["gru"] and report.trial_count == 8
    chosen = {(r.cell_preset, r.lr): (r.val_mean, r.chosen) for r in report.tuning.itertuples()}
    assert chosen == {("gru", 1e-3): (pytest.approx(0.06), ""), ("gru", 1e-2): (pytest.approx(0.015), "applied"),
                      ("lstm", 1e-3): (pytest.approx(0.035), "best on validation"),
                      ("lstm", 1e-2): (pytest.approx(0.145), "")}
    ax = figures["lr_sensitivity_adding"].axes[0]
    curves = {c.get_label(): c[0] for c in ax.containers}  # errorbar containers: one per cell preset
    for cell in ("gru", "lstm"):
        assert list(curves[cell].get_xdata()) == [1e-3, 1e-2]
        assert list(curves[cell].get_ydata()) == pytest.approx([np.mean(val[cell, 1e-3]), np.mean(val[cell, 1e-2])])
    text = (tmp_path / "out" / "report.md").read_text()
    assert "## Protocol" in text and "budget: 200" in text and "gru on adding: optim.lr=0.01" in text
    assert "8 tuning trials" in text and (tmp_path / "out" / "tuning.csv").is_file()


def test_every_plot_one_palette_and_a_legend_on_every_multi_series_plot(tmp_path):
    root = tmp_path / "results"
    full_report_records(root)
    figures = {}
    report = build_report(root, tmp_path / "out", on_figure=lambda name, fig: figures.update({name: fig}))
    assert {name.rsplit("_", 1)[0] if name.startswith("diagnostics") else name for name in figures} == {
        "metric_vs_T_adding", "learning_curves_adding", "solved_rate_adding", "steps_to_solve_adding",
        "metric_vs_throughput_adding", "metric_vs_state_size_adding", "length_generalisation_adding",
        "lr_sensitivity_adding", "diagnostics_adding", "speed"}
    assert set(report.palette) == {"gru", "lstm", "rnn"} and len(set(report.palette.values())) == 3
    for name, fig in figures.items():
        for ax in fig.axes:
            series = labelled(ax)
            lines = {colour_of(line) for line in ax.get_lines() if line.get_color() not in ("k", "grey")}
            if len(series) > 1 or len(lines) > 1:
                assert ax.get_legend() is not None or fig.legends, f"{name}: {len(series)} series and no legend"
            for artist in series:
                preset = str(artist.get_label()).split(" ")[0]
                if preset in report.palette:  # one colour per cell preset, in every plot
                    assert colour_of(artist) == pytest.approx(report.palette[preset]), (name, artist.get_label())
    lstm = [a.get_label() for a in labelled(figures["metric_vs_T_adding"].axes[0]) if a.get_label().startswith("lstm")]
    assert lstm == ["lstm [cell.hidden_size=16]", "lstm [cell.hidden_size=32]"]  # split, named, same colour
    markdown = (tmp_path / "out" / "report.md").read_text()
    for png in (tmp_path / "out" / "plots").glob("*.png"):
        assert png.read_bytes()[:4] == b"\x89PNG" and png.with_suffix(".svg").stat().st_size > 0
        assert f"(plots/{png.name})" in markdown


def test_csv_values_are_the_displayed_ones(tmp_path):
    root = tmp_path / "results"
    full_report_records(root)
    build_report(root, tmp_path / "out", plots=False)
    csv = pd.read_csv(tmp_path / "out" / "results.csv")
    shown = markdown_rows(tmp_path / "out" / "results.md")
    assert len(csv) == len(shown)
    for numbers, text in zip(csv.itertuples(), shown):
        assert (text["cell_preset"], text["T"]) == (numbers.cell_preset, str(int(numbers.T)))
        assert text["test (mean ± 95% CI)"].startswith(f"{numbers.mean:.4g} ± {numbers.ci95:.2g} (n={numbers.n})")
        assert text["solved [95% CI]"] == f"{numbers.solved}/{numbers.ended} [{numbers.solved_low:.2f}, " \
                                          f"{numbers.solved_high:.2f}]"
        assert text["params"] == f"{numbers.params:,.0f}" and text["state size"] == f"{numbers.state_size:,.0f}"
    horizon = pd.read_csv(tmp_path / "out" / "horizon.csv")
    for numbers, text in zip(horizon.itertuples(), markdown_rows(tmp_path / "out" / "horizon.md")):
        assert text["seeds' horizons"] == numbers.seed_horizons and text["T tried"] == numbers.tried
    lengths = markdown_rows(tmp_path / "out" / "length_generalisation.md")
    assert {r["T'=40"] for r in lengths} == {"0.1 (0/2 solved)"}
    assert lengths[0]["test (as recorded)"].startswith(f"{np.mean([0.005, 0.01]):.3g} (")


def test_version_1_records_still_make_a_report(tmp_path, capsys):
    """A record from rnnbench 0.1 (no record_version, untyped) is migrated on reading."""
    root = tmp_path / "results"
    for seed, mse in enumerate([0.004, 0.02]):
        (root / f"r{seed}").mkdir(parents=True)
        write_json_atomic(root / f"r{seed}" / SUMMARY_FILE, {
            "run_dir": str(root / f"r{seed}"), "cell": "gru", "cell_preset": "gru", "task": "adding",
            "task_params": {"seq_len": 10}, "seed": seed, "status": "finished", "solved": mse <= 0.01,
            "metric": "mse", "metrics": {"test": {"mse": mse}}, "baseline": {"mse": 1 / 6}, "params": 977,
            "stopped_early_when_solved": True, "solved_criterion": {"metric": "mse", "mode": "min", "threshold": 0.01},
            "config": {"cell": {"name": "gru", "hidden_size": 16}, "task": {"seq_len": 10}, "seed": seed}})
    main([str(root), "--out", str(tmp_path / "out"), "--no-plots"])
    assert "Memory horizon" in capsys.readouterr().out
    (row,) = pd.read_csv(tmp_path / "out" / "results.csv").itertuples()
    assert row.mean == pytest.approx(0.012) and row.ci95 == pytest.approx(t_half_width([0.004, 0.02]))


def test_filters_and_group_by(tmp_path):
    root = tmp_path / "results"
    for seed in range(2):
        write_record(root, f"g{seed}", seed=seed, score=0.1 + seed)
        write_record(root, f"l{seed}", cell="lstm", seed=seed, score=0.5)
    assert list(build_report(root, tmp_path / "o1", cells=["lstm"], plots=False).results["cell_preset"]) == ["lstm"]
    report = build_report(root, tmp_path / "o2", where=["cell.hidden_size=16", "seed=1", "seq_len=10"], plots=False)
    assert sorted(report.runs["cell_preset"]) == ["gru", "lstm"] and set(report.runs["seed"]) == {1}
    report = build_report(root, tmp_path / "o3", group_by=["optim.lr"], plots=False)
    assert len(report.results) == 2 and set(report.results["n"]) == {2}  # a lr column, cells never pooled
    assert "optim.lr" in markdown_rows(tmp_path / "o3" / "results.md")[0]
    with pytest.raises(ConfigError, match="no record field or config key 'optim.lrr'"):
        build_report(root, tmp_path / "o4", where=["optim.lrr=1"], plots=False)
    with pytest.raises(ConfigError, match="no run records"):
        build_report(root, tmp_path / "o4", tasks=["copy"], plots=False)


def test_language_modelling_per_dataset_and_the_terminal_summary(tmp_path, capsys):
    """Tasks without a T are compared per dataset, have no horizon, and their results are
    printed; "-" where a task has no solved criterion; a refused run is listed, not dropped."""
    root = tmp_path / "results"
    ptb, wiki = [120.0, 130.0], [150.0, 170.0]
    for data, values in (("ptb_word", ptb), ("wikitext2", wiki)):
        for seed, ppl in enumerate(values):
            write_record(root, f"{data}{seed}", task="lm", T=None, seed=seed, metric="ppl", threshold=None,
                         score=ppl, task_params={"dataset": data}, task_options={"dataset": data})
    write_record(root, "adding", T=10, score=0.004)
    refused = write_record(root, "refused", cell="sru", T=10, status="failed", error="ConfigError: bad",
                           task_params={})
    assert refused.task_params == {}
    report = build_report(root, tmp_path / "out", plots=False)
    rows = rows_by(report.results, "task")
    assert rows["lm (ptb_word)",].mean == pytest.approx(np.mean(ptb))
    assert rows["lm (wikitext2)",].ci95 == pytest.approx(t_half_width(wiki))
    assert set(report.horizon["task"]) == {"adding"} and set(report.horizon["cell_preset"]) == {"gru", "sru"}
    lm = next(r for r in markdown_rows(tmp_path / "out" / "results.md") if r["task"] == "lm (ptb_word)")
    assert lm["solved [95% CI]"] == "-" and lm["T"] == "-"
    print(report.summary())
    out = capsys.readouterr().out
    assert "Memory horizon" in out and "lm (wikitext2)" in out and "150" not in out.split("Results")[0]
    only_lm = build_report(root, tmp_path / "lm", tasks=["lm"], plots=False)
    assert set(only_lm.results["task"]) == {"lm (ptb_word)", "lm (wikitext2)"} and only_lm.horizon.empty


def test_mean_ci_edge_cases():
    assert math.isnan(mean_ci([0.5])[1]) and mean_ci([0.5])[0] == 0.5
    assert mean_ci([float("nan"), 1.0, 3.0])[2] == 2
    assert mean_ci([])[2] == 0
    assert mean_ci([0.1, 0.1, 0.1])[1] == 0  # no rounding noise


@pytest.fixture(scope="module")
def joblib_sweep(tmp_path_factory):
    """2 cells x 2 lengths x 2 seeds through the real CLI with the joblib launcher (2 jobs)."""
    workdir = tmp_path_factory.mktemp("sweep")
    proc = run_cli(["-m", *TINY, "hydra/launcher=local", "cell=gru,lstm", "task=adding", "task.seq_len=6,10",
                    "seed=0,1", "trainer.max_steps=10", "trainer.checkpoint=false", "trainer.threads=1",
                    "task.eval_lengths=[20]", "diagnostics=true"], workdir)
    return workdir, proc


@pytest.mark.slow
def test_joblib_sweep_writes_every_record_and_the_report(joblib_sweep, capsys):
    workdir, proc = joblib_sweep
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = summaries(workdir / "results")
    assert len(found) == 8 and all(r["status"] == "finished" for r in found)
    assert len({r["run_dir"] for r in found}) == 8
    assert all(r["device"]["torch_threads"] == 1 for r in found)  # trainer.threads reached every worker
    for record in found:  # length generalisation and diagnostics, recorded per run
        (length,) = record["metrics"]["length_generalisation"]
        assert length == "20" and set(record["metrics"]["length_generalisation"]["20"]) >= {"mse", "solved"}
        diagnostics = json.loads((Path(record["run_dir"]) / record["diagnostics"]).read_text())
        assert len(diagnostics["grad_norm"]) == record["task_params"]["seq_len"]

    sweep_dir = Path(found[0]["run_dir"]).parent
    out = workdir / "report"
    main([str(sweep_dir), "--out", str(out)])
    assert "Memory horizon" in capsys.readouterr().out
    csv = pd.read_csv(out / "results.csv")  # rows and statistics, recomputed from the records themselves
    assert set(zip(csv["cell_preset"], csv["T"])) == {(c, T) for c in ("gru", "lstm") for T in (6, 10)}
    for row in csv.itertuples():
        values = [r["metrics"]["test"]["mse"] for r in found
                  if r["cell"] == row.cell_preset and r["task_params"]["seq_len"] == row.T]
        assert row.mean == pytest.approx(np.mean(values)) and row.runs == 2
        assert row.ci95 == pytest.approx(t_half_width(values), rel=1e-6)
    report_md = (out / "report.md").read_text()
    pngs = sorted((out / "plots").glob("*.png"))
    assert {p.stem.rsplit("_", 1)[0] for p in pngs} >= {"metric_vs_T", "learning_curves", "solved_rate",
                                                         "metric_vs_throughput", "length_generalisation"}
    assert any(p.stem.startswith("diagnostics_adding_T") for p in pngs)
    for png in pngs:
        assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"
        assert f"(plots/{png.name})" in report_md and png.with_suffix(".svg").stat().st_size > 0


@pytest.mark.slow
def test_sweep_failure_recorded_by_a_child_process_sets_the_exit_code(workdir):
    """A job that fails in a joblib worker leaves a record; the parent reads it and exits 1."""
    proc = run_cli(["-m", *TINY, "hydra/launcher=local", "cell=gru", "task=adding", "task.seq_len=1,6",
                    "trainer.max_steps=5", "trainer.checkpoint=false", "trainer.threads=1"], workdir)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert sorted(r["status"] for r in summaries(workdir / "results")) == ["failed", "finished"]
    assert "1 run(s) of the sweep failed" in proc.stderr


def test_speed_records_are_found_tabulated_and_plotted(tmp_path):
    root = tmp_path / "results"
    full_report_records(root)
    (root / "run0" / "x").mkdir(parents=True)
    (root / "run0" / "x" / "metrics.csv").write_text("step,val/mse\n")  # a run's curve, not a speed record
    report = build_report(root, tmp_path / "out", plots=False)
    assert len(report.speed) == 4 and set(report.speed["preset"]) == {"gru", "lstm"}
    rows = markdown_rows(tmp_path / "out" / "speed.md")
    assert {r["seq_len"] for r in rows} == {"50", "100"}


def test_speed_plot_leaves_the_projection_floor_to_the_table(tmp_path):
    """Paths of ``rnnbench-speed`` beyond fast each get a line (``preset (path)``) in the speed
    plot, except the ``projection`` floor (one GEMM, not a training step), which the table keeps."""
    from rnnbench.speed import COLUMNS

    root = tmp_path / "results"
    write_record(root, "gru_0")  # a report needs a run
    rows = [{**{c: "" for c in COLUMNS}, "preset": "qrnn", "cell": "qrnn", "path": path, "seq_len": T, "batch": 8,
             "hidden": 16, "ms_fwd_bwd": 2.0, "tokens_per_s_fwd_bwd": 8 * T / 2.0 * 1000}
            for path in ("fast", "loop", "projection") for T in (50, 100)]
    pd.DataFrame(rows, columns=COLUMNS).to_csv(root / "speed_bench.csv", index=False)
    figures = {}
    report = build_report(root, tmp_path / "out", on_figure=lambda name, fig: figures.update({name: fig}))
    assert set(report.speed["path"]) == {"fast", "loop", "projection"}
    assert {line.get_label() for line in figures["speed"].axes[0].get_lines()
            if not line.get_label().startswith("_")} == {"qrnn (fast)", "qrnn (loop)"}
