"""One run, start to finish: build the experiment, reuse an earlier run of the same
config if there is one, train with Lightning, test, and write the run record.

The record (:class:`rnnbench.record.RunRecord`) is written at the start (status
``running``) and at the end, by rank 0 only. What it says is what happened:

- ``metrics.val_last`` is the last validation that ran and ``val_best`` the best one,
  a validation of the final weights included (it runs after fitting when the last
  step was not validated, e.g. a run stopped by ``trainer.max_time``), so the final
  weights can be the best ones;
- the test scores the weights ``trainer.test_checkpoint`` names (``best.ckpt``'s
  weights, loaded without restoring any callback state, or the final weights);
- ``tokens_per_s`` is every training token over every second spent in training
  steps, summed over resumed segments;
- a diverged run's best checkpoint is tested too, when it has one: its score counts.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from omegaconf import DictConfig, OmegaConf

from . import checkpoints, diagnostics, distributed, slurm, store, tuning
from .errors import ConfigError, DivergedError
from .evaluation import evaluate, length_generalisation
from .experiment import CONFIG_FILE, Experiment, build_experiment
from .files import check_results_dir
from .lit import BenchModule
from .models import count_parameters
from .record import RunRecord, config_hash, device_description, git_commit, versions
from .trainer import RngStateCallback, RunCheckpoints, RunTracker, build_trainer

log = logging.getLogger(__name__)


@dataclass
class JobResult:
    """What :func:`run_job` did: the record, and whether an earlier run was reused
    (``"skipped"``: it had finished; ``"resumed"``: it went on in its own folder)."""

    record: RunRecord
    reused: Optional[str] = None


def new_record(exp: Experiment, run_dir: Path, world_size: int, presets: dict) -> RunRecord:
    """The record of a run about to start (status ``running``)."""
    cfg, task, stacks = exp.config, exp.task, exp.stacks
    t = cfg["trainer"]
    return RunRecord(
        run_dir=str(run_dir),
        cell=cfg["cell"]["name"], task=cfg["task"]["name"],
        cell_preset=presets.get("cell", cfg["cell"]["name"]), task_preset=presets.get("task", cfg["task"]["name"]),
        task_params=task.key_parameters(),
        hidden_size=cfg["cell"]["hidden_size"], num_layers=cfg["cell"]["num_layers"],
        bidirectional=cfg["cell"]["bidirectional"],
        params=count_parameters(exp.model),
        param_groups={name: count_parameters(part) for name, part in task.parameter_groups(exp.model).items()},
        cell_params=sum(count_parameters(stack) for stack in stacks),
        param_budget=cfg["model"]["param_budget"],
        state_size=sum(stack.state_size for stack in stacks),
        cell_flops_per_step=exp.stack.flops_per_step(),
        seed=cfg["seed"], data_seed=cfg["data_seed"], init_seed=cfg["init_seed"],
        metric=task.metric, metric_mode=task.metric_mode,
        solved_criterion={"metric": task.metric, "mode": task.metric_mode, "threshold": task.solved_threshold,
                          "patience": t["solved_patience"]},
        baseline=task.baseline(),
        device=device_description(t["accelerator"], world_size, t["num_nodes"]),
        # CPU kernels give the same numbers for the same config and seeds; GPU kernels
        # (cuDNN, atomics) may not, unless trainer.deterministic asks for deterministic ones.
        deterministic=bool(t["deterministic"]) or t["accelerator"] == "cpu",
        config_hash=config_hash(cfg), config=cfg,
        protocol=tuning.provenance(cfg, presets), deviations=list(cfg["deviations"]),
        versions=dict(versions()), git_commit=copy.copy(git_commit()), pid=os.getpid(), host=socket.gethostname(),
        slurm_job_id=slurm.job_id(), slurm_restarts=slurm.restarts(),
        started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )


def run_job(cfg: DictConfig | dict, run_dir: str | Path, presets: Optional[dict] = None) -> JobResult:
    """Validate, train, test and record one run in ``run_dir``.

    A diverging run returns normally with status ``diverged``; any other failure is
    recorded (``failed`` / ``interrupted``) and re-raised. With ``resume: true`` (the
    default) and ``force: false``, an earlier run of the same config under
    ``results_dir`` is reused: a finished one is not run again (``run_dir`` stays
    unused), an interrupted or killed one goes on from its ``last.ckpt`` in its own folder.
    """
    run_dir = Path(run_dir)
    config = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    config.pop("hydra", None)
    presets = presets or {}
    config = tuning.apply(config, presets)
    exp = build_experiment(config)
    t = config["trainer"]
    world_size = distributed.resolve_devices(t["accelerator"], t["devices"]) * t["num_nodes"]
    is_rank_zero = distributed.global_rank() == 0
    if t["threads"]:
        torch.set_num_threads(t["threads"])
    elif t["accelerator"] == "cpu" and world_size > 1:
        torch.set_num_threads(max(1, torch.get_num_threads() // world_size))

    record = new_record(exp, run_dir, world_size, presets)
    reuse = config["resume"] and not config["force"]
    previous = None
    # Only the process that owns the job decides; the ranks it starts get the chosen run_dir.
    if reuse and is_rank_zero and not distributed.launched_externally():
        previous = store.find_previous_run(config["results_dir"], record.config_hash)
    if previous is not None and previous.action == "skip":
        log.info("skipping: the same config (hash %s) already has a %s run record in %s (force=true runs it again)",
                 record.config_hash, previous.record.status, previous.run_dir)
        return JobResult(previous.record, reused="skipped")
    if previous is not None:
        run_dir = previous.run_dir
        record.run_dir, record.started_at = str(run_dir), previous.record.started_at or record.started_at
    resume_from = run_dir / store.LAST_CHECKPOINT if reuse and (run_dir / store.LAST_CHECKPOINT).is_file() else None
    start_step = 0
    if resume_from is not None:
        start_step = int(checkpoints.read_checkpoint(resume_from)["global_step"])  # refuses a corrupt file
        record.resumed_from_step = start_step
        if is_rank_zero:
            log.info("resuming %s from %s (step %d)", run_dir, resume_from, start_step)
    if is_rank_zero:
        _claim(run_dir, config, record)
    needs_local_ranks = (t["strategy"] in ("ddp", "ddp_find_unused_parameters_true") and world_size > 1
                         and not distributed.launched_externally())
    with distributed.local_ranks(run_dir, world_size) if needs_local_ranks else nullcontext():
        _run_and_record(exp, run_dir, record, resume_from, start_step, write=is_rank_zero)
    return JobResult(record, "resumed" if previous is not None else None)


def _run_and_record(exp: Experiment, run_dir: Path, record: RunRecord, resume_from: Optional[Path],
                    start_step: int, write: bool) -> None:
    """Train and test, and record how it ended, whatever happens (written if ``write``)."""
    started = time.perf_counter()
    try:
        _train_and_test(exp, run_dir, record, resume_from, start_step)
        record.status = "finished"
    except DivergedError as exc:
        record.status, record.error, record.diverged_at_step = "diverged", str(exc), exc.step
    except KeyboardInterrupt:
        record.status, record.error = "interrupted", "KeyboardInterrupt"
        raise
    except SystemExit as exc:  # Lightning exits after handling Ctrl-C; slurm.Stopped: SLURM's signals
        record.status = "interrupted"
        record.error = getattr(exc, "reason", None) or f"SystemExit({exc.code}) after KeyboardInterrupt"
        raise
    except Exception as exc:
        record.status, record.error = "failed", f"{type(exc).__name__}: {exc}"
        record.traceback = traceback.format_exc(limit=20)
        raise
    finally:
        record.wall_time_s = round(time.perf_counter() - started, 3)
        record.finished_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if write:
            record.write(run_dir)


def _claim(run_dir: Path, config: dict, record: RunRecord) -> None:
    """Check the folder can be written and holds no other run's result; write the config and
    the ``running`` record."""
    check_results_dir(run_dir)
    try:
        previous = RunRecord.read(run_dir).status
    except FileNotFoundError:
        previous = None
    except ValueError:  # a torn record of a killed run: it is rewritten below
        previous = "running"
    if previous is not None and previous not in store.RESUMABLE:
        raise ConfigError(f"{run_dir} already holds a {previous} run record; refusing to overwrite "
                          f"it. Choose another directory (results_dir=... or hydra.run.dir=...).")
    OmegaConf.save(OmegaConf.create(config), run_dir / CONFIG_FILE)
    record.write(run_dir)


def _train_and_test(exp: Experiment, run_dir: Path, record: RunRecord, resume_from: Optional[Path],
                    start_step: int) -> None:
    cfg, task = exp.config, exp.task
    t = cfg["trainer"]
    module = BenchModule(task, exp.model, cfg["optim"], t["max_steps"])
    tracker = RunTracker(task, stop_when_solved=t["stop_when_solved"], patience=t["solved_patience"])
    callbacks = [tracker, RngStateCallback(), *slurm.training_callbacks(run_dir, t["checkpoint"])]
    if t["checkpoint"]:
        callbacks.append(RunCheckpoints(run_dir / "checkpoints", tracker))
    trainer = build_trainer(cfg, run_dir, callbacks)
    data_seed = cfg["data_seed"]
    # A resumed run's stream goes on at the restored step: batch k is a function of
    # (data seed, rank, k), so the resumed run sees the batches the killed one would have.
    # The length stays max_steps: Lightning restores its position in the epoch (start_step)
    # and ends the epoch at max_steps, as in an uninterrupted run.
    train_loader = task.train_dataloader(data_seed, trainer.global_rank, trainer.world_size, start_step=start_step,
                                         num_batches=t["max_steps"])
    val_loader = task.val_dataloader(data_seed)
    metrics_file = run_dir / "metrics.csv"
    earlier_rows = _rows_before(metrics_file, start_step) if resume_from is not None else None
    diverged = None
    try:
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader, ckpt_path=resume_from,
                    weights_only=True)
    except DivergedError as exc:
        diverged = exc
    finally:
        _fill_progress(record, trainer, tracker)
        if earlier_rows is not None and trainer.is_global_zero:
            _prepend_rows(metrics_file, earlier_rows)
    if diverged is None and tracker.val_last.get("step") != trainer.global_step:
        trainer.validate(module, dataloaders=val_loader, verbose=False)  # the final weights can be the best
    best = run_dir / store.BEST_CHECKPOINT
    use_best = (t["test_checkpoint"] == "best" or diverged is not None) and t["checkpoint"] and best.is_file()
    if use_best:  # its weights only: loading it through Lightning would also roll back the callbacks' state
        module.load_state_dict(checkpoints.read_checkpoint(best)["state_dict"])
        record.test_checkpoint = f"best (step {tracker.best_step})"
    else:
        record.test_checkpoint = f"last (step {trainer.global_step})"
    tested_val = tracker.val_best if use_best else tracker.val_last
    if diverged is not None:  # the trainer stopped on an exception: test without it, on rank 0
        if not use_best or not trainer.is_global_zero:
            record.test_checkpoint = None
            raise diverged
        test = evaluate(task, exp.model, task.test_dataloader(data_seed))
    else:
        results = trainer.test(module, dataloaders=task.test_dataloader(data_seed), verbose=False)
        test = {k[5:]: float(v) for k, v in (results[0] if results else {}).items() if k.startswith("test/")}
    _fill_progress(record, trainer, tracker)
    record.metrics = {"val_best": tracker.val_best, "val_last": tracker.val_last, "test": test}
    record.solved = task.is_solved(test)
    record.solved_val = task.is_solved(tested_val)
    if trainer.is_global_zero:  # with the weights just tested; only rank 0 writes the record
        record.artifacts = task.write_artifacts(exp.model, run_dir, data_seed)
        if task.eval_lengths:
            record.metrics["length_generalisation"] = length_generalisation(cfg["task"], task, exp.model, data_seed)
        if cfg["diagnostics"]:
            record.diagnostics = diagnostics.write(run_dir, task, exp.model, data_seed)
    if diverged is not None:
        raise diverged


def _fill_progress(record: RunRecord, trainer, tracker: RunTracker) -> None:
    record.steps = trainer.global_step
    record.world_size = trainer.world_size
    # tokens_per_s is computed from the stated (rounded) time, so a reviewer dividing the two
    # record fields gets the stated throughput exactly
    record.train_time_s = round(tracker.train_time_s, 6)
    record.train_tokens = tracker.train_tokens
    record.tokens_per_s = (round(record.train_tokens / record.train_time_s, 1)
                           if record.train_time_s > 0 else None)
    record.steps_to_solve = tracker.solved_step
    record.time_to_solve_s = None if tracker.solved_time_s is None else round(tracker.solved_time_s, 3)
    record.stopped_when_solved = tracker.stopped_when_solved


def _rows_before(metrics_file: Path, step: int):
    """The rows of an interrupted run's ``metrics.csv`` before ``step`` (later ones are redone)."""
    import pandas as pd

    if not metrics_file.is_file():
        return None
    rows = pd.read_csv(metrics_file)
    return rows[rows["step"] < step] if "step" in rows else None


def _prepend_rows(metrics_file: Path, earlier) -> None:
    """Lightning's CSV logger starts ``metrics.csv`` afresh on resume: put the earlier rows back."""
    import pandas as pd

    from .files import write_text_atomic

    later = pd.read_csv(metrics_file) if metrics_file.is_file() else earlier.iloc[:0]
    write_text_atomic(metrics_file, pd.concat([earlier, later], ignore_index=True).to_csv(index=False))
