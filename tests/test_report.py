"""The report: statistics checked against independent computations, every run shown
(failed ones too), files written; a real sweep through the CLI's joblib launcher."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pandas as pd
import pytest

from conftest import TINY, run_cli, summaries
from rnnbench.files import write_json_atomic
from rnnbench.record import SUMMARY_FILE
from rnnbench.errors import ConfigError
from rnnbench.report import build_report, main, mean_ci

# Two-sided 95% quantiles of Student's t (any printed t table), by degrees of freedom:
# an oracle independent of the scipy call inside the report.
T_975 = {1: 12.7062, 2: 4.3027, 3: 3.1824}


def _ci(values: list[float]) -> float:
    return T_975[len(values) - 1] * statistics.stdev(values) / math.sqrt(len(values))


def _record(root: Path, name: str, *, cell="gru", T=10, seed=0, status="finished", mse=None, solved=False,
            tokens_per_s=1000.0, error=None) -> None:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    write_json_atomic(run_dir / SUMMARY_FILE, {
        "run_dir": str(run_dir), "cell": cell, "cell_preset": cell, "task": "adding",
        "task_params": {"seq_len": T, "placement": "halves"}, "seed": seed, "status": status, "error": error,
        "solved": solved, "metric": "mse", "metrics": {"test": {"mse": mse}} if mse is not None else {},
        "baseline": {"mse": 1 / 6}, "params": 977, "tokens_per_s": tokens_per_s, "steps": 100,
        "solved_criterion": {"metric": "mse", "mode": "min", "threshold": 0.01},
        "config": {"cell": {"name": cell, "hidden_size": 16}, "optim": {"lr": 0.002}, "task": {"seq_len": T}},
    })


def test_statistics_horizon_and_failed_runs(tmp_path):
    """Means and 95% t-intervals over seeds, solved rates, the memory horizon, and
    failed/diverged runs kept in every table."""
    root = tmp_path / "results"
    gru_10, gru_20, lstm_10 = [0.004, 0.006, 0.02], [0.009, 0.15], [0.003, 0.002]
    for seed, mse in enumerate(gru_10):
        _record(root, f"g10_{seed}", T=10, seed=seed, mse=mse, solved=mse <= 0.01)
    for seed, mse in enumerate(gru_20):
        _record(root, f"g20_{seed}", T=20, seed=seed, mse=mse, solved=mse <= 0.01)
    _record(root, "g20_2", T=20, seed=2, status="failed", error="RuntimeError: out of memory\ntraceback...")
    for seed, mse in enumerate(lstm_10):
        _record(root, f"l10_{seed}", cell="lstm", T=10, seed=seed, mse=mse, solved=True)
    _record(root, "l10_2", cell="lstm", T=10, seed=2, status="diverged", error="loss became nan at step 40")

    report = build_report(root, tmp_path / "out", plots=False)
    rows = {(r.cell_preset, r.seq_len): r for r in report.results.itertuples()}
    assert set(rows) == {("gru", 10), ("gru", 20), ("lstm", 10)}
    for key, values in {("gru", 10): gru_10, ("gru", 20): gru_20, ("lstm", 10): lstm_10}.items():
        assert rows[key].mean == pytest.approx(statistics.mean(values))
        assert rows[key].ci95 == pytest.approx(_ci(values), rel=1e-4)
        assert rows[key].n == len(values)
    assert (rows["gru", 10].solved, rows["gru", 10].ended) == (2, 3)
    # The failed run is counted and listed, but is no evidence about the cell.
    assert (rows["gru", 20].runs, rows["gru", 20].failed, rows["gru", 20].ended, rows["gru", 20].solved) == (3, 1, 2, 1)
    # A diverged run ended: it counts as not solved.
    assert (rows["lstm", 10].diverged, rows["lstm", 10].solved, rows["lstm", 10].ended) == (1, 2, 3)

    horizon = {r.cell_preset: r.horizon for r in report.horizon.itertuples()}
    assert horizon == {"gru": 10, "lstm": 10}  # gru at 20: 1 of 2 ended runs is no majority

    assert sorted(report.problems["status"]) == ["diverged", "failed"]
    text = (tmp_path / "out" / "results.md").read_text()
    assert "2 finished, 1 failed" in text and "2 finished, 1 diverged" in text
    assert "RuntimeError: out of memory" in (tmp_path / "out" / "problems.md").read_text()
    assert "traceback" not in (tmp_path / "out" / "problems.md").read_text()  # first line only
    assert r"\pm" in (tmp_path / "out" / "results.tex").read_text()
    csv = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert len(csv) == 1 + 3 and "ci95" in csv[0]


def test_filters_and_group_by_config_keys(tmp_path):
    root = tmp_path / "results"
    for seed in range(2):
        _record(root, f"g{seed}", seed=seed, mse=0.1 + seed)
        _record(root, f"l{seed}", cell="lstm", seed=seed, mse=0.5)
    report = build_report(root, tmp_path / "out", cells=["lstm"], plots=False)
    assert list(report.results["cell_preset"]) == ["lstm"]
    report = build_report(root, tmp_path / "out", where=["cell.hidden_size=16", "seed=1"], plots=False)
    assert sorted(report.runs["cell_preset"]) == ["gru", "lstm"] and set(report.runs["seed"]) == {1}
    report = build_report(root, tmp_path / "out", group_by=["optim.lr"], plots=False)
    (row,) = report.results.itertuples()
    assert row.n == 4 and row.group == "0.002"
    with pytest.raises(ConfigError, match="no record field or config key 'optim.lrr'"):
        build_report(root, tmp_path / "out", where=["optim.lrr=1"], plots=False)
    with pytest.raises(ConfigError, match="no run records"):
        build_report(root, tmp_path / "out", tasks=["copy"], plots=False)


def _text_record(root: Path, name: str, *, task: str, dataset: str, metric: str, value: float, seed=0,
                 threshold=None, solved=False) -> None:
    """A language-modelling or translation record: no seq_len, a dataset."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    write_json_atomic(run_dir / SUMMARY_FILE, {
        "run_dir": str(run_dir), "cell": "gru", "cell_preset": "gru", "task": task,
        "task_params": {"dataset": dataset}, "seed": seed, "status": "finished", "error": None, "solved": solved,
        "metric": metric, "metrics": {"test": {metric: value}}, "baseline": {}, "params": 5000, "tokens_per_s": 900.0,
        "solved_criterion": {"metric": metric, "mode": "min" if metric == "ppl" else "max", "threshold": threshold},
        "config": {"cell": {"name": "gru"}, "task": {"dataset": dataset}},
    })


