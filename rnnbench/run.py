"""One run, start to finish: validate the config, build task and model, train with
Lightning, test the best checkpoint, and write the run record.

Everything that can be checked is checked in :func:`build_experiment`, before
any data are generated or any step is taken, so bad input fails fast with a
:class:`~rnnbench.errors.ConfigError`.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
import traceback
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from . import checkpoints, diagnostics, distributed, records
from .errors import ConfigError, DivergedError, check, is_int
from .evaluation import length_generalisation
from .lit import BenchModule, RandomState, RunTracker
from .models import count_parameters
from .registry import CELLS, TASKS, load_plugin_file
from .stack import STACK_KEYS, CellStack
from .task import Task

log = logging.getLogger(__name__)

MAX_TIME = re.compile(r"^\d{2}:\d{2}:\d{2}:\d{2}$")


from .experiment import Experiment, build_experiment, hidden_size_for_budget  # noqa: E402,F401


def _progress_bar(kind: str):
    if kind == "rich":
        from pytorch_lightning.callbacks import RichProgressBar

        return [RichProgressBar(leave=True)]
    if kind == "tqdm":
        from pytorch_lightning.callbacks import TQDMProgressBar

        return [TQDMProgressBar()]
    return []


def _base_record(exp: Experiment, run_dir: Path, world_size: int, presets: dict) -> dict[str, Any]:
    cfg, task, stack = exp.config, exp.task, exp.stack
    t = cfg["trainer"]
    return {
        "record_version": records.RECORD_VERSION,
        "run_dir": str(run_dir),
        "cell": cfg["cell"]["name"],
        "task": cfg["task"]["name"],
        # The YAML presets chosen (e.g. cell=bigru is cell "gru" with bidirectional=true).
        "cell_preset": presets.get("cell", cfg["cell"]["name"]),
        "task_preset": presets.get("task", cfg["task"]["name"]),
        "task_params": task.key_parameters(),
        "hidden_size": cfg["cell"]["hidden_size"],
        "num_layers": cfg["cell"]["num_layers"],
        "bidirectional": cfg["cell"]["bidirectional"],
        "params": count_parameters(exp.model),
        "cell_params": sum(count_parameters(s) for s in exp.stacks),
        "param_budget": (cfg.get("model") or {}).get("param_budget"),
        "state_size": sum(s.state_size for s in exp.stacks),
        "cell_flops_per_step": stack.flops_per_step(),  # forward, per sequence, whole stack
        "seed": cfg["seed"],
        "data_seed": cfg["data_seed"],
        "init_seed": cfg["init_seed"],
        "status": "running",
        "error": None,
        "solved": False,
        "solved_criterion": {"metric": task.metric, "mode": task.metric_mode, "threshold": task.solved_threshold},
        "metric": task.metric,
        "metrics": {},
        "baseline": task.baseline(),
        "steps": 0,
        "steps_to_solve": None,
        "wall_time_s": 0.0,
        "train_time_s": 0.0,
        "tokens_per_s": None,
        "device": records.device_description(t["accelerator"], world_size, t["num_nodes"]),
        # CPU kernels give the same numbers for the same config and seeds; GPU kernels
        # (cuDNN, atomics) may not, unless trainer.deterministic asks for deterministic ones.
        "deterministic": bool(t["deterministic"]) or t["accelerator"] == "cpu",
        "pid": os.getpid(),  # with host: tells a killed run from one still running
        "host": socket.gethostname(),
        "versions": records.versions(),
        "git_commit": records.git_commit(),
        "config_hash": records.config_hash(cfg),
        "config": cfg,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# Record statuses: a result worth keeping (re-running the same config would only
# repeat it) and a run that stopped early and can go on from its last checkpoint.
DONE_STATUSES = ("finished", "diverged")
RESUMABLE_STATUSES = ("running", "interrupted")
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"


def _alive_elsewhere(record: dict) -> bool:
    """True if the process that wrote a ``running`` record is still running on this host."""
    pid = record.get("pid")
    if record.get("status") != "running" or record.get("host") != socket.gethostname() or not is_int(pid):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def find_previous_run(results_dir: str | Path, config_hash: str) -> tuple[str, Path, dict] | None:
    """What an earlier run with the same config hash under ``results_dir`` means for this one:

    - ``("skip", dir, record)``: it finished (or diverged), or it is still running in
      another process on this host;
    - ``("resume", dir, record)``: it was interrupted or killed and left ``checkpoints/last.ckpt``;
    - None: nothing to reuse (no such run, or only failed ones, which are run again).
    """
    root = Path(results_dir)
    if not root.is_dir():
        return None
    resumable = None
    for path, record in records.find_records(root, config_hash):
        if record.get("status") in DONE_STATUSES or _alive_elsewhere(record):
            return "skip", path.parent, record
        if record.get("status") in RESUMABLE_STATUSES and (path.parent / LAST_CHECKPOINT).is_file():
            resumable = resumable or ("resume", path.parent, record)
    return resumable


def run_job(cfg: DictConfig | dict, run_dir: str | Path, presets: dict | None = None) -> dict[str, Any]:
    """Validate, train, test and record one run in ``run_dir``; returns the record.

    Rank 0 writes ``config.yaml``, ``summary.json`` (at the start with status
    ``running``, then with the final status), ``metrics.csv`` and ``checkpoints/``.
    A diverging run returns normally with status ``diverged``; any other failure
    is recorded (``failed`` / ``interrupted``) and re-raised.

    With ``resume: true`` (the default) and ``force: false``, an earlier run of the
    same config (same config hash) under ``results_dir`` is reused: a finished one is
    not run again (its record is returned, ``run_dir`` stays unused), an interrupted
    or killed one goes on from its ``last.ckpt`` in its own directory.
    """
    run_dir = Path(run_dir)
    config = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    config.pop("hydra", None)
    exp = build_experiment(config)
    t = config["trainer"]

    world_size = distributed.resolve_devices(t["accelerator"], t["devices"]) * t["num_nodes"]
    is_rank_zero = distributed.global_rank() == 0
    needs_local_ranks = (t["strategy"] in ("ddp", "ddp_find_unused_parameters_true") and world_size > 1
                         and not distributed.launched_externally())
    if t["threads"]:
        torch.set_num_threads(t["threads"])
    elif t["accelerator"] == "cpu" and world_size > 1:
        torch.set_num_threads(max(1, (torch.get_num_threads()) // world_size))

    record = _base_record(exp, run_dir, world_size, presets or {})
    reuse = config.get("resume", True) and not config.get("force", False)
    # Only the process that owns the job decides; the ranks it starts get the chosen run_dir.
    if reuse and is_rank_zero and not distributed.launched_externally():
        previous = find_previous_run(config.get("results_dir", "results"), record["config_hash"])
        if previous is not None and previous[0] == "skip":
            _, where, old = previous
            log.info("skipping: the same config (hash %s) already has a %s run record in %s (force=true runs it "
                     "again)", record["config_hash"], old.get("status"), where)
            return {**old, "skipped": True}
        if previous is not None:
            run_dir = previous[1]
            record.update(run_dir=str(run_dir), started_at=previous[2].get("started_at", record["started_at"]))
    resume_from = run_dir / LAST_CHECKPOINT if reuse and (run_dir / LAST_CHECKPOINT).is_file() else None
    start_step = 0
    if resume_from is not None:
        start_step = int(checkpoints.read_checkpoint(resume_from)["global_step"])  # refuses a corrupt file
        record.update(resumed_from_step=start_step)
        if is_rank_zero:
            log.info("resuming %s from %s (step %d)", run_dir, resume_from, start_step)

    if is_rank_zero:
        records.check_results_dir(run_dir)
        if (run_dir / records.SUMMARY_FILE).exists():
            try:
                previous_status = records.read_record(run_dir / records.SUMMARY_FILE).get("status")
            except ValueError:  # a torn record of a killed run: it is rewritten below
                previous_status = "running"
            if previous_status not in RESUMABLE_STATUSES:
                raise ConfigError(f"{run_dir} already holds a {previous_status} run record; refusing to overwrite "
                                  f"it. Choose another directory (results_dir=... or hydra.run.dir=...).")
        OmegaConf.save(OmegaConf.create(config), run_dir / records.CONFIG_FILE)
        records.write_json_atomic(run_dir / records.SUMMARY_FILE, record)

    launcher = distributed.local_ranks(run_dir, world_size) if needs_local_ranks else nullcontext()
    started = time.perf_counter()
    with launcher:
        try:
            _train_and_test(exp, run_dir, record, resume_from, start_step)
            record["status"] = "finished"
        except DivergedError as exc:
            record.update(status="diverged", error=str(exc), diverged_at_step=exc.step)
        except KeyboardInterrupt:
            record.update(status="interrupted", error="KeyboardInterrupt")
            raise
        except SystemExit as exc:  # Lightning exits after handling Ctrl-C
            record.update(status="interrupted", error=f"SystemExit({exc.code}) after KeyboardInterrupt")
            raise
        except Exception as exc:
            record.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                          traceback=traceback.format_exc(limit=20))
            raise
        finally:
            record["wall_time_s"] = round(time.perf_counter() - started, 3)
            record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            if is_rank_zero:
                records.write_json_atomic(run_dir / records.SUMMARY_FILE, record)
    return record


def _quiet_lightning() -> None:
    """Silence Lightning's chatter that says nothing about the run (tips, a warning
    that metrics.csv goes into the run directory, which is by design)."""
    logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*Experiment logs directory .* exists and is not empty.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers which may be a bottleneck.*")
    warnings.filterwarnings("ignore", message=r".*`IterableDataset` has `__len__` defined.*")  # single process
    # Resuming mid-epoch is exact here: the training stream restarts at the restored step.
    warnings.filterwarnings("ignore", message=r".*resuming from a checkpoint that ended before the epoch ended.*")


def _train_and_test(exp: Experiment, run_dir: Path, record: dict[str, Any], resume_from: Path | None = None,
                    start_step: int = 0) -> None:
    from pytorch_lightning.loggers import CSVLogger

    _quiet_lightning()
    cfg, task = exp.config, exp.task
    t, o = cfg["trainer"], cfg["optim"]
    module = BenchModule(task, exp.model, o, t["max_steps"])
    tracker = RunTracker(task, stop_when_solved=t["stop_when_solved"])
    callbacks: list[pl.Callback] = [tracker, RandomState(), *_progress_bar(t["progress_bar"])]
    if t["checkpoint"]:
        callbacks.append(RunCheckpoints(run_dir / "checkpoints", tracker))
    trainer = pl.Trainer(
        accelerator=t["accelerator"],
        devices=t["devices"],
        strategy=t["strategy"],
        num_nodes=t["num_nodes"],
        precision=t["precision"],
        max_steps=t["max_steps"],
        max_time=t["max_time"],
        val_check_interval=t["val_check_interval"],
        check_val_every_n_epoch=None,  # count validation intervals in steps, across epochs
        log_every_n_steps=t["log_every_n_steps"],
        gradient_clip_val=o.get("grad_clip"),  # Lightning clips after backward, before the step
        gradient_clip_algorithm="norm",
        deterministic=t["deterministic"],
        logger=CSVLogger(save_dir=run_dir, name="", version=""),
        callbacks=callbacks,
        enable_checkpointing=False,  # no Lightning ModelCheckpoint: RunCheckpoints saves last and best
        enable_progress_bar=t["progress_bar"] != "none",
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=run_dir,
        plugins=[checkpoints.AtomicCheckpointIO()],
    )
    data_seed = cfg["data_seed"]
    # A resumed run's stream goes on at the restored step: batch k is a function of
    # (data seed, rank, k), so the resumed run sees the batches the killed one would have.
    # The length stays max_steps: Lightning restores its position in the epoch (start_step)
    # and ends the epoch at max_steps, as in an uninterrupted run.
    train_loader = task.train_dataloader(data_seed, trainer.global_rank, trainer.world_size, start_step=start_step,
                                         num_batches=t["max_steps"])
    val_loader = task.val_dataloader(data_seed)
    metrics_file = run_dir / "metrics.csv"
    earlier_metrics = _rows_before(metrics_file, start_step) if resume_from is not None else None
    try:
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader, ckpt_path=resume_from,
                    weights_only=True)
    finally:
        _fill_progress(record, trainer, module, tracker)
        if earlier_metrics is not None and trainer.is_global_zero:
            _prepend_rows(metrics_file, earlier_metrics)
    if tracker.val_last.get("step") != trainer.global_step:
        trainer.validate(module, dataloaders=val_loader, verbose=False)  # score the final weights too
    best = run_dir / "checkpoints" / "best.ckpt"
    ckpt = str(best) if t["checkpoint"] and best.exists() else None
    test_results = trainer.test(module, dataloaders=task.test_dataloader(data_seed), ckpt_path=ckpt, verbose=False,
                                weights_only=True)
    test = {k[5:]: float(v) for k, v in (test_results[0] if test_results else {}).items() if k.startswith("test/")}
    _fill_progress(record, trainer, module, tracker)
    record["metrics"] = {"val_best": tracker.val_best, "val_last": tracker.val_last, "test": test}
    record["test_checkpoint"] = f"best (step {tracker.best_step})" if ckpt else "final weights"
    record["solved"] = task.is_solved(test)
    record["solved_on_val_at_step"] = tracker.solved_step
    if trainer.is_global_zero:
        record.update(task.write_artifacts(module.model, run_dir, data_seed))
    # With the weights just tested: other lengths and diagnostics, when asked for.
    if task.eval_lengths and trainer.is_global_zero:  # only rank 0 writes the record
        record["metrics"]["length_generalisation"] = length_generalisation(cfg["task"], task, exp.model, data_seed)
    if cfg.get("diagnostics") and trainer.is_global_zero:
        record["diagnostics"] = diagnostics.write(run_dir, task, exp.model, data_seed)


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

    later = pd.read_csv(metrics_file) if metrics_file.is_file() else earlier.iloc[:0]
    merged = pd.concat([earlier, later], ignore_index=True)
    records.write_atomic(metrics_file, lambda f: f.write(merged.to_csv(index=False).encode()))


def _fill_progress(record: dict, trainer: pl.Trainer, module: BenchModule, tracker: RunTracker) -> None:
    record["steps"] = trainer.global_step
    record["world_size"] = trainer.world_size  # processes that really trained (DDP ranks)
    record["train_time_s"] = round(tracker.train_time_s, 3)
    record["steps_to_solve"] = tracker.solved_step
    record["time_to_solve_s"] = None if tracker.solved_time_s is None else round(tracker.solved_time_s, 3)
    if tracker.train_time_s > 0:
        record["tokens_per_s"] = round(module.tokens_seen * trainer.world_size / tracker.train_time_s, 1)
    record["stopped_early_when_solved"] = tracker.stopped_when_solved


class RunCheckpoints(pl.Callback):
    """At every validation during fitting, save ``last.ckpt`` (the resume point) and, when
    the tracker has just seen a new best validation score, ``best.ckpt`` (tested at the end).

    Lightning's ``ModelCheckpoint(save_top_k=0, save_last=True)`` writes ``last.ckpt``
    only when training ends, which leaves nothing to resume a killed run from.
    """

    def __init__(self, folder: Path, tracker: RunTracker):
        self.folder = folder
        self.tracker = tracker

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        # weights_only=False: the whole training state (optimiser, loops, callbacks), for resuming.
        trainer.save_checkpoint(self.folder / "last.ckpt", weights_only=False)
        if self.tracker.best_step is not None and self.tracker.best_step == trainer.global_step:
            trainer.save_checkpoint(self.folder / "best.ckpt", weights_only=False)
