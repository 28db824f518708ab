"""Faults during runs and data safety: SIGKILL and resume, Ctrl-C, exceptions in a
sweep, skipping what already ran, corrupt records and checkpoints, atomic saves."""

from __future__ import annotations

import json
import logging
import os
import pickle

import pytest
import torch

from helpers.cli import TINY, compose_config, run_cli, summaries
from rnnbench import store
from rnnbench.report.frame import load_frame
from rnnbench.files import write_json_atomic
from rnnbench.checkpoints import AtomicCheckpointIO, read_checkpoint
from rnnbench.errors import CheckpointError, ConfigError
from rnnbench.run import run_job

# The adding problem with injected faults. RNNBENCH_TEST_FAULT=KIND@N makes the
# training step after the N-th send this process SIGKILL or SIGINT; it is read from
# the environment, not the config, so a resumed run has the same config hash.
# task.fail_at_step raises an exception at that step instead.
FAULT_TASK = '''
import os
import signal
from typing import Optional

from rnnbench import register_task
from rnnbench.tasks.adding import AddingTask


@register_task("faulty_adding")
class FaultyAdding(AddingTask):
    def __init__(self, *, fail_at_step: Optional[int] = None, **options):
        super().__init__(**options)
        self.fail_at_step = fail_at_step
        self.steps_taken = 0

    def loss_and_metrics(self, model, batch):
        if model.training:
            self.steps_taken += 1
            kind, _, step = os.environ.get("RNNBENCH_TEST_FAULT", "").partition("@")
            if step and self.steps_taken > int(step):
                if kind == "int":
                    # A Ctrl-C, whatever this process inherited: a background job of a script
                    # starts with SIGINT ignored, and Python keeps it so.
                    signal.signal(signal.SIGINT, signal.default_int_handler)
                os.kill(os.getpid(), {"kill": signal.SIGKILL, "int": signal.SIGINT}[kind])
            if self.fail_at_step is not None and self.steps_taken > self.fail_at_step:
                raise RuntimeError("injected fault")
        return super().loss_and_metrics(model, batch)
'''


@pytest.fixture(scope="session")
def fault_plugin(tmp_path_factory):
    """One file for the whole session: tests that load it in-process register its task once."""
    path = tmp_path_factory.mktemp("plugins") / "faults.py"
    path.write_text(FAULT_TASK)
    return path


@pytest.fixture
def faulty(fault_plugin):
    return [f"plugins=[{fault_plugin}]", "task.name=faulty_adding", *TINY]


def run_dirs(root):
    return sorted(p.parent for p in root.rglob("summary.json"))


