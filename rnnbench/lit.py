"""Lightning glue: the module that trains any (task, model) pair, and the callbacks
that watch a run (divergence, best/last metrics, ``solved``, throughput).

The LightningModule knows nothing about particular tasks: it asks the task for
loss and metrics, logs them under ``train/``, ``val/`` and ``test/``, and builds
the optimiser and schedule from the ``optim`` config.
"""

from __future__ import annotations

import math
import time
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from .cell import Cell
from .errors import DivergedError
from .task import Task


class BenchModule(pl.LightningModule):
    """Trains ``model`` on ``task`` with the optimiser described by ``optim``."""

    def __init__(self, task: Task, model: nn.Module, optim: dict, max_steps: int):
        super().__init__()
        self.task = task
        self.model = model
        self.optim = dict(optim)
        self.max_steps = max_steps
        self.tokens_seen = 0  # time steps consumed by training on this rank
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
        self.tokens_seen += self.task.count_tokens(batch)
        # Only on the steps Lightning writes to the loggers (every trainer.log_every_n_steps):
        # each self.log call costs ~1.4 ms of Lightning bookkeeping, measured as 30% of a
        # small copy-task step on this CPU. Lightning's own callbacks use the same (private)
        # test; without it (another Lightning version) every step is logged, as before.
        connector = getattr(self.trainer, "_logger_connector", None)
        if connector is None or getattr(connector, "should_update_logs", True):
            for name, value in metrics.items():
                self.log(f"train/{name}", value, prog_bar=(name == "loss"), on_step=True, on_epoch=False)
        return loss

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
                optimizers, mode=self.task.metric_mode, factor=self.optim.get("gamma", 0.25),
                patience=self.optim.get("patience", 0), threshold=0.0)
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

    ``schedule: plateau`` returns the bare optimiser: :class:`BenchModule` divides its
    learning rate by ``1/gamma`` after each validation that does not improve the task's metric."""
    name = optim["name"]
    lr, weight_decay = optim["lr"], optim.get("weight_decay", 0.0)
    if name == "adam":
        optimizer = torch.optim.Adam(params, lr=lr, betas=tuple(optim.get("betas", (0.9, 0.999))),
                                     weight_decay=weight_decay)
    elif name == "rmsprop":
        optimizer = torch.optim.RMSprop(params, lr=lr, alpha=optim.get("alpha", 0.99),
                                        momentum=optim.get("momentum", 0.0), weight_decay=weight_decay)
    elif name == "sgd":
        optimizer = torch.optim.SGD(params, lr=lr, momentum=optim.get("momentum", 0.0),
                                    weight_decay=weight_decay)
    else:  # validated earlier; kept as a guard for direct API use
        raise ValueError(f"unknown optimiser {name!r}")

    schedule = optim.get("schedule", "constant")
    warmup = int(optim.get("warmup_steps", 0) or 0)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "cosine":
            progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if schedule == "step":
            # Decays at first_decay_step, then every step_size steps (Zaremba et al.: from epoch 5 on).
            step_size = optim.get("step_size", 1000)
            first = optim.get("first_decay_step") or step_size
            decays = 0 if step - warmup < first else (step - warmup - first) // step_size + 1
            return optim.get("gamma", 0.1) ** decays
        return 1.0

    if schedule in ("constant", "plateau") and not warmup:
        return optimizer
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class RunTracker(pl.Callback):
    """Follows a run: best and last validation metrics, first step at which the
    task counted as solved (optionally stopping there), training time and tokens."""

    def __init__(self, task: Task, stop_when_solved: bool):
        self.task = task
        self.stop_when_solved = stop_when_solved
        self.val_last: dict[str, float] = {}
        self.val_best: dict[str, float] = {}
        self.best_step: int | None = None
        self.solved_step: int | None = None
        self.solved_time_s: float | None = None
        self.stopped_when_solved = False
        self.train_time_s = 0.0
        self._t0: float | None = None
        self._fit_start: float | None = None

    def on_fit_start(self, trainer, pl_module):
        self._fit_start = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self._t0 is not None:
            self.train_time_s += time.perf_counter() - self._t0

    def on_validation_end(self, trainer, pl_module):
        # on_validation_end, not on_validation_epoch_end: the module logs the task's
        # corpus-level metrics (perplexity, BLEU) in its own epoch-end hook, after ours.
        if trainer.sanity_checking:
            return
        metrics = {k[4:]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if not metrics:
            return
        self.val_last = {**metrics, "step": trainer.global_step}
        key, mode = self.task.metric, self.task.metric_mode
        if key in metrics:
            best = self.val_best.get(key)
            better = best is None or (metrics[key] > best if mode == "max" else metrics[key] < best)
            if better:
                self.val_best = {**metrics, "step": trainer.global_step}
                self.best_step = trainer.global_step
        if self.solved_step is None and self.task.is_solved(metrics):
            self.solved_step = trainer.global_step
            self.solved_time_s = time.perf_counter() - (self._fit_start or time.perf_counter())
            if self.stop_when_solved and trainer.state.fn == "fit":
                trainer.should_stop = True
                self.stopped_when_solved = True

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("val_last", "val_best", "best_step", "solved_step",
                                              "solved_time_s", "stopped_when_solved", "train_time_s")}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for key, value in state_dict.items():
            setattr(self, key, value)


class RandomState(pl.Callback):
    """Keeps torch's global random state in checkpoints, so that a resumed run draws the
    same dropout masks as an uninterrupted one (data streams have seeds of their own).

    The state is put back at the first training step after loading, not at loading:
    creating a DataLoader iterator (as Lightning does when fitting starts) draws from
    the global generator, which the uninterrupted run did not do at that point.
    """

    def __init__(self):
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        return {"torch": torch.get_rng_state(), "cuda": cuda}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._pending is None:
            return
        torch.set_rng_state(self._pending["torch"])
        if self._pending["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self._pending["cuda"])
        self._pending = None
