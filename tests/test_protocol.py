"""The comparison protocol: the horizon search's decisions (in process), and the tuning,
horizon and protocol sweepers through the real command line on a task whose "solved" is a
known function of T."""

from __future__ import annotations

import math

import pytest
import yaml

from helpers.cli import run_cli, summaries
from rnnbench.errors import ConfigError
from rnnbench.horizon import HorizonSearch, HorizonSettings
from rnnbench.protocol import choose, grid_values


def run_search(true_horizon: int, settings: HorizonSettings, noise: dict | None = None) -> HorizonSearch:
    """Drive a search with ``solved = T <= true_horizon`` (``noise`` overrides single T values)."""
    search = HorizonSearch(settings)
    while (T := search.next_length()) is not None:
        search.record(T, (noise or {}).get(T, T <= true_horizon))
    return search


@pytest.mark.parametrize("true_horizon", [1, 9, 10, 11, 37, 100, 333, 639, 640, 5000])
def test_search_brackets_the_true_horizon_to_the_resolution(true_horizon):
    settings = HorizonSettings(start=10, growth=2.0, max_length=640, resolution=0.25)
    search = run_search(true_horizon, settings)
    found, failed = search.longest_solved, search.shortest_failed
    assert all(T <= 640 for T in search.tried)
    if true_horizon < 10:  # the start fails: nothing shorter is tried
        assert found is None and search.tried == {10: False}
    elif true_horizon >= 640:  # solved up to the cap
        assert found == 640 and failed is None
    else:
        assert found <= true_horizon < failed
        assert failed - found <= 1 or failed / found <= 1.25
    # Growth phase: 10, 20, 40 ... ; bisection adds about log2(log(ratio) / log(1.25)) runs.
    assert len(search.tried) <= 7 + 4


def test_bisection_is_on_a_log_scale_and_stops_at_adjacent_integers():
    search = run_search(37, HorizonSettings(start=10, growth=2.0, max_length=640, resolution=0.01))
    assert list(search.tried)[:4] == [10, 20, 40, 28]  # 28 = round(sqrt(20 * 40))
    assert search.longest_solved == 37 and search.shortest_failed == 38


def test_horizon_is_monotone_a_lucky_success_above_a_failure_does_not_count():
    search = HorizonSearch(HorizonSettings(start=10, resolution=0.25))
    for T, solved in [(10, True), (20, False), (40, True)]:
        search.record(T, solved)
    assert search.longest_solved == 10 and search.shortest_failed == 20
    assert search.next_length() == 14  # bisects between 10 and 20, ignoring 40


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="horizon.growth=1 is invalid"):
        HorizonSettings(growth=1)
    with pytest.raises(ConfigError, match="horizon.max_length=5 is invalid"):
        HorizonSettings(start=10, max_length=5)


def test_grid_values_and_the_choice_of_the_best_trial():
    spec = {"key": "optim.lr", "low": 1e-3, "high": 1e-1, "points": 3}
    assert grid_values("lr", spec) == pytest.approx([1e-3, 1e-2, 1e-1])
    assert grid_values("lr", {"key": "optim.lr", "values": [0.5, 0.25]}) == [0.5, 0.25]
    with pytest.raises(ConfigError, match="hydra.sweeper.search.lr.points=0 is invalid"):
        grid_values("lr", {**spec, "points": 0})
    batch = [[f"optim.lr={lr}", f"seed={seed}"] for lr in (0.1, 0.01) for seed in (7, 8)]
    runs = [{"cell_preset": "gru", "task_preset": "adding", "metric": "mse", "metric_mode": "min", "status": "finished",
             "val_best": value} for value in (0.2, 0.4, 0.1, 0.3)]  # lr 0.1: mean 0.3; lr 0.01: mean 0.2
    chosen = choose(batch, runs, ["optim.lr"])["gru"]["adding"]
    assert chosen["values"] == {"optim.lr": 0.01}
    assert [t["val_best"] for t in chosen["trials"]] == pytest.approx([0.3, 0.2])
    runs[2] = {**runs[2], "status": "diverged", "val_best": None}  # a trial without a score loses
    assert choose(batch, runs, ["optim.lr"])["gru"]["adding"]["values"] == {"optim.lr": 0.1}


# --- through the command line ------------------------------------------------------------------------
THRESHOLD_TASK = '''
from rnnbench import register_task
from rnnbench.tasks.adding import AddingTask


@register_task("threshold_adding")
class ThresholdAdding(AddingTask):
    """The adding problem whose solved criterion is a known function of T: seq_len <= true_horizon."""

    def __init__(self, *, true_horizon: int = 30, **options):
        super().__init__(**options)
        self.true_horizon = true_horizon

    def is_solved(self, metrics):
        return self.seq_len <= self.true_horizon
'''
TINY_RUN = ["cell.hidden_size=4", "trainer.max_steps=3", "trainer.val_check_interval=1", "trainer.progress_bar=none",
            "task.val_size=8", "task.test_size=8", "task.batch_size=4", "trainer.threads=1"]


@pytest.fixture
def threshold(tmp_path):
    path = tmp_path / "threshold.py"
    path.write_text(THRESHOLD_TASK)
    return [f"plugins=[{path}]", "task.name=threshold_adding", "+task.true_horizon=37", *TINY_RUN]


def horizon_command(threshold, *extra):
    return ["-m", "hydra/sweeper=horizon", *threshold, "seed=0,1", "hydra.sweeper.start=5",
            "hydra.sweeper.max_length=200", *extra]


