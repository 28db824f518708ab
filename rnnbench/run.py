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

from . import checkpoints, diagnostics, distributed, records, schema
from .errors import ConfigError, DivergedError, check, is_int
from .evaluation import length_generalisation
from .lit import BenchModule, RandomState, RunTracker
from .models import count_parameters
from .registry import CELLS, TASKS, load_plugin_file
from .stack import STACK_KEYS, CellStack
from .task import Task

log = logging.getLogger(__name__)

MAX_TIME = re.compile(r"^\d{2}:\d{2}:\d{2}:\d{2}$")


@dataclass
class Experiment:
    """Everything built from a config before training starts."""

    config: dict
    task: Task
    model: nn.Module
    cell_class: type
    stack: CellStack


def _validate_top_level(config: dict) -> None:
    schema.check_dataclass(config, schema.RunConfig, "")
    for key in ("seed", "data_seed", "init_seed"):
        check(config[key] >= 0, key, config[key], "an integer >= 0")
    schema.check_dataclass(config.get("model") or {}, schema.ModelConfig, "model")


def _validate_trainer(t: dict) -> None:
    schema.check_dataclass(t, schema.TrainerConfig, "trainer")
    check(t["max_steps"] >= 1, "trainer.max_steps", t["max_steps"], "an integer >= 1")
    check(t["max_time"] is None or MAX_TIME.match(t["max_time"]),
          "trainer.max_time", t["max_time"], 'null or a wall-clock budget "DD:HH:MM:SS", e.g. "00:00:10:00"')
    check(t["val_check_interval"] >= 1, "trainer.val_check_interval", t["val_check_interval"],
          "an integer number of steps >= 1")
    check(t["log_every_n_steps"] >= 1, "trainer.log_every_n_steps", t["log_every_n_steps"], "an integer >= 1")
    check(t["threads"] is None or t["threads"] >= 1, "trainer.threads", t["threads"],
          "null (torch's default) or an integer >= 1")
    check(t["num_nodes"] >= 1, "trainer.num_nodes", t["num_nodes"], "an integer >= 1")
    if t["num_nodes"] > 1 and not distributed.launched_externally():
        raise ConfigError(f"trainer.num_nodes={t['num_nodes']} needs a cluster launcher that starts one process "
                          f"per device on every node (SLURM with --ntasks-per-node, or torchrun); none is "
                          f"present, so the run would wait forever. Use trainer.num_nodes=1 here.")
    devices = t["devices"]
    check(devices in (-1, "auto") or devices >= 1, "trainer.devices", devices,
          "an integer >= 1, or -1 for all visible GPUs (all cores on the CPU)")
    if t["accelerator"] in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={t['accelerator']} but no CUDA GPU is visible to torch "
                          f"(torch {torch.__version__}). Use trainer=cpu or trainer=ddp_cpu.")
    if t["accelerator"] in ("gpu", "cuda"):
        wanted = distributed.resolve_devices("gpu", devices)
        check(wanted <= torch.cuda.device_count(), "trainer.devices", devices,
              f"at most the {torch.cuda.device_count()} visible GPU(s)")
    if t["accelerator"] == "cpu":
        cores = os.cpu_count() or 1
        check(distributed.resolve_devices("cpu", devices) <= cores, "trainer.devices", devices,
              f"at most the {cores} CPU core(s) of this machine (one process each)")
    if distributed.resolve_devices(t["accelerator"], devices) > 1 and t["strategy"] == "auto":
        raise ConfigError(f"trainer.devices={devices} with trainer.strategy=auto is not supported: rnnbench "
                          f"starts the extra processes itself with trainer.strategy=ddp (trainer=ddp or "
                          f"trainer=ddp_cpu).")


def _validate_optim(o: dict) -> None:
    schema.check_dataclass(o, schema.OptimConfig, "optim")
    check(o["lr"] > 0, "optim.lr", o["lr"], "a number > 0")
    check(o.get("grad_clip") is None or o["grad_clip"] > 0, "optim.grad_clip", o.get("grad_clip"),
          "null (no clipping) or a number > 0")
    check(o.get("weight_decay", 0) >= 0, "optim.weight_decay", o.get("weight_decay"), "a number >= 0")
    check(o.get("momentum", 0) >= 0, "optim.momentum", o.get("momentum"), "a number >= 0")
    check(0 <= o.get("alpha", 0.99) < 1, "optim.alpha", o.get("alpha"), "a number in [0, 1)")
    betas = o.get("betas", [0.9, 0.999])
    check(len(betas) == 2 and all(0 <= b < 1 for b in betas), "optim.betas", betas,
          "two numbers in [0, 1), e.g. [0.9, 0.999]")
    check(o.get("warmup_steps", 0) >= 0, "optim.warmup_steps", o.get("warmup_steps"), "an integer >= 0")
    # A warm-up is a per-step schedule; the plateau schedule changes the learning rate by
    # itself after validations, and the two cannot drive one optimiser (see lit.build_optimizer).
    check(o.get("schedule") != "plateau" or not o.get("warmup_steps"), "optim.warmup_steps", o.get("warmup_steps"),
          "0 with optim.schedule=plateau (the plateau schedule has no warm-up)")
    check(o.get("step_size", 1) >= 1, "optim.step_size", o.get("step_size"), "an integer >= 1")
    check(o.get("gamma", 0.1) > 0, "optim.gamma", o.get("gamma"), "a number > 0")
    check(o.get("patience", 0) >= 0, "optim.patience", o.get("patience"), "an integer >= 0")
    first = o.get("first_decay_step")
    check(first is None or first >= 1, "optim.first_decay_step", first,
          "null (= optim.step_size) or an integer >= 1")


