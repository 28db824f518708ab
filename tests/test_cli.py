"""End-to-end runs through the real command line, from a directory outside the repo."""

from __future__ import annotations

import json

import pytest

from helpers.cli import TINY, run_cli, summaries

pytestmark = pytest.mark.slow  # every test here starts the CLI in a subprocess

REQUIRED_FIELDS = {
    "cell", "task", "task_params", "hidden_size", "num_layers", "bidirectional", "params", "state_size", "seed",
    "status", "error", "solved", "metrics", "baseline", "steps", "wall_time_s", "tokens_per_s", "device",
    "versions", "git_commit", "config_hash", "config",
}


def test_single_run_writes_a_complete_record(workdir):
    proc = run_cli(["cell=gru", "task=adding", *TINY], workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = summaries(workdir / "results")
    assert REQUIRED_FIELDS <= set(record)
    assert record["status"] == "finished" and record["error"] is None
    assert (record["cell"], record["task"], record["task_params"]["seq_len"]) == ("gru", "adding", 10)
    assert record["steps"] == 20
    # GRU, hidden 16, input 2: 3*16*(2+16) weights + 2*3*16 biases; head 16+1.
    assert record["params"] == 3 * 16 * (2 + 16) + 2 * 3 * 16 + 17
    assert record["state_size"] == 16
    assert record["baseline"]["mse"] == pytest.approx(1 / 6)
    assert set(record["metrics"]) == {"val_best", "val_last", "test"}
    assert 0 < record["metrics"]["test"]["mse"] < 10
    assert record["tokens_per_s"] > 0
    assert set(record["versions"]) >= {"python", "torch", "pytorch-lightning", "hydra-core"}
    assert record["config"]["cell"]["hidden_size"] == 16
    run_dir = workdir / "results" / "runs"
    (path,) = run_dir.rglob("summary.json")
    assert (path.parent / "metrics.csv").read_text().startswith(("epoch", "step", "train", "val"))
    assert (path.parent / "checkpoints" / "last.ckpt").is_file()
    assert (path.parent / "config.yaml").is_file()


def test_sweep_runs_every_combination_into_distinct_dirs(workdir):
    proc = run_cli(["-m", "cell=gru,lstm", "task=copy,adding", "seed=0,1", *TINY,
                    "trainer.max_steps=10", "trainer.checkpoint=false"], workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = summaries(workdir / "results")
    assert len(records) == 8
    assert len({r["run_dir"] for r in records}) == 8
    assert {(r["cell"], r["task"], r["seed"]) for r in records} == {
        (c, t, s) for c in ("gru", "lstm") for t in ("copy", "adding") for s in (0, 1)}
    assert all(r["status"] == "finished" for r in records)
    # Different seeds give different hashes; the copy task reports its memoryless baseline.
    assert len({r["config_hash"] for r in records}) == 8
    copy = next(r for r in records if r["task"] == "copy")
    assert copy["baseline"]["loss"] == pytest.approx(10 * __import__("math").log(8) / (10 + 20))
    assert "8 runs in" in proc.stdout and "recall_acc" in proc.stdout  # the closing table


def test_ddp_cpu_run(workdir):
    proc = run_cli(["trainer=ddp_cpu", *TINY], workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = summaries(workdir / "results")  # rank 1 wrote nothing
    assert record["status"] == "finished"
    assert record["device"]["devices"] == 2 and record["world_size"] == 2
    assert record["steps"] == 20


def test_list_shows_registered_names(workdir):
    proc = run_cli(["list"], workdir)
    assert proc.returncode == 0, proc.stderr
    for name in ("gru", "lstm", "adding", "copy"):
        assert name in proc.stdout


@pytest.mark.parametrize(
    "args, expected",
    [
        (["cell=grux"], "Did you mean 'gru'"),
        (["task=addding"], "unknown task 'addding'. Did you mean 'adding'"),
        (["cell.name=lstmm"], "unknown cell 'lstmm'. Did you mean 'lstm'"),
        (["task=adding", "task.seq_len=-5"], "task.seq_len=-5"),
        (["+task.colour=blue"], "task 'adding' has no option 'colour'"),
        (["+cell.colour=blue"], "cell 'gru' has no option 'colour'"),
        (["optim.lr=-1"], "optim.lr=-1"),
        (["trainer.max_time=10min"], "trainer.max_time"),
        (["seed=-1"], "seed=-1"),
        (["plugins=[does_not_exist.py]"], "does_not_exist.py"),
        (["trainer=gpu"], "no CUDA GPU is visible"),
        (["cell.dropout=1.5"], "cell.dropout=1.5"),
    ],
)
def test_bad_input_fails_before_training_with_a_clear_message(workdir, args, expected):
    proc = run_cli([*TINY, *args], workdir)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not list(workdir.rglob("summary.json")) and not list(workdir.rglob("*.ckpt"))


def test_unknown_top_level_key_is_refused(workdir):
    proc = run_cli(["colour=blue", *TINY], workdir)
    assert proc.returncode == 2
    assert "colour" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(workdir.rglob("summary.json"))


CAUSAL_TASK = '''
from rnnbench import register_task
from rnnbench.tasks.adding import AddingTask

@register_task("causal_adding")
class CausalAdding(AddingTask):
    causal = True
'''


def test_bidirectional_cell_on_causal_task_is_refused(workdir):
    (workdir / "my_tasks.py").write_text(CAUSAL_TASK)
    proc = run_cli(["plugins=[my_tasks.py]", "task.name=causal_adding", "cell=bigru", *TINY], workdir)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "cell.bidirectional=true is not allowed with task 'causal_adding'" in proc.stderr
    assert "Traceback" not in proc.stderr
    # The same plugin file with a unidirectional cell trains.
    proc = run_cli(["plugins=[my_tasks.py]", "task.name=causal_adding", "cell=gru", *TINY], workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = summaries(workdir / "results")
    assert record["task"] == "causal_adding" and record["status"] == "finished"


def test_bad_job_in_a_sweep_is_recorded_and_the_sweep_goes_on(workdir):
    proc = run_cli(["-m", *TINY, "task.seq_len=-5,8", "trainer.checkpoint=false"], workdir)
    assert proc.returncode == 1  # the sweep reports that one job failed ...
    records = summaries(workdir / "results")
    assert len(records) == 2  # ... but both jobs left a record
    by_status = {r["status"]: r for r in records}
    assert by_status["failed"]["error"].startswith("ConfigError: task.seq_len=-5")
    assert by_status["finished"]["task_params"]["seq_len"] == 8


def test_run_directories_do_not_collide(workdir):
    first = run_cli([*TINY, "trainer.max_steps=2", "trainer.val_check_interval=1"], workdir)
    # force=true: run the same experiment again (resume=true would find it finished and skip it)
    second = run_cli([*TINY, "trainer.max_steps=2", "trainer.val_check_interval=1", "force=true"], workdir)
    assert first.returncode == 0 and second.returncode == 0
    records = summaries(workdir / "results")
    assert len(records) == 2 and records[0]["run_dir"] != records[1]["run_dir"]
    assert records[0]["config_hash"] == records[1]["config_hash"]  # same experiment, recognisably
    assert records[0]["metrics"] == records[1]["metrics"]  # and, on the CPU, the same numbers
    assert records[0]["deterministic"] is True  # which the record says
    assert json.loads(json.dumps(records[0]))  # plain JSON


NAN_TASK = '''
from rnnbench import register_task
from rnnbench.tasks.adding import AddingTask

@register_task("nan_after_5")
class NanAfterFive(AddingTask):
    """The adding problem whose training loss turns NaN at the 6th training step."""
    training_calls = 0

    def loss_and_metrics(self, model, batch):
        loss, metrics = super().loss_and_metrics(model, batch)
        if model.training:
            NanAfterFive.training_calls += 1
            if NanAfterFive.training_calls > 5:
                loss = loss * float("nan")
        return loss, metrics
'''


def test_nan_loss_stops_the_run_and_is_recorded_as_diverged(workdir):
    (workdir / "nan_task.py").write_text(NAN_TASK)
    proc = run_cli([*TINY, "plugins=[nan_task.py]", "task.name=nan_after_5"], workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]  # diverging is a result, not a crash
    (record,) = summaries(workdir / "results")
    assert record["status"] == "diverged"
    assert record["diverged_at_step"] == 5 and record["steps"] == 5
    assert "nan" in record["error"]


def test_console_script_and_table_command(workdir):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / "rnnbench"
    proc = subprocess.run([str(script), *TINY, "trainer.max_steps=2", "trainer.val_check_interval=1"], cwd=workdir,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = subprocess.run([str(script), "table", "results"], cwd=workdir, capture_output=True, text=True)
    assert table.returncode == 0 and "adding" in table.stdout and "finished" in table.stdout