@pytest.mark.slow
def test_killed_run_resumes_to_the_result_of_an_uninterrupted_run(workdir, faulty):
    args = [*faulty, "trainer.max_steps=30", "cell=stacked_gru", "cell.num_layers=2"]  # dropout 0.1: RNG matters
    cfg = compose_config([*args, f"results_dir={workdir / 'reference'}"], resolved=False)
    reference = run_job(cfg, workdir / "reference" / "run").record.to_dict()
    assert reference["status"] == "finished" and reference["steps"] == 30

    killed = run_cli(args, workdir, env={"RNNBENCH_TEST_FAULT": "kill@15"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    (run_dir,) = run_dirs(workdir / "results")
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "running"  # SIGKILL: no cleanup ran
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 10

    resumed = run_cli(args, workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert run_dirs(workdir / "results") == [run_dir]  # went on in its own directory, nothing new
    (record,) = summaries(workdir / "results")
    assert record["status"] == "finished" and record["steps"] == 30 and record["resumed_from_step"] == 10
    assert record["config_hash"] == reference["config_hash"]
    assert record["metrics"] == reference["metrics"]  # the same numbers, to the last bit
    assert record["deterministic"] is True


@pytest.mark.slow
def test_ctrl_c_is_recorded_as_interrupted_and_the_rerun_resumes(workdir, faulty):
    interrupted = run_cli(faulty, workdir, env={"RNNBENCH_TEST_FAULT": "int@15"})
    assert interrupted.returncode != 0
    (record,) = summaries(workdir / "results")
    assert record["status"] == "interrupted" and "KeyboardInterrupt" in record["error"]
    assert "Traceback" not in interrupted.stderr

    result = run_job(faulty_config(workdir, faulty), workdir / "unused")  # the same command, in-process
    again = result.record.to_dict()
    assert result.reused == "resumed" and again["status"] == "finished" and again["resumed_from_step"] == 10 and again["steps"] == 20
    assert again["run_dir"] == record["run_dir"] and not (workdir / "unused").exists()


@pytest.mark.slow
def test_sweep_records_failures_goes_on_and_a_rerun_skips_what_finished(workdir, faulty):
    jobs = [*faulty, "trainer.max_steps=6", "trainer.val_check_interval=3"]
    sweep = ["-m", *jobs, "+task.fail_at_step=null,3"]
    first = run_cli(sweep, workdir)
    assert first.returncode == 1  # one job failed ...
    by_status = {r["status"]: r for r in summaries(workdir / "results")}
    assert set(by_status) == {"finished", "failed"}  # ... and the other one ran
    assert by_status["failed"]["error"] == "RuntimeError: injected fault"
    assert "injected fault" in by_status["failed"]["traceback"]

    second = run_cli(sweep, workdir)  # the finished job is skipped, the failed one runs again
    assert second.returncode == 1
    statuses = sorted(r["status"] for r in summaries(workdir / "results"))
    assert statuses == ["failed", "failed", "finished"]
    assert "skipping: the same config" in second.stdout + second.stderr
    # The skipped job's folder in the second sweep points at the record it reused, so the
    # second sweep's table (and report) still covers both jobs.
    pointers = list((workdir / "results" / "sweeps").rglob(store.REUSED_FILE))
    assert len(pointers) == 1
    assert json.loads(pointers[0].read_text())["run_dir"] == by_status["finished"]["run_dir"]
    second_sweep = pointers[0].parent.parent
    assert sorted(load_frame(second_sweep)["status"]) == ["failed", "finished"]
    assert f"rnnbench: 2 runs in {second_sweep.relative_to(workdir)}" in second.stdout
    assert len(load_frame(workdir / "results")) == 3  # each record once for the whole root

    result = run_job(faulty_config(workdir, [*jobs, "+task.fail_at_step=null"]), workdir / "unused")
    skipped = result.record.to_dict()
    assert result.reused == "skipped" and skipped["run_dir"] == by_status["finished"]["run_dir"]
    forced = run_job(faulty_config(workdir, [*jobs, "+task.fail_at_step=null", "force=true"]),
                     workdir / "forced").record.to_dict()
    assert forced["status"] == "finished" and forced["run_dir"] == str(workdir / "forced")
    assert forced["config_hash"] == skipped["config_hash"] and len(run_dirs(workdir / "results")) == 3
    assert forced["metrics"] == skipped["metrics"]  # the same config and seeds on the CPU: the same numbers


def faulty_config(workdir, overrides):
    """The config the CLI composes for ``overrides`` when launched from ``workdir``."""
    return compose_config([*overrides, f"results_dir={workdir / 'results'}"], resolved=False)


def tiny_config(root, *overrides):
    return compose_config([*TINY, f"results_dir={root}", *overrides], resolved=False)


def test_resume_refuses_a_corrupt_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path)
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    write_json_atomic(run_dir / "summary.json", {"status": "running", "config_hash": "x"})
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match=r"last.ckpt cannot be loaded: it is truncated, corrupt"):
        run_job(cfg, run_dir)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "running"  # untouched


def test_checkpoints_are_loaded_as_plain_data_only(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("arbitrary code ran",))

    torch.save({"global_step": 1, "payload": Payload()}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="holds more than tensors and plain values"):
        read_checkpoint(tmp_path / "evil.ckpt")


def test_checkpoint_save_is_atomic(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 3, "state_dict": {"w": torch.ones(2)}}, path)

    class Unpicklable:
        def __reduce__(self):
            raise pickle.PicklingError("disk full, say")

    with pytest.raises(pickle.PicklingError):
        io.save_checkpoint({"global_step": 4, "bad": Unpicklable()}, path)
    assert io.load_checkpoint(path)["global_step"] == 3  # the previous checkpoint survived whole
    assert os.listdir(path.parent) == ["last.ckpt"]  # no temp file left behind


def test_corrupt_record_is_skipped_with_a_warning_naming_it(tmp_path, caplog):
    good, torn, odd = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for folder in (good, torn, odd):
        folder.mkdir()
    write_json_atomic(good / "summary.json", {"cell": "gru", "task": "adding", "status": "finished",
                                                      "config_hash": "h", "metric": "mse"})
    (torn / "summary.json").write_text('{"cell": "gru", "status": "fini')
    (odd / "summary.json").write_text("[1, 2]")
    with caplog.at_level(logging.WARNING):
        frame = load_frame(tmp_path)
        found = [p for p, r in store.read_records(store.record_paths(tmp_path)) if r.config_hash == "h"]
    assert list(frame["cell"]) == ["gru"] and [p.parent for p in found] == [good]
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert str(torn / "summary.json") in warned and str(odd / "summary.json") in warned


def test_a_finished_record_is_never_overwritten(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_json_atomic(run_dir / "summary.json", {"status": "finished", "config_hash": "another"})
    with pytest.raises(ConfigError, match=r"already holds a finished run record; refusing to overwrite it"):
        run_job(tiny_config(tmp_path, "force=true"), run_dir)
    assert json.loads((run_dir / "summary.json").read_text()) == {"status": "finished", "config_hash": "another"}
