"""The run record says what happened: each number checked against its raw source (metrics.csv,
the checkpoint files, a hand computation). Regression tests of the record defects found in
the main job (issue 12, items 1-3 and 10)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from helpers.cli import TINY, compose_config
from rnnbench.checkpoints import read_checkpoint
from rnnbench.record import RunRecord
from rnnbench.run import run_job
from rnnbench.tasks.adding import AddingTask
from rnnbench.trainer import RunTracker


def tiny(tmp_path, *overrides):
    return compose_config([*TINY, f"results_dir={tmp_path}", "trainer.threads=1", *overrides], resolved=False)


def val_rows(run_dir) -> pd.DataFrame:
    rows = pd.read_csv(run_dir / "metrics.csv")
    return rows.dropna(subset=["val/mse"])[["step", "val/mse"]]


def test_record_is_not_rolled_back_to_the_best_checkpoint(tmp_path):
    """Testing best.ckpt's weights must not restore the tracker's state of that step: the last
    validation, the training time and the tokens stay those of the whole run."""
    cfg = tiny(tmp_path, "trainer.max_steps=60", "trainer.stop_when_solved=false", "optim.lr=0.05")
    record = run_job(cfg, tmp_path / "run").record
    rows = val_rows(tmp_path / "run")
    assert record.metrics["val_last"]["step"] == rows["step"].iloc[-1] == 60
    assert record.metrics["val_last"]["mse"] == pytest.approx(rows["val/mse"].iloc[-1], rel=1e-6)
    best = rows.loc[rows["val/mse"].idxmin()]
    assert record.metrics["val_best"]["step"] == best["step"]
    assert record.metrics["val_best"]["mse"] == pytest.approx(best["val/mse"], rel=1e-6)
    assert record.test_checkpoint == f"best (step {int(best['step'])})"
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "best.ckpt")["global_step"] == best["step"]
    batch, T = cfg.task.batch_size, cfg.task.seq_len
    assert record.train_tokens == 60 * batch * T  # every step, not those up to the best one
    assert record.tokens_per_s == pytest.approx(record.train_tokens / record.train_time_s, abs=0.051)  # recomputable from the record


def test_the_final_weights_are_validated_and_can_be_the_best(tmp_path):
    """max_steps not a multiple of the validation interval: the final weights are validated
    (inside fit), logged to metrics.csv, and take part in choosing the best checkpoint."""
    cfg = tiny(tmp_path, "trainer.max_steps=25", "trainer.stop_when_solved=false", "optim.lr=0.05")
    record = run_job(cfg, tmp_path / "run").record
    rows = val_rows(tmp_path / "run")
    assert list(rows["step"]) == [10, 20, 25]
    assert record.metrics["val_last"]["step"] == 25
    best = rows.loc[rows["val/mse"].idxmin()]
    assert record.metrics["val_best"]["step"] == best["step"]
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "best.ckpt")["global_step"] == best["step"]


def test_last_weights_can_be_tested_instead_of_the_best(tmp_path):
    record = run_job(tiny(tmp_path, "trainer.max_steps=25", "trainer.test_checkpoint=last"),
                     tmp_path / "run").record
    assert record.test_checkpoint == "last (step 25)"
    assert record.solved_val is (record.metrics["val_last"]["mse"] <= 0.01)


def fake_trainer(step: int, mse: float):
    return SimpleNamespace(sanity_checking=False, global_step=step, callback_metrics={"val/mse": torch.tensor(mse)},
                           state=SimpleNamespace(fn="fit"), should_stop=False)


@pytest.mark.parametrize("patience, expected_step", [(1, 20), (2, 40), (3, None)])
def test_solved_needs_patience_validations_in_a_row(patience, expected_step):
    """threshold 0.01: 0.0097 at step 20 (then 0.0112), 0.009 at 40 and 0.008 at 50, 0.02 at 60."""
    tracker = RunTracker(AddingTask(seq_len=5), stop_when_solved=True, patience=patience)
    stopped_at = None
    for step, mse in [(10, 0.05), (20, 0.0097), (30, 0.0112), (40, 0.009), (50, 0.008), (60, 0.02)]:
        trainer = fake_trainer(step, mse)
        tracker.on_validation_end(trainer, None)
        if trainer.should_stop and stopped_at is None:
            stopped_at = step
    assert tracker.solved_step == expected_step
    assert stopped_at == (None if expected_step is None else {1: 20, 2: 50}[patience])
    assert tracker.val_best == {"mse": pytest.approx(0.008), "step": 50} and tracker.val_last["step"] == 60


NAN_TASK = '''
import math
from rnnbench import register_task
from rnnbench.tasks.adding import AddingTask


@register_task("nan_adding")
class NanAdding(AddingTask):
    """The adding problem whose training loss becomes NaN after step ``nan_after``."""

    def __init__(self, *, nan_after: int = 15, **options):
        super().__init__(**options)
        self.nan_after, self.steps_taken = nan_after, 0

    def loss_and_metrics(self, model, batch):
        loss, metrics = super().loss_and_metrics(model, batch)
        if model.training:
            self.steps_taken += 1
            if self.steps_taken > self.nan_after:
                loss = loss * math.nan
        return loss, metrics
'''


def test_a_diverged_run_is_scored_on_its_best_checkpoint(tmp_path):
    plugin = tmp_path / "nan_task.py"
    plugin.write_text(NAN_TASK)
    cfg = tiny(tmp_path, f"plugins=[{plugin}]", "task.name=nan_adding", "+task.nan_after=25", "trainer.max_steps=40",
               "trainer.stop_when_solved=false")
    record = run_job(cfg, tmp_path / "run").record
    assert record.status == "diverged" and record.diverged_at_step == 25
    rows = val_rows(tmp_path / "run")
    best = rows.loc[rows["val/mse"].idxmin()]
    assert record.test_checkpoint == f"best (step {int(best['step'])})"
    assert math.isfinite(record.metrics["test"]["mse"]) and record.test_score == record.metrics["test"]["mse"]
    assert RunRecord.read(tmp_path / "run").to_dict() == record.to_dict()  # what was returned is what was written


def test_deviations_and_parameter_counts_travel_in_the_record(tmp_path):
    cfg = tiny(tmp_path, "+deviations=[a difference from the paper]", "cell=bigru")
    record = run_job(cfg, tmp_path / "run").record
    assert record.deviations == ["a difference from the paper"]
    H = cfg.cell.hidden_size
    gru = 3 * H * (2 + H) + 6 * H
    assert record.cell_params == 2 * gru and record.params == 2 * gru + 2 * H + 1 and record.state_size == 2 * H
    assert record.solved_criterion == {"metric": "mse", "mode": "min", "threshold": 0.01, "patience": 2}


def test_version_1_records_are_migrated_on_read(tmp_path):
    from rnnbench.files import write_json_atomic

    write_json_atomic(tmp_path / "summary.json", {
        "record_version": 1, "run_dir": str(tmp_path), "cell": "gru", "task": "translation", "status": "finished",
        "metric": "bleu", "solved_criterion": {"metric": "bleu", "mode": "max", "threshold": 95.0},
        "stopped_early_when_solved": True, "skipped": True, "bleu_signature": "nrefs:1|case:lc"})
    record = RunRecord.read(tmp_path)
    assert record.record_version == 2 and record.metric_mode == "max" and record.stopped_when_solved is True
    assert record.artifacts == {"bleu_signature": "nrefs:1|case:lc"}
    with pytest.raises(ValueError, match="newer than this rnnbench reads"):
        RunRecord.from_dict({"record_version": 99, "run_dir": "x"})
