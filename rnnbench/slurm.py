"""SLURM's signals inside a run: stop at a step boundary, keep ``last.ckpt``, resume.

A SLURM job gets ``SIGUSR2`` shortly before its time limit (submitit's
``--signal=USR2@<signal_delay_s>``, also what preemption sends on many clusters) and
``SIGTERM`` when it is cancelled (``scancel``) or preempted, ``KillWait`` seconds
before ``SIGKILL``. Inside a job started by :class:`rnnbench.slurm_launcher.SlurmLauncher`
(``hydra/launcher=slurm``):

- during training, either signal is only noted; at the start of the next training
  step that every rank agrees on, ``checkpoints/last.ckpt`` is saved (the whole
  training state, so the run resumes exactly there) and :class:`Stopped` is raised;
- ``run_job`` records the run as ``interrupted`` with :attr:`Stopped.reason`;
- after ``SIGUSR2`` the launcher hands over to submitit, which requeues the job
  (``scontrol requeue``); the requeued job finds the ``interrupted`` record with the
  same config hash and resumes from ``last.ckpt`` in the same run directory. After
  ``SIGTERM`` the job ends; re-running the sweep resumes it the same way;
- outside training (start-up, testing) ``SIGTERM`` stops the job at once, like Ctrl-C.

Elsewhere (no SLURM, or a job not started by that launcher) nothing here is active.
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import pytorch_lightning as pl

SIGNALS = (signal.SIGTERM, signal.SIGUSR2)
MEANING = {signal.SIGTERM: "SIGTERM (scancel or preemption)", signal.SIGUSR2: "SIGUSR2 (time limit near)"}


class Stopped(SystemExit):
    """A run stopped by a SLURM signal. ``reason`` goes into the run record;
    ``requeue``: the job should be requeued (submitit's time-limit protocol)."""

    def __init__(self, reason: str, requeue: bool = False):
        super().__init__(1)
        self.reason = reason
        self.requeue = requeue


class _State:
    """What this process knows: whether a launcher job is watching signals, which
    signals arrived, and whether a :class:`Stopped` is already on its way up."""

    active = False
    received: list[int] = []
    stopping = False


def _note(signum, frame) -> None:
    _State.received.append(signum)


def _outside_training(signum, frame) -> None:
    """Handler while no training step is running: SIGTERM stops now, SIGUSR2 is noted
    (training, if it is still to come, stops at its first step)."""
    _note(signum, frame)
    if signum == signal.SIGTERM and not _State.stopping:
        _State.stopping = True
        raise Stopped(f"stopped by {MEANING[signum]} outside training; re-run the sweep to resume")


@contextmanager
def watching_signals():
    """Inside a SLURM job: catch SIGTERM and SIGUSR2 as described in the module docstring;
    the previous handlers are put back afterwards."""
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    _State.active, _State.received, _State.stopping = True, [], False
    for signum in SIGNALS:
        signal.signal(signum, _outside_training)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _State.active = False


def job_id() -> Optional[str]:
    """The SLURM job running this process, as ``sacct -j`` and ``squeue -j`` name it
    (``ARRAY_TASK`` for an array task); None outside SLURM."""
    if "SLURM_JOB_ID" not in os.environ:
        return None
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else os.environ["SLURM_JOB_ID"]


def restarts() -> Optional[int]:
    """How often SLURM has requeued this job (None outside SLURM)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", 0)) if "SLURM_JOB_ID" in os.environ else None


def training_callbacks(run_dir: Path, checkpoint: bool) -> list[pl.Callback]:
    """The callback that stops training on SLURM's signals, when a launcher job watches
    them (none otherwise); it saves ``last.ckpt`` at the stop if ``checkpoint``."""
    from .store import LAST_CHECKPOINT

    return [StopOnSignal(run_dir / LAST_CHECKPOINT if checkpoint else None)] if _State.active else []


class StopOnSignal(pl.Callback):
    """Stops training at a step boundary after SIGTERM or SIGUSR2, saving ``last.ckpt`` first.

    The check runs at the start of each training step, when the previous step (and the
    validation after it) is complete; all ranks reduce the flag together, so a DDP job
    stops at the same step everywhere. Lightning installs its own SIGTERM handler when
    fitting starts; ours replaces it during training (``on_train_start``), and Lightning
    puts the launcher's handler back at its teardown.
    """

    def __init__(self, last_checkpoint: Path | None):
        self.last_checkpoint = last_checkpoint
        self.validated_step: int | None = None

    def on_train_start(self, trainer, pl_module):
        for signum in SIGNALS:
            signal.signal(signum, _note)

    def on_validation_end(self, trainer, pl_module):
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.validated_step = trainer.global_step  # RunCheckpoints saved last.ckpt here

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not trainer.strategy.reduce_boolean_decision(bool(_State.received), all=False):
            return
        _State.stopping = True
        names = " and ".join(MEANING[s] for s in dict.fromkeys(_State.received)) or "a signal on another rank"
        if self.last_checkpoint is None:
            saved = "no checkpoint (trainer.checkpoint=false)"
        else:
            if self.validated_step != trainer.global_step:  # else last.ckpt is of this very step already
                save_at_step_end(trainer, self.last_checkpoint)
            saved = f"{self.last_checkpoint.parent.name}/{self.last_checkpoint.name} saved"
        requeue = signal.SIGUSR2 in _State.received
        then = "the job is requeued and resumes from there" if requeue else "re-run the sweep to resume"
        raise Stopped(f"stopped by {names} at step {trainer.global_step}: {saved}; {then}", requeue=requeue)


def save_at_step_end(trainer: pl.Trainer, path: Path) -> None:
    """Save the whole training state as it was when the last step ended.

    At ``on_train_batch_start`` Lightning has already counted the next batch as ready;
    saved with that count, a resumed run would place its validations one batch late.
    The count is taken back for the save (the state then equals that at the end of the
    previous step, a point Lightning resumes from exactly) and restored after it."""
    progress = trainer.fit_loop.epoch_loop.batch_progress
    progress.total.ready -= 1
    progress.current.ready -= 1
    try:
        trainer.save_checkpoint(path, weights_only=False)
    finally:
        progress.total.ready += 1
        progress.current.ready += 1