@pytest.mark.slow
def test_horizon_sweep_finds_the_horizon_reuses_records_and_resumes(workdir, threshold):
    # Interrupted: the run cap stops both searches after 6 runs in all.
    first = run_cli(horizon_command(threshold, "hydra.sweeper.max_runs=6"), workdir)
    assert first.returncode == 0, first.stderr[-3000:]
    assert len(summaries(workdir / "results")) == 6
    # The same command without the cap goes on: the 6 finished configs are reused, not rerun.
    second = run_cli(horizon_command(threshold), workdir)
    assert second.returncode == 0, second.stderr[-3000:]
    records = summaries(workdir / "results")
    assert (second.stdout + second.stderr).count("skipping: the same config") == 6
    by_seed = {seed: sorted((r["task_params"]["seq_len"], r["solved"]) for r in records if r["seed"] == seed)
               for seed in (0, 1)}
    # 5, 10, 20 solved; 40 fails; bisection 28 (sqrt(20*40)), 33 (sqrt(28*40)): 40/33 <= 1.25.
    assert by_seed[0] == by_seed[1] == [(5, True), (10, True), (20, True), (28, True), (33, True), (40, False)]
    assert all(r["config"]["stage"] == "horizon" for r in records)
    sweep_dir = max((workdir / "results" / "sweeps").glob("*/*"))
    result = yaml.safe_load((sweep_dir / "horizon.yaml").read_text())
    assert [s["horizon"] for s in result["searches"]] == [33, 33]
    assert "progress: 12 jobs done (0 failed)" in second.stdout + second.stderr
    # The second sweep's report covers every job, reused ones included (pointers).
    assert f"rnnbench: 12 runs in {sweep_dir.relative_to(workdir)}" in second.stdout


@pytest.mark.slow
def test_tuning_gives_every_cell_the_same_budget_and_its_file_is_applied(workdir, threshold):
    tune = run_cli(["-m", "hydra/sweeper=tune", *threshold, "cell=gru,lstm", "task.seq_len=8",
                    "hydra.sweeper.search.lr.points=2", "hydra.sweeper.search.lr.low=1e-3",
                    "hydra.sweeper.search.lr.high=1e-1", "hydra.sweeper.seeds=[100,101]"], workdir)
    assert tune.returncode == 0, tune.stderr[-3000:]
    trials = summaries(workdir / "results")
    assert len(trials) == 2 * 2 * 2  # cells x learning rates x tuning seeds
    for cell in ("gru", "lstm"):
        mine = [r for r in trials if r["cell_preset"] == cell]
        assert sorted((r["config"]["optim"]["lr"], r["seed"]) for r in mine) == [
            (1e-3, 100), (1e-3, 101), (pytest.approx(0.1), 100), (pytest.approx(0.1), 101)]
        assert {r["config"]["trainer"]["max_steps"] for r in mine} == {3}
        assert {r["config"]["stage"] for r in mine} == {"tune"}
        assert {r["config"]["trainer"]["stop_when_solved"] for r in mine} == {False}  # every trial its whole budget
        assert {r["steps"] for r in mine} == {3}
    (path,) = (workdir / "results").rglob("tuned.yaml")
    tuned = yaml.safe_load(path.read_text())
    for cell in ("gru", "lstm"):  # the choice, recomputed from the records
        means = {}
        for r in trials:
            if r["cell_preset"] == cell:
                means.setdefault(r["config"]["optim"]["lr"], []).append(r["metrics"]["val_best"]["mse"])
        best = min(means, key=lambda lr: sum(means[lr]) / 2)
        # keyed by the presets chosen: task.name changed the task class, the task preset is still "adding"
        assert tuned["settings"][cell]["adding"]["values"]["optim.lr"] == pytest.approx(best)
    assert tuned["protocol"]["seeds"] == [100, 101] and tuned["protocol"]["max_steps"] == 3

    applied = run_cli(["cell=lstm", *threshold, "task.seq_len=9", f"tuning={path}"], workdir)
    assert applied.returncode == 0, applied.stderr[-3000:]
    (record,) = [r for r in summaries(workdir / "results" / "runs")]
    entry = tuned["settings"]["lstm"]["adding"]
    assert record["config"]["optim"]["lr"] == pytest.approx(entry["values"]["optim.lr"])
    assert record["protocol"]["tuning"]["values"] == entry["values"]
    assert len(record["protocol"]["tuning"]["trials"]) == 2
    refused = run_cli(["cell=rnn", *threshold, f"tuning={path}"], workdir)
    assert refused.returncode == 2 and "has no settings for cell preset 'rnn'" in refused.stderr


@pytest.mark.slow
def test_protocol_sweep_tunes_then_searches_with_the_tuned_settings(workdir, threshold):
    proc = run_cli(["-m", "hydra/sweeper=protocol", *threshold, "cell=gru", "seed=0",
                    "hydra.sweeper.start=20", "hydra.sweeper.max_length=40", "hydra.sweeper.tune.length=8",
                    "hydra.sweeper.tune.search.lr.points=2"], workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = summaries(workdir / "results")
    tuning = [r for r in records if r["config"]["stage"] == "tune"]
    searched = sorted((r["task_params"]["seq_len"], r["solved"]) for r in records if r["config"]["stage"] == "horizon")
    assert len(tuning) == 2 and searched == [(20, True), (28, True), (33, True), (40, False)]
    chosen = min(tuning, key=lambda r: r["metrics"]["val_best"]["mse"])["config"]["optim"]["lr"]
    for r in records:
        if r["config"]["stage"] == "horizon":
            assert math.isclose(r["config"]["optim"]["lr"], chosen) and r["protocol"]["tuning"]["file"]
