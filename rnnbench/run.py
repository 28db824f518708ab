"""One run, start to finish: validate the config, build task and model, train with
Lightning, test the best checkpoint, and write the run record.

Everything that can be checked is checked in :func:`build_experiment`, before
any data are generated or any step is taken, so bad input fails fast with a
:class:`~rnnbench.errors.ConfigError`.
"""

from __future__ import annotations

import inspect
import logging
import re
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

from . import distributed, records
from .errors import ConfigError, DivergedError, check, is_int
from .lit import BenchModule, RunTracker
from .models import count_parameters
from .registry import CELLS, TASKS, load_plugin_file
from .stack import CellStack
from .task import Task

# Keys of a cell config that belong to the stack wrapper; every other key is an
# option of the cell class itself.
STACK_KEYS = ("name", "hidden_size", "num_layers", "bidirectional", "dropout")
TRAINER_KEYS = {
    "accelerator", "devices", "strategy", "num_nodes", "precision", "max_steps", "max_time",
    "val_check_interval", "log_every_n_steps", "progress_bar", "stop_when_solved", "deterministic",
    "threads", "checkpoint",
}
OPTIM_KEYS = {"name", "lr", "weight_decay", "betas", "alpha", "momentum", "grad_clip", "schedule",
              "warmup_steps", "step_size", "first_decay_step", "gamma", "patience"}
OPTIMIZERS = ("adam", "rmsprop", "sgd")
SCHEDULES = ("constant", "cosine", "step", "plateau")
PROGRESS_BARS = ("rich", "tqdm", "none")
MAX_TIME = re.compile(r"^\d{2}:\d{2}:\d{2}:\d{2}$")


@dataclass
class Experiment:
    """Everything built from a config before training starts."""

    config: dict
    task: Task
    model: nn.Module
    cell_class: type
    stack: CellStack


def _constructor_options(cls: type, given: dict, skip: tuple[str, ...], what: str) -> None:
    """Refuse keys that ``cls.__init__`` does not accept, listing the accepted ones."""
    signature = inspect.signature(cls.__init__)
    params = [p for p in signature.parameters.values() if p.name not in ("self", *skip)]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    accepted = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [k for k in given if k not in accepted]
    if unknown:
        raise ConfigError(
            f"{what} has no option {', '.join(repr(k) for k in unknown)}. "
            f"Its options are: {', '.join(accepted) or '(none)'}."
        )


def _validate_trainer(t: dict) -> None:
    unknown = sorted(set(t) - TRAINER_KEYS)
    if unknown:
        raise ConfigError(f"unknown trainer key(s) {unknown}; known keys: {sorted(TRAINER_KEYS)}.")
    check(t["accelerator"] in ("cpu", "gpu", "cuda", "mps", "auto"), "trainer.accelerator", t["accelerator"],
          "one of cpu, gpu, cuda, mps, auto")
    check(isinstance(t["max_steps"], int) and t["max_steps"] >= 1, "trainer.max_steps", t["max_steps"],
          "an integer >= 1")
    check(t["max_time"] is None or (isinstance(t["max_time"], str) and MAX_TIME.match(t["max_time"])),
          "trainer.max_time", t["max_time"], 'null or a wall-clock budget "DD:HH:MM:SS", e.g. "00:00:10:00"')
    check(isinstance(t["val_check_interval"], int) and t["val_check_interval"] >= 1,
          "trainer.val_check_interval", t["val_check_interval"], "an integer number of steps >= 1")
    check(t["progress_bar"] in PROGRESS_BARS, "trainer.progress_bar", t["progress_bar"],
          f"one of {', '.join(PROGRESS_BARS)}")
    check(t["threads"] is None or (isinstance(t["threads"], int) and t["threads"] >= 1), "trainer.threads",
          t["threads"], "null (torch's default) or an integer >= 1")
    devices = t["devices"]
    check(devices in (-1, "auto") or (isinstance(devices, int) and devices >= 1), "trainer.devices", devices,
          "an integer >= 1, or -1 for all visible GPUs")
    if t["accelerator"] in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={t['accelerator']} but no CUDA GPU is visible to torch "
                          f"(torch {torch.__version__}). Use trainer=cpu or trainer=ddp_cpu.")
    if t["accelerator"] in ("gpu", "cuda"):
        wanted = distributed.resolve_devices("gpu", devices)
        check(wanted <= torch.cuda.device_count(), "trainer.devices", devices,
              f"at most the {torch.cuda.device_count()} visible GPU(s)")