def build_experiment(config: dict, task: Task | None = None) -> Experiment:
    """Validate ``config`` (a resolved dict) and build task and model. No training.

    ``task``: one already built from ``config["task"]`` (e.g. with a trained run's
    vocabulary restored, to rebuild its model); by default it is built here."""
    _validate_top_level(config)
    for path in config.get("plugins") or []:
        load_plugin_file(path)

    cell_cfg, task_cfg = dict(config["cell"]), dict(config["task"])
    cell_class = CELLS.get(cell_cfg["name"])
    task_class = TASKS.get(task_cfg["name"])
    cell_options = {k: v for k, v in cell_cfg.items() if k not in STACK_KEYS}
    schema.check_signature(cell_class, cell_options, ("input_size", "hidden_size"), "cell",
                           f"cell {cell_cfg['name']!r}")
    stack_options = {k: cell_cfg.get(k) for k in STACK_KEYS if k != "name"}
    schema.check_signature(CellStack, stack_options, ("cell_cls", "input_size"), "cell", "the cell stack")
    task_options = {k: v for k, v in task_cfg.items() if k != "name"}
    schema.check_signature(task_class, task_options, (), "task", f"task {task_cfg['name']!r}")
    _validate_trainer(config["trainer"])
    _validate_optim(config["optim"])

    if cell_cfg["bidirectional"] and task_class.causal:
        raise ConfigError(
            f"cell.bidirectional=true is not allowed with task {task_cfg['name']!r}: the task is causal "
            f"(each output may only depend on earlier inputs) and a bidirectional cell would see the future. "
            f"Use a unidirectional cell (e.g. cell=gru) or set cell.bidirectional=false."
        )
    if task is None:
        task = task_class(**task_options)

    def build(hidden_size: int) -> tuple[nn.Module, CellStack]:
        stacks: list[CellStack] = []

        def make_stack(input_size: int, bidirectional: bool | None = None) -> CellStack:
            # bidirectional overrides the cell config for stacks that must run one way
            # (e.g. a translation decoder); None keeps cell.bidirectional.
            bidirectional = cell_cfg["bidirectional"] if bidirectional is None else bidirectional
            stack = CellStack(cell_class, input_size, hidden_size, num_layers=cell_cfg["num_layers"],
                              bidirectional=bidirectional, dropout=cell_cfg["dropout"], **cell_options)
            stacks.append(stack)
            return stack

        try:
            return task.build_model(make_stack), stacks[0]
        except TypeError as exc:  # a cell option of the wrong type, found by the cell itself
            raise ConfigError(f"cell {cell_cfg['name']!r} could not be built: {exc}") from exc

    budget = (config.get("model") or {}).get("param_budget")
    if budget is not None:
        check(is_int(budget) and budget >= 1, "model.param_budget", budget, "null or an integer >= 1")
        cell_cfg["hidden_size"] = config["cell"]["hidden_size"] = hidden_size_for_budget(build, budget)
    pl.seed_everything(config["init_seed"], workers=True, verbose=False)
    model, stack = build(cell_cfg["hidden_size"])
    return Experiment(config=config, task=task, model=model, cell_class=cell_class, stack=stack)


def hidden_size_for_budget(build: Callable[[int], tuple[nn.Module, CellStack]], budget: int,
                           largest: int = 1 << 16) -> int:
    """The hidden size whose whole model comes closest to ``budget`` trainable parameters.

    Models are built on the meta device (no memory, no init cost); the parameter
    count grows with the hidden size, so a bisection finds the largest size within
    the budget, and the next size up wins if it lands closer.
    """
    def params(hidden_size: int) -> int:
        with torch.device("meta"):
            return count_parameters(build(hidden_size)[0])

    smallest = params(1)
    if smallest > budget:
        raise ConfigError(f"model.param_budget={budget} is too small: the smallest model (cell.hidden_size=1) "
                          f"already has {smallest} parameters. Raise the budget or leave it null.")
    low, high = 1, largest  # invariant: params(low) <= budget
    while low < high:
        middle = (low + high + 1) // 2
        if params(middle) <= budget:
            low = middle
        else:
            high = middle - 1
    if low < largest and abs(params(low + 1) - budget) < abs(budget - params(low)):
        return low + 1
    return low


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
        "cell_params": count_parameters(stack),
        "param_budget": (cfg.get("model") or {}).get("param_budget"),
        "state_size": stack.state_size,
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