def test_language_modelling_and_translation_records_per_dataset(tmp_path, capsys):
    """Real-data tasks are compared per dataset, have no memory horizon (no T), and show
    "-" where the task has no solved criterion."""
    root = tmp_path / "results"
    ptb, wiki = [120.0, 130.0], [150.0, 170.0]
    for seed, ppl in enumerate(ptb):
        _text_record(root, f"ptb{seed}", task="lm", dataset="ptb_word", metric="ppl", value=ppl, seed=seed)
    for seed, ppl in enumerate(wiki):
        _text_record(root, f"wiki{seed}", task="lm", dataset="wikitext2", metric="ppl", value=ppl, seed=seed)
    _text_record(root, "dates", task="translation", dataset="synthetic", metric="bleu", value=97.0, threshold=95.0,
                 solved=True)
    _record(root, "adding", T=10, mse=0.004, solved=True)
    # Refused before it started (as cli._record_config_error writes it): no criterion, no task_params.
    (root / "refused").mkdir()
    write_json_atomic(root / "refused" / SUMMARY_FILE, {
        "cell": "sru", "task": "adding", "seed": 0, "status": "failed", "error": "ConfigError: bad",
        "config": {"cell": {"name": "sru"}, "task": {"seq_len": 10}}})

    report = build_report(root, tmp_path / "out")
    rows = {r.task: r for r in report.results.itertuples()}
    assert set(rows) == {"lm (ptb_word)", "lm (wikitext2)", "translation (synthetic)", "adding"}
    horizon = {r.cell_preset: r for r in report.horizon.itertuples()}
    assert set(horizon) == {"gru", "sru"}  # the cell whose only run failed is shown, not dropped
    assert pd.isna(horizon["sru"].horizon) and horizon["sru"][-1] == "10: 0/0"
    assert rows["lm (ptb_word)"].mean == pytest.approx(statistics.mean(ptb))
    assert rows["lm (wikitext2)"].ci95 == pytest.approx(_ci(wiki), rel=1e-4)
    assert set(report.horizon["task"]) == {"adding"}  # only tasks with a length have a horizon
    table = (tmp_path / "out" / "results.md").read_text()
    lm_line = next(line for line in table.splitlines() if "lm (ptb_word)" in line)
    assert "| -        |" in lm_line  # no solved criterion: not "0/2"
    assert "1/1" in next(line for line in table.splitlines() if "translation (synthetic)" in line)
    plots = {p.name for p in (tmp_path / "out" / "plots").glob("*.png")}
    assert {"metric_vs_T_adding.png", "metric_vs_throughput_lm_ptb_word.png",
            "metric_vs_throughput_translation_synthetic.png"} <= plots
    # --task accepts the registry name: every dataset of that task.
    only_lm = build_report(root, tmp_path / "lm", tasks=["lm"], plots=False)
    assert set(only_lm.results["task"]) == {"lm (ptb_word)", "lm (wikitext2)"}
    print(only_lm.summary())
    out = capsys.readouterr().out
    assert "lm (wikitext2)" in out and "Memory horizon" not in out


