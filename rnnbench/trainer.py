"""The Lightning side of a run: the Trainer built from the ``trainer`` and ``logger``
config groups, and the callbacks that watch a run.

- :class:`RunTracker` follows the validations (last, best, the ``solved`` streak and
  the early stop) and the cost (training tokens and time, summed over every resumed
  segment: its state is in ``last.ckpt``);
- :class:`RunCheckpoints` writes ``last.ckpt`` (the resume point, a whole training
  state) at every validation during fitting and ``best.ckpt`` (weights) whenever a
  validation is the best so far, the one after fitting included;
- :class:`RngStateCallback` keeps torch's global random state in checkpoints.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch

from .checkpoints import AtomicCheckpointIO
from .config import TrainerConfig
from .task import Task


class RunTracker(pl.Callback):
    """Best and last validation metrics, the first step from which the task counted as
    solved at ``patience`` validations in a row (stopping there if asked), and the
    training tokens and time.

    ``steps_to_solve`` is the step of the first validation of that streak: the model was
    solved from then on, and later validations confirmed it. A single validation at the
    threshold is weak evidence (its test score often lands on the other side), hence
    the streak.
    """

    STATE = ("val_last", "val_best", "best_step", "streak_start", "streak_start_time_s", "streak", "solved_step",
             "solved_time_s", "stopped_when_solved", "train_time_s", "train_tokens")

    def __init__(self, task: Task, stop_when_solved: bool, patience: int = 1):
        self.task = task
        self.stop_when_solved = stop_when_solved
        self.patience = patience
        self.val_last: dict[str, float] = {}
        self.val_best: dict[str, float] = {}
        self.best_step: Optional[int] = None
        self.streak_start: Optional[int] = None  # first validation of the current solved streak
        self.streak_start_time_s: Optional[float] = None  # training time at that validation
        self.streak = 0
        self.solved_step: Optional[int] = None
        self.solved_time_s: Optional[float] = None
        self.stopped_when_solved = False
        self.train_time_s = 0.0
        self.train_tokens = 0
        self._t0: Optional[float] = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self._t0 is not None:
            self.train_time_s += time.perf_counter() - self._t0
        # Every rank trains on a batch of the same size: the tokens of all ranks.
        self.train_tokens += self.task.count_tokens(batch) * trainer.world_size
        if trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
            # Stopping at the last step makes Lightning validate it inside fit (as it does when
            # max_time stops a run), so the final weights are validated, checkpointed and can
            # be the best, wherever the last step falls in the validation interval.
            trainer.should_stop = True

    def on_validation_end(self, trainer, pl_module):
        # on_validation_end, not on_validation_epoch_end: the module logs the task's
        # corpus-level metrics (perplexity, BLEU) in its own epoch-end hook, after ours.
        if trainer.sanity_checking:
            return
        metrics = {k[4:]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if not metrics:
            return
        step = trainer.global_step
        self.val_last = {**metrics, "step": step}
        key, mode = self.task.metric, self.task.metric_mode
        if key in metrics:
            best = self.val_best.get(key)
            if best is None or (metrics[key] > best if mode == "max" else metrics[key] < best):
                self.val_best = {**metrics, "step": step}
                self.best_step = step
        if not self.task.is_solved(metrics):
            self.streak, self.streak_start, self.streak_start_time_s = 0, None, None
            return
        self.streak += 1
        if self.streak_start is None:
            self.streak_start, self.streak_start_time_s = step, self.train_time_s
        if self.solved_step is None and self.streak >= self.patience:
            self.solved_step, self.solved_time_s = self.streak_start, self.streak_start_time_s
            if self.stop_when_solved and trainer.state.fn == "fit":
                trainer.should_stop = True
                self.stopped_when_solved = True

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.STATE}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for key, value in state_dict.items():
            setattr(self, key, value)


class RunCheckpoints(pl.Callback):
    """``last.ckpt`` at every validation during fitting (Lightning's own ModelCheckpoint writes
    ``last`` only when training ends, which leaves nothing to resume a killed run from), and
    ``best.ckpt`` whenever the tracker has just seen a new best, after fitting too."""

    def __init__(self, folder: Path, tracker: RunTracker):
        self.folder = folder
        self.tracker = tracker

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        if trainer.state.fn == "fit":  # the whole training state (optimiser, loops, callbacks): to resume
            trainer.save_checkpoint(self.folder / "last.ckpt", weights_only=False)
        if self.tracker.best_step is not None and self.tracker.best_step == trainer.global_step:
            trainer.save_checkpoint(self.folder / "best.ckpt", weights_only=True)  # only its weights are read


class RngStateCallback(pl.Callback):
    """Keeps torch's global random state in checkpoints, so that a resumed run draws the
    same dropout masks as an uninterrupted one (data streams have seeds of their own).

    The state is put back at the first training step after loading, not at loading:
    creating a DataLoader iterator (as Lightning does when fitting starts) draws from
    the global generator, which the uninterrupted run did not do at that point.
    """

    def __init__(self):
        self._pending: Optional[dict[str, Any]] = None

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


def progress_bar(kind: str) -> list[pl.Callback]:
    if kind == "rich":
        from pytorch_lightning.callbacks import RichProgressBar

        return [RichProgressBar(leave=True)]
    if kind == "tqdm":
        from pytorch_lightning.callbacks import TQDMProgressBar

        return [TQDMProgressBar()]
    return []


def loggers(logger: dict, run_dir: Path) -> list:
    """``metrics.csv`` always (the report's source), plus the tracker ``logger.name`` asks for."""
    from pytorch_lightning.loggers import CSVLogger

    chosen = [CSVLogger(save_dir=run_dir, name="", version="")]
    if logger["name"] == "tensorboard":
        from pytorch_lightning.loggers import TensorBoardLogger

        chosen.append(TensorBoardLogger(save_dir=run_dir, name="tensorboard", version=""))
    elif logger["name"] == "mlflow":
        from pytorch_lightning.loggers import MLFlowLogger

        uri = logger["tracking_uri"]
        if uri is None:  # a file store in the run directory: no server, no database package
            uri = (run_dir / "mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow >= 3 asks for this opt-in
        chosen.append(MLFlowLogger(experiment_name=logger["experiment_name"], tracking_uri=uri,
                                   run_name=run_dir.name))
    return chosen


def build_trainer(config: dict, run_dir: Path, callbacks: list[pl.Callback]) -> pl.Trainer:
    """``pytorch_lightning.Trainer`` with the Lightning arguments of the ``trainer`` group as
    they are, rnnbench's callbacks, loggers, atomic checkpoints and no Lightning checkpointing."""
    quiet_lightning()
    t = TrainerConfig(**config["trainer"])
    return pl.Trainer(
        **t.lightning_arguments(),
        check_val_every_n_epoch=None,  # count validation intervals in steps, across epochs
        gradient_clip_val=config["optim"]["grad_clip"],  # Lightning clips after backward, before the step
        gradient_clip_algorithm="norm",
        logger=loggers(config["logger"], run_dir),
        callbacks=[*callbacks, *progress_bar(t.progress_bar)],
        enable_checkpointing=False,  # RunCheckpoints saves last and best
        enable_progress_bar=t.progress_bar != "none",
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=run_dir,
        plugins=[AtomicCheckpointIO()],
    )


def quiet_lightning() -> None:
    """Silence Lightning's chatter that says nothing about the run (tips, a warning
    that metrics.csv goes into the run directory, which is by design)."""
    logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*Experiment logs directory .* exists and is not empty.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers which may be a bottleneck.*")
    warnings.filterwarnings("ignore", message=r".*`IterableDataset` has `__len__` defined.*")  # single process
    warnings.filterwarnings("ignore", message=r".*The `srun` command is available on your system.*")
    # Resuming mid-epoch is exact here: the training stream restarts at the restored step.
    warnings.filterwarnings("ignore", message=r".*resuming from a checkpoint that ended before the epoch ended.*")