def _validate_optim(o: dict) -> None:
    unknown = sorted(set(o) - OPTIM_KEYS)
    if unknown:
        raise ConfigError(f"unknown optim key(s) {unknown}; known keys: {sorted(OPTIM_KEYS)}.")
    check(o["name"] in OPTIMIZERS, "optim.name", o["name"], f"one of {', '.join(OPTIMIZERS)}")
    check(isinstance(o["lr"], (int, float)) and o["lr"] > 0, "optim.lr", o["lr"], "a number > 0")
    check(o.get("grad_clip") is None or (isinstance(o["grad_clip"], (int, float)) and o["grad_clip"] > 0),
          "optim.grad_clip", o.get("grad_clip"), "null (no clipping) or a number > 0")
    check(o.get("schedule", "constant") in SCHEDULES, "optim.schedule", o.get("schedule"),
          f"one of {', '.join(SCHEDULES)}")
    first = o.get("first_decay_step")
    check(first is None or (is_int(first) and first >= 1), "optim.first_decay_step", first,
          "null (= optim.step_size) or an integer >= 1")


def build_experiment(config: dict, task: Task | None = None) -> Experiment:
    """Validate ``config`` (a resolved dict) and build task and model. No training.

    ``task``: one already built from ``config["task"]`` (e.g. with a trained run's
    vocabulary restored, to rebuild its model); by default it is built here."""
    for key in ("seed", "data_seed", "init_seed"):
        check(isinstance(config[key], int) and config[key] >= 0, key, config[key], "an integer >= 0")
    plugins = config.get("plugins") or []
    check(isinstance(plugins, list), "plugins", plugins, "a list of Python files, e.g. plugins=[my_cells.py]")
    for path in plugins:
        load_plugin_file(path)

    cell_cfg, task_cfg = dict(config["cell"]), dict(config["task"])
    cell_class = CELLS.get(cell_cfg["name"])
    task_class = TASKS.get(task_cfg["name"])
    cell_options = {k: v for k, v in cell_cfg.items() if k not in STACK_KEYS}
    _constructor_options(cell_class, cell_options, ("input_size", "hidden_size"), f"cell {cell_cfg['name']!r}")
    task_options = {k: v for k, v in task_cfg.items() if k != "name"}
    _constructor_options(task_class, task_options, (), f"task {task_cfg['name']!r}")
    _validate_trainer(config["trainer"])
    _validate_optim(config["optim"])

    check(isinstance(cell_cfg["bidirectional"], bool), "cell.bidirectional", cell_cfg["bidirectional"], "true or false")
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

        def make_stack(input_size: int) -> CellStack:
            stack = CellStack(cell_class, input_size, hidden_size, num_layers=cell_cfg["num_layers"],
                              bidirectional=cell_cfg["bidirectional"], dropout=cell_cfg["dropout"], **cell_options)
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
        "task_params": task.params(),
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
        "versions": records.versions(),
        "git_commit": records.git_commit(),
        "config_hash": records.config_hash(cfg),
        "config": cfg,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def run_job(cfg: DictConfig | dict, run_dir: str | Path, presets: dict | None = None) -> dict[str, Any]:
    """Validate, train, test and record one run in ``run_dir``; returns the record.

    Rank 0 writes ``config.yaml``, ``summary.json`` (at the start with status
    ``running``, then with the final status), ``metrics.csv`` and ``checkpoints/``.
    A diverging run returns normally with status ``diverged``; any other failure
    is recorded (``failed`` / ``interrupted``) and re-raised.
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
    if is_rank_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        if (run_dir / records.SUMMARY_FILE).exists():
            previous = records.read_record(run_dir / records.SUMMARY_FILE)
            if previous.get("status") != "running":
                raise ConfigError(f"{run_dir} already holds a finished run record; refusing to overwrite it. "
                                  f"Choose another directory (results_dir=... or hydra.run.dir=...).")
        OmegaConf.save(OmegaConf.create(config), run_dir / records.CONFIG_FILE)
        records.write_json_atomic(run_dir / records.SUMMARY_FILE, record)

    launcher = distributed.local_ranks(run_dir, world_size) if needs_local_ranks else nullcontext()
    started = time.perf_counter()
    with launcher:
        try:
            _train_and_test(exp, run_dir, record)
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


def _train_and_test(exp: Experiment, run_dir: Path, record: dict[str, Any]) -> None:
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger

    _quiet_lightning()
    cfg, task = exp.config, exp.task
    t, o = cfg["trainer"], cfg["optim"]
    module = BenchModule(task, exp.model, o, t["max_steps"])
    tracker = RunTracker(task, stop_when_solved=t["stop_when_solved"])
    callbacks: list[pl.Callback] = [tracker, *_progress_bar(t["progress_bar"])]
    if t["checkpoint"]:
        # last.ckpt at every validation, for resuming; the best one is saved by BestCheckpoint.
        callbacks.append(ModelCheckpoint(dirpath=run_dir / "checkpoints", save_top_k=0, save_last=True))
        callbacks.append(BestCheckpoint(run_dir / "checkpoints" / "best.ckpt", tracker))
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
        enable_checkpointing=bool(t["checkpoint"]),
        enable_progress_bar=t["progress_bar"] != "none",
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=run_dir,
    )
    data_seed = cfg["data_seed"]
    train_loader = task.train_dataloader(data_seed, trainer.global_rank, trainer.world_size,
                                         num_batches=t["max_steps"])
    val_loader = task.val_dataloader(data_seed)
    try:
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
    finally:
        _fill_progress(record, trainer, module, tracker)
    if tracker.val_last.get("step") != trainer.global_step:
        trainer.validate(module, dataloaders=val_loader, verbose=False)  # score the final weights too
    best = run_dir / "checkpoints" / "best.ckpt"
    ckpt = str(best) if t["checkpoint"] and best.exists() else None
    test_results = trainer.test(module, dataloaders=task.test_dataloader(data_seed), ckpt_path=ckpt, verbose=False,
                                weights_only=False)  # our own file, written by this run
    test = {k[5:]: float(v) for k, v in (test_results[0] if test_results else {}).items() if k.startswith("test/")}
    _fill_progress(record, trainer, module, tracker)
    record["metrics"] = {"val_best": tracker.val_best, "val_last": tracker.val_last, "test": test}
    record["test_checkpoint"] = f"best (step {tracker.best_step})" if ckpt else "final weights"
    record["solved"] = task.is_solved(test)
    record["solved_on_val_at_step"] = tracker.solved_step
    if trainer.is_global_zero:
        record.update(task.write_artifacts(module.model, run_dir, data_seed))


def _fill_progress(record: dict, trainer: pl.Trainer, module: BenchModule, tracker: RunTracker) -> None:
    record["steps"] = trainer.global_step
    record["world_size"] = trainer.world_size  # processes that really trained (DDP ranks)
    record["train_time_s"] = round(tracker.train_time_s, 3)
    record["steps_to_solve"] = tracker.solved_step
    record["time_to_solve_s"] = None if tracker.solved_time_s is None else round(tracker.solved_time_s, 3)
    if tracker.train_time_s > 0:
        record["tokens_per_s"] = round(module.tokens_seen * trainer.world_size / tracker.train_time_s, 1)
    record["stopped_early_when_solved"] = tracker.stopped_when_solved


class BestCheckpoint(pl.Callback):
    """Save ``path`` whenever the tracker has just seen a new best validation score."""

    def __init__(self, path: Path, tracker: RunTracker):
        self.path = path
        self.tracker = tracker
        self._saved_step: int | None = None

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or self.tracker.best_step is None or self.tracker.best_step == self._saved_step:
            return
        if self.tracker.best_step == trainer.global_step:
            trainer.save_checkpoint(self.path, weights_only=False)
            self._saved_step = trainer.global_step