def test_mean_ci_edge_cases():
    assert math.isnan(mean_ci([0.5])[1]) and mean_ci([0.5])[0] == 0.5
    assert mean_ci([float("nan"), 1.0, 3.0])[2] == 2
    assert mean_ci([])[2] == 0


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
    # Length generalisation and diagnostics, recorded per run.
    for record in found:
        (length,) = record["metrics"]["length_generalisation"]
        assert length == "20" and set(record["metrics"]["length_generalisation"]["20"]) >= {"mse", "solved"}
        diagnostics = json.loads((Path(record["run_dir"]) / record["diagnostics"]).read_text())
        assert len(diagnostics["grad_norm"]) == record["task_params"]["seq_len"]

    sweep_dir = Path(found[0]["run_dir"]).parent
    out = workdir / "report"
    main([str(sweep_dir), "--out", str(out)])
    assert "Memory horizon" in capsys.readouterr().out
    # Rows and statistics, recomputed here from the records themselves.
    csv = (out / "results.csv").read_text().splitlines()
    header = csv[0].split(",")
    rows = {(line.split(",")[header.index("cell_preset")], int(float(line.split(",")[header.index("seq_len")]))):
            line.split(",") for line in csv[1:]}
    assert set(rows) == {(c, T) for c in ("gru", "lstm") for T in (6, 10)}
    for (cell, T), row in rows.items():
        values = [r["metrics"]["test"]["mse"] for r in found if r["cell"] == cell and r["task_params"]["seq_len"] == T]
        assert float(row[header.index("mean")]) == pytest.approx(statistics.mean(values))
        assert float(row[header.index("ci95")]) == pytest.approx(_ci(values), rel=1e-4)
        assert int(row[header.index("runs")]) == 2
    report_md = (out / "report.md").read_text()
    pngs = sorted((out / "plots").glob("*.png"))
    assert {p.stem.rsplit("_", 1)[0] for p in pngs} >= {"metric_vs_T", "learning_curves", "solved_rate",
                                                         "metric_vs_throughput", "length_generalisation"}
    assert any(p.stem.startswith("diagnostics_adding_T") for p in pngs)
    for png in pngs:
        assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"
        assert f"(plots/{png.name})" in report_md
        assert png.with_suffix(".svg").stat().st_size > 0


@pytest.mark.slow
def test_sweep_failure_recorded_by_a_child_process_sets_the_exit_code(workdir):
    """A job that fails in a joblib worker leaves a record; the parent reads it and exits 1."""
    proc = run_cli(["-m", *TINY, "hydra/launcher=local", "cell=gru", "task=adding", "task.seq_len=1,6",
                    "trainer.max_steps=5", "trainer.checkpoint=false", "trainer.threads=1"], workdir)
    assert proc.returncode == 1, proc.stderr[-3000:]
    statuses = sorted(r["status"] for r in summaries(workdir / "results"))
    assert statuses == ["failed", "finished"]
    assert "1 run(s) of the sweep failed" in proc.stderr


def test_speed_records_are_found_tabulated_and_plotted(tmp_path):
    from rnnbench.report import load_speed, plot_speed
    from rnnbench.speed import COLUMNS

    rows = [{**{c: "" for c in COLUMNS}, "preset": p, "cell": p, "path": "fast", "seq_len": T, "batch": 8, "hidden": 16,
             "ms_fwd_bwd": ms, "tokens_per_s_fwd_bwd": 8 * T / ms * 1000}
            for p, ms in (("gru", 2.0), ("lstm", 3.0)) for T in (50, 100)]
    (tmp_path / "bench").mkdir()
    import csv

    with (tmp_path / "bench" / "speed.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (tmp_path / "bench" / "metrics.csv").write_text("step,val/mse\n")  # a run's curve, not a speed record
    speed = load_speed(tmp_path)
    assert len(speed) == 4 and set(speed["preset"]) == {"gru", "lstm"}
    ((title, png),) = plot_speed(speed, tmp_path / "out")
    assert png.stat().st_size > 5000 and png.with_suffix(".svg").is_file()
