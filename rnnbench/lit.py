"""Lightning glue: the module that trains any (task, model) pair, and its optimiser.

The LightningModule knows nothing about particular tasks: it asks the task for
loss and metrics, logs them under ``train/``, ``val/`` and ``test/``, and builds
the optimiser and schedule from the ``optim`` config.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
from torch import nn

from .cell import Cell
from .config import OptimConfig, defaults
from .errors import DivergedError
from .task import Task


class BenchModule(pl.LightningModule):
    """Trains ``model`` on ``task`` with the optimiser described by ``optim``."""

    def __init__(self, task: Task, model: nn.Module, optim: dict, max_steps: int):
        super().__init__()
        self.task = task
        self.model = model
        self.optim = {**defaults(OptimConfig), **optim}  # keys not given: OptimConfig's defaults
        self.max_steps = max_steps
        self.cells = [m for m in model.modules() if isinstance(m, Cell)]
        self.plateau = None  # ReduceLROnPlateau when optim.schedule=plateau (see configure_optimizers)
        self._plateau_state = None  # its state from a checkpoint being resumed

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def training_step(self, batch, batch_idx):
        loss, metrics = self.task.loss_and_metrics(self.model, batch)
        # Every rank takes the same decision, so a NaN on one rank stops them all.
        bad = not bool(torch.isfinite(loss.detach()))
        if self.trainer.strategy.reduce_boolean_decision(bad, all=False):
            raise DivergedError(self.global_step, float(loss.detach()) if bad else math.nan)
        # Only on the steps Lightning writes to the loggers (every trainer.log_every_n_steps):
        # each self.log call costs ~1.4 ms of Lightning bookkeeping, measured as 30% of a
        # small copy-task step on this CPU. Lightning's own callbacks use the same (private)
        # test; without it (another Lightning version) every step is logged, as before.
        connector = getattr(self.trainer, "_logger_connector", None)
        if connector is None or getattr(connector, "should_update_logs", True):
            for name, value in metrics.items():
                self.log(f"train/{name}", value, prog_bar=(name == "loss"), on_step=True, on_epoch=False)
            self._log_step(self.global_step + 1)  # after this batch's update
        return loss

    def _log_step(self, steps_done: int, **kwargs) -> None:
        """metrics.csv's ``step`` column: optimiser steps done, the record's unit (a logged metric
        named ``step`` is Lightning's x-axis; its own would be the batch index, one less)."""
        self.log("step", float(steps_done), **kwargs)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        # After the optimiser step: cells with constrained parameters project them
        # back (e.g. IndRNN's |u| <= 2^(1/T)).
        with torch.no_grad():
            for cell in self.cells:
                cell.constrain_()

    def _eval_step(self, batch, stage: str):
        _, metrics = self.task.loss_and_metrics(self.model, batch)
        weight = self.task.metric_weight(batch)
        for name, value in metrics.items():
            self.log(f"{stage}/{name}", value, on_step=False, on_epoch=True, sync_dist=True, batch_size=weight,
                     prog_bar=(name == self.task.metric))

    def _eval_epoch_end(self, stage: str):
        """Log the task's corpus-level metrics (perplexity, BLEU ...) computed from the
        epoch means just reduced by Lightning, then step a plateau schedule on validation."""
        prefix = f"{stage}/"
        means = {k[len(prefix):]: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith(prefix)}
        extra = self.task.eval_epoch_end(stage, means)
        for name, value in extra.items():
            self.log(prefix + name, float(value), sync_dist=True, prog_bar=(name == self.task.metric))
        self._log_step(self.trainer.global_step)
        metric = {**means, **extra}.get(self.task.metric)
        if stage == "val" and self.plateau is not None and metric is not None and not self.trainer.sanity_checking:
            self.plateau.step(metric)

    def on_validation_epoch_start(self):
        self.task.eval_epoch_start("val")

    def on_test_epoch_start(self):
        self.task.eval_epoch_start("test")

    def on_validation_epoch_end(self):
        self._eval_epoch_end("val")

    def on_test_epoch_end(self):
        self._eval_epoch_end("test")

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def configure_optimizers(self):
        optimizers = build_optimizer(self.model.parameters(), self.optim, self.max_steps)
        if self.optim.get("schedule") == "plateau":
            # Stepped by hand after each validation (not by Lightning's step/epoch interval):
            # the learning rate is divided when the task's metric stops improving, as
            # pytorch/examples' word_language_model does (lr /= 4 if val loss did not improve).
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizers, mode=self.task.metric_mode, factor=self.optim["gamma"], patience=self.optim["patience"],
                threshold=0.0)
        return optimizers

    def on_save_checkpoint(self, checkpoint):
        if self.plateau is not None:
            checkpoint["plateau"] = self.plateau.state_dict()

    def on_load_checkpoint(self, checkpoint):
        if "plateau" in checkpoint:
            self._plateau_state = checkpoint["plateau"]

    def on_fit_start(self):
        if self.plateau is not None and self._plateau_state is not None:
            self.plateau.load_state_dict(self._plateau_state)


def build_optimizer(params, optim: dict, max_steps: int):
    """Adam, RMSprop or SGD with a constant, cosine or step schedule (stepped per batch).
    Keys ``optim`` does not give take :class:`rnnbench.config.OptimConfig`'s defaults.

    ``schedule: plateau`` returns the bare optimiser: :class:`BenchModule` multiplies its
    learning rate by ``gamma`` after each validation that does not improve the task's metric."""
    optim = {**defaults(OptimConfig), **optim}
    name, lr, weight_decay = optim["name"], optim["lr"], optim["weight_decay"]
    if name == "adam":
        optimizer = torch.optim.Adam(params, lr=lr, betas=tuple(optim["betas"]), weight_decay=weight_decay)
    elif name == "rmsprop":
        optimizer = torch.optim.RMSprop(params, lr=lr, alpha=optim["alpha"], momentum=optim["momentum"],
                                        weight_decay=weight_decay)
    elif name == "sgd":
        optimizer = torch.optim.SGD(params, lr=lr, momentum=optim["momentum"], weight_decay=weight_decay)
    else:  # validated earlier; kept as a guard for direct API use
        raise ValueError(f"unknown optimiser {name!r}")

    schedule, warmup = optim["schedule"], optim["warmup_steps"]

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "cosine":
            progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if schedule == "step":
            # Decays at first_decay_step, then every step_size steps (Zaremba et al.: from epoch 5 on).
            first = optim["first_decay_step"] or optim["step_size"]
            decays = 0 if step - warmup < first else (step - warmup - first) // optim["step_size"] + 1
            return optim["gamma"] ** decays
        return 1.0

    if schedule in ("constant", "plateau") and not warmup:
        return optimizer
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
