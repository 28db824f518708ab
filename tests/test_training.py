"""The Lightning module in-process: constraints after each optimiser step, schedules."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from rnnbench import Cell
from rnnbench.lit import BenchModule, build_optimizer
from rnnbench.stack import CellStack
from rnnbench.tasks.adding import AddingTask


class CountingCell(Cell):
    """tanh RNN whose ``constrain_`` clamps its recurrent weights and counts its calls."""

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.input_map = torch.nn.Linear(input_size, hidden_size)
        self.recurrent = torch.nn.Linear(hidden_size, hidden_size, bias=False)
        self.constrain_calls = 0

    def step(self, x_t, h):
        h = torch.tanh(self.input_map(x_t) + self.recurrent(h))
        return h, h

    def constrain_(self):
        self.constrain_calls += 1
        self.recurrent.weight.clamp_(-0.01, 0.01)


def test_constrain_runs_after_every_optimizer_step(tmp_path):
    task = AddingTask(seq_len=5, batch_size=8, val_size=8, test_size=8)
    model = task.build_model(lambda n: CellStack(CountingCell, n, 6))
    module = BenchModule(task, model, {"name": "sgd", "lr": 10.0}, max_steps=4)
    trainer = pl.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=task.train_dataloader(0, num_batches=4))
    cell = model.stack.cells[0]
    assert cell.constrain_calls == 4
    assert cell.recurrent.weight.abs().max() <= 0.01  # lr 10 would have pushed it far beyond


def test_cosine_schedule_with_warmup():
    params = [torch.nn.Parameter(torch.zeros(1))]
    config = build_optimizer(params, {"name": "adam", "lr": 1.0, "schedule": "cosine", "warmup_steps": 2}, 10)
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == 0.5 and rates[1] == 1.0  # linear warm-up
    assert rates[2] == 1.0 and rates[-1] < 0.1  # then cosine decay towards 0


class CorpusMetricAddingTask(AddingTask):
    """Adding task with a corpus-level metric (``rmse`` = sqrt of the epoch's mean MSE)
    and a metric that never improves, to drive the plateau schedule."""

    metric = "never_better"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.starts: list[str] = []

    def eval_epoch_start(self, stage):
        self.starts.append(stage)

    def eval_epoch_end(self, stage, means):
        return {"rmse": means["mse"] ** 0.5, "never_better": 1.0}


def test_corpus_metrics_are_logged_and_plateau_divides_the_learning_rate(tmp_path):
    task = CorpusMetricAddingTask(seq_len=5, batch_size=8, val_size=32, test_size=32)
    model = task.build_model(lambda n: CellStack(CountingCell, n, 6))
    optim = {"name": "sgd", "lr": 0.1, "schedule": "plateau", "gamma": 0.25, "patience": 0}
    module = BenchModule(task, model, optim, max_steps=6)
    trainer = pl.Trainer(max_steps=6, val_check_interval=2, check_val_every_n_epoch=None, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=task.train_dataloader(0, num_batches=6),
                val_dataloaders=task.val_dataloader(0))
    metrics = trainer.callback_metrics
    assert abs(float(metrics["val/rmse"]) - float(metrics["val/mse"]) ** 0.5) < 1e-6
    # Three validations: the first sets the best, the next two do not improve -> lr / 4 twice.
    assert task.starts == ["val", "val", "val"]
    assert abs(module.optimizers().param_groups[0]["lr"] - 0.1 / 16) < 1e-12
    result = trainer.test(module, dataloaders=task.test_dataloader(0), verbose=False)[0]
    assert abs(result["test/rmse"] - result["test/mse"] ** 0.5) < 1e-6


def test_every_optimiser_default_has_one_source():
    """Keys the optim config leaves out take OptimConfig's defaults, in the optimiser and in the
    plateau schedule alike (once 0.1 in the schema and 0.25 in the module)."""
    from rnnbench.config import OptimConfig

    defaults = OptimConfig(name="sgd", lr=0.1)
    module = BenchModule(AddingTask(seq_len=5), torch.nn.Linear(2, 1), {"name": "sgd", "lr": 0.1}, max_steps=10)
    assert module.optim["gamma"] == defaults.gamma == 0.1
    assert module.optim["patience"] == defaults.patience
    optimizer = build_optimizer(torch.nn.Linear(2, 1).parameters(), {"name": "adam", "lr": 0.1}, max_steps=10)
    assert tuple(optimizer.defaults["betas"]) == tuple(defaults.betas)
