"""One source of truth for the config groups the core owns: ``trainer``, ``optim``,
``model``, ``logger`` and the top-level keys.

Each group is a dataclass below. A field carries, in one place, its **type** (the
annotation), its **default**, its **range** (``valid``: a test and the words of the
error message) and its **help** (why the default is what it is; ``rnnbench keys``
prints them all). The defaults reach Hydra through its ConfigStore: every group has a
``base`` node made from its dataclass, and the YAML presets of ``conf/<group>/`` start
from it (``defaults: [base, _self_]``) and set only what they change.

Why the ConfigStore holds the defaults as plain nodes and :func:`validate` checks the
values, rather than OmegaConf's typed nodes: a typed node refuses a bad value while
Hydra composes the job, so a sweep would stop at its first bad job instead of
recording that job as ``failed`` and going on, and the error would be OmegaConf's
multi-line report instead of one line naming the key. :func:`validate` gives
``key=value is invalid: expected <what>.`` for every key, before anything is built.

Cells and tasks are plugins: their options are their constructor's signature
(:func:`rnnbench.value_types.check_signature`), so a new cell or task is validated
without touching this file.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional, Union

from .errors import ConfigError
from .value_types import check_type

ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")
# The strategies rnnbench launches itself (see rnnbench.distributed); Lightning's
# own ddp_spawn / subprocess launchers would re-run the whole command line.
STRATEGIES = ("auto", "ddp", "ddp_find_unused_parameters_true")
PRECISIONS = ("64-true", "64", "32-true", "32", "16-mixed", "bf16-mixed", "16-true", "bf16-true")
MAX_TIME = re.compile(r"^\d{2}:\d{2}:\d{2}:\d{2}$")


def option(default: Any = dataclasses.MISSING, help: str = "", *, valid: Optional[tuple[Callable, str]] = None,
           lightning: bool = False, factory: Optional[Callable] = None) -> Any:
    """A config field: its default (or ``factory``), why it is that, ``valid = (test, words)``
    (``test(value)`` must hold; ``words`` end the message ``expected ...``), and whether it is
    an argument of ``pytorch_lightning.Trainer`` (passed to it as is)."""
    metadata = {"help": help, "valid": valid, "lightning": lightning}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def at_least(bound, words: str) -> tuple[Callable, str]:
    return (lambda v: v is None or v >= bound), words


@dataclass
class TrainerConfig:
    """``trainer``: Lightning's loop and hardware, and rnnbench's rules for a run."""

    accelerator: Literal[ACCELERATORS] = option("cpu", "cpu runs anywhere (laptop, CI); gpu for CUDA",
                                                lightning=True)
    devices: Union[int, Literal["auto"]] = option(
        1, "processes (GPUs); -1 = every visible GPU (every core on the CPU)", lightning=True,
        valid=(lambda v: v in (-1, "auto") or v >= 1, "an integer >= 1, or -1 for all visible GPUs (all cores on "
               "the CPU)"))
    strategy: Literal[STRATEGIES] = option("auto", "auto: one process; ddp: rnnbench starts the extra ranks",
                                           lightning=True)
    num_nodes: int = option(1, "machines; > 1 only under a cluster launcher (SLURM)", lightning=True,
                            valid=at_least(1, "an integer >= 1"))
    precision: Union[Literal[PRECISIONS], Literal[16, 32, 64]] = option(
        "32-true", "float32: recurrent cells are sensitive to reduced precision", lightning=True)
    max_steps: int = option(2000, "optimiser steps; enough for a GRU to solve adding at T=100 on a CPU",
                            lightning=True, valid=at_least(1, "an integer >= 1"))
    max_time: Optional[str] = option(
        None, 'wall-clock budget "DD:HH:MM:SS"; null = none', lightning=True,
        valid=(lambda v: v is None or bool(MAX_TIME.match(v)),
               'null or a wall-clock budget "DD:HH:MM:SS", e.g. "00:00:10:00"'))
    val_check_interval: int = option(100, "validate every 100 steps: fine enough to see when a task gets solved",
                                     lightning=True, valid=at_least(1, "an integer number of steps >= 1"))
    log_every_n_steps: int = option(10, "training metrics to metrics.csv every 10 steps: curves without bloat",
                                    lightning=True, valid=at_least(1, "an integer >= 1"))
    deterministic: bool = option(False, "true asks torch for deterministic kernels (slower on a GPU)",
                                 lightning=True)
    progress_bar: Literal["rich", "tqdm", "none"] = option("rich", "rich | tqdm | none (parallel sweeps)")
    stop_when_solved: bool = option(True, "stop once the task's solved criterion holds on validation: "
                                          "steps_to_solve is measured and a sweep finishes sooner")
    solved_patience: int = option(
        2, "validations in a row that must meet the solved criterion before the run stops: one validation "
           "at the threshold often fails on the test set (a run at 0.0097 tested at 0.0112)",
        valid=at_least(1, "an integer >= 1"))
    test_checkpoint: Literal["best", "last"] = option(
        "best", "weights the test scores: best (best validation metric) or last (the final weights, as papers "
                "that evaluate their last epoch)")
    threads: Optional[int] = option(None, "torch threads per process; null = torch's default (every core)",
                                    valid=at_least(1, "null (torch's default) or an integer >= 1"))
    checkpoint: bool = option(True, "keep last.ckpt (resume) and best.ckpt (tested)")

    def lightning_arguments(self) -> dict[str, Any]:
        """The fields that are ``pytorch_lightning.Trainer`` arguments, by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata["lightning"]}


@dataclass
class OptimConfig:
    """``optim``: the optimiser and its learning-rate schedule."""

    name: Literal["adam", "rmsprop", "sgd"] = option(help="the optimiser (each preset says why)")
    lr: float = option(help="learning rate", valid=(lambda v: v > 0, "a number > 0"))
    weight_decay: float = option(0.0, "no regularisation: synthetic tasks have unlimited fresh data",
                                 valid=at_least(0, "a number >= 0"))
    betas: list[float] = option(factory=lambda: [0.9, 0.999], help="Adam's published defaults",
                                valid=(lambda v: len(v) == 2 and all(0 <= b < 1 for b in v),
                                       "two numbers in [0, 1), e.g. [0.9, 0.999]"))
    alpha: float = option(0.99, "RMSprop's decay, torch's default",
                          valid=(lambda v: 0 <= v < 1, "a number in [0, 1)"))
    momentum: float = option(0.0, "plain SGD / RMSprop", valid=at_least(0, "a number >= 0"))
    grad_clip: Optional[float] = option(None, "gradient-norm clipping after backward; null = none",
                                        valid=(lambda v: v is None or v > 0, "null (no clipping) or a number > 0"))
    schedule: Literal["constant", "cosine", "step", "plateau"] = option(
        "constant", "constant | cosine | step (gamma every step_size) | plateau (gamma after a validation that "
                    "does not improve)")
    warmup_steps: int = option(0, "linear warm-up steps; 0 = none", valid=at_least(0, "an integer >= 0"))
    step_size: int = option(1000, "step schedule: steps between decays", valid=at_least(1, "an integer >= 1"))
    first_decay_step: Optional[int] = option(None, "step schedule: the first decay; null = step_size",
                                             valid=at_least(1, "null (= optim.step_size) or an integer >= 1"))
    gamma: float = option(0.1, "factor of each decay (step and plateau schedules)",
                          valid=(lambda v: v > 0, "a number > 0"))
    patience: int = option(0, "plateau schedule: validations without improvement before a decay",
                           valid=at_least(0, "an integer >= 0"))


@dataclass
class ModelConfig:
    """``model``: how the model is sized."""

    param_budget: Optional[int] = option(
        None, "choose cell.hidden_size so the whole model has about this many trainable parameters (a comparison "
              "at matched size); null keeps cell.hidden_size", valid=at_least(1, "null or an integer >= 1"))


@dataclass
class LoggerConfig:
    """``logger``: where metrics go besides ``metrics.csv`` (always written: the report reads it)."""

    name: Literal["csv", "tensorboard", "mlflow"] = option("csv", "csv only; tensorboard / mlflow add a logger")
    tracking_uri: Optional[str] = option(None, "mlflow: null = a file store in the run directory (mlruns/)")
    experiment_name: str = option("rnnbench", "mlflow experiment / tensorboard folder name")


@dataclass
class RunConfig:
    """The top-level keys (the groups are checked by their own dataclasses)."""

    cell: dict = option(help="the cell preset (conf/cell)")
    task: dict = option(help="the task preset (conf/task)")
    trainer: dict = option(help="see TrainerConfig")
    optim: dict = option(help="see OptimConfig")
    seed: int = option(0, "one knob for a statistics sweep (seed=0,1,2); 0 is a valid seed",
                       valid=at_least(0, "an integer >= 0"))
    data_seed: int = option("${seed}", "validation/test sets and the training stream; separate so that data can "
                                       "stay fixed while the initialisation varies",
                            valid=at_least(0, "an integer >= 0"))
    init_seed: int = option("${seed}", "parameter initialisation (and dropout masks)",
                            valid=at_least(0, "an integer >= 0"))
    model: dict = option(factory=dict, help="see ModelConfig")
    logger: dict = option(factory=dict, help="see LoggerConfig")
    plugins: list[str] = option(factory=list, help="your own Python files that register cells/tasks")
    results_dir: str = option("${oc.env:RNNBENCH_RESULTS_DIR,results}",
                              "root of all run directories, relative to where you launch (the report reads it)")
    resume: bool = option(True, "skip a config that already finished, resume one that was killed")
    force: bool = option(False, "run every job again into a new run directory")
    diagnostics: bool = option(False, "record gradient norms through time and gate statistics after training")
    tuning: Optional[str] = option(None, "a tuned.yaml written by a tuning sweep: its settings for this cell "
                                         "preset and task preset are applied (rnnbench.tuning)")
    deviations: list[str] = option(factory=list, help="where a paper preset differs from its authors' setup")
    stage: Optional[str] = option(None, "the stage of a comparison protocol this run belongs to (tune, horizon); "
                                        "set by the protocol's sweepers, null for a plain run")


GROUPS = {"trainer": TrainerConfig, "optim": OptimConfig, "model": ModelConfig, "logger": LoggerConfig}


def defaults(schema: type, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The defaults of a config dataclass as a plain dict (fields without a default left out)."""
    values = {}
    for f in dataclasses.fields(schema):
        if f.name in skip:
            continue
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
    return values


def with_defaults(config: dict) -> dict:
    """``config`` with every core key it lacks set to its default: a run folder's
    ``config.yaml`` from an older rnnbench (before ``logger`` or ``tuning`` existed)."""
    filled = {**defaults(RunConfig, skip=tuple(GROUPS)), **config}
    for group, schema in GROUPS.items():
        filled[group] = {**defaults(schema), **(config.get(group) or {})}
    return filled


def register_defaults() -> None:
    """Put the defaults into Hydra's ConfigStore: every group's as ``<group>/base``, the
    top-level keys as ``top_level`` (``conf/config.yaml`` starts from it)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for group, schema in GROUPS.items():
        store.store(group=group, name="base", node=defaults(schema))
    store.store(name="top_level", node=defaults(RunConfig, skip=("cell", "task", *GROUPS)))


# --- validation -----------------------------------------------------------------------------
def check_group(values: dict, schema: type, prefix: str) -> None:
    """Missing keys, unknown keys, wrong types and values out of range of one group."""
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    where = f"{prefix}." if prefix else ""
    # Every key is required: the ConfigStore's base node gives each one its default, so a
    # missing key was removed on purpose (~trainer.max_steps) and would fall back silently
    # to a library's own default.
    missing = [k for k in fields if k not in values]
    if missing:
        raise ConfigError(f"missing config key(s) {', '.join(where + k for k in missing)}; "
                          f"set them (e.g. {where}{missing[0]}=...) or restore them in your YAML.")
    unknown = sorted(set(values) - set(fields))
    if unknown:
        kind = f"{prefix} key" if prefix else "top-level key"
        raise ConfigError(f"unknown {kind}(s) {', '.join(unknown)}; known keys: {', '.join(sorted(fields))}. "
                          f"Check the spelling (`rnnbench --cfg job` shows the composed config).")
    for key, value in values.items():
        check_type(where + key, value, hints[key])
        valid = fields[key].metadata["valid"]
        if valid is not None and not valid[0](value):
            raise ConfigError(f"{where}{key}={value!r} is invalid: expected {valid[1]}.")


def validate(config: dict) -> None:
    """Every core group and top-level key of a resolved config (plugins' options are
    checked against their constructors when the experiment is built)."""
    check_group(config, RunConfig, "")
    for group, schema in GROUPS.items():
        check_group(config.get(group) or {}, schema, group)
    optim = config["optim"]
    # A warm-up is a per-step schedule; the plateau schedule changes the learning rate by
    # itself after validations, and the two cannot drive one optimiser.
    if optim.get("schedule") == "plateau" and optim.get("warmup_steps"):
        raise ConfigError(f"optim.warmup_steps={optim['warmup_steps']} is invalid: expected 0 with "
                          f"optim.schedule=plateau (the plateau schedule has no warm-up).")
    check_hardware(config["trainer"])


def check_hardware(trainer: dict) -> None:
    """What the machine must offer for the ``trainer`` settings (GPUs, cores, a cluster launcher)."""
    import torch

    from . import distributed

    if trainer["num_nodes"] > 1 and not distributed.launched_externally():
        raise ConfigError(f"trainer.num_nodes={trainer['num_nodes']} needs a cluster launcher that starts one "
                          f"process per device on every node (SLURM with --ntasks-per-node, or torchrun); none is "
                          f"present, so the run would wait forever. Use trainer.num_nodes=1 here.")
    accelerator, devices = trainer["accelerator"], trainer["devices"]
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.accelerator={accelerator} but no CUDA GPU is visible to torch "
                              f"(torch {torch.__version__}). Use trainer=cpu or trainer=ddp_cpu.")
        if distributed.resolve_devices("gpu", devices) > torch.cuda.device_count():
            raise ConfigError(f"trainer.devices={devices!r} is invalid: expected at most the "
                              f"{torch.cuda.device_count()} visible GPU(s).")
    if accelerator == "cpu" and distributed.resolve_devices("cpu", devices) > (os.cpu_count() or 1):
        raise ConfigError(f"trainer.devices={devices!r} is invalid: expected at most the {os.cpu_count() or 1} "
                          f"CPU core(s) of this machine (one process each).")
    if distributed.resolve_devices(accelerator, devices) > 1 and trainer["strategy"] == "auto":
        raise ConfigError(f"trainer.devices={devices} with trainer.strategy=auto is not supported: rnnbench "
                          f"starts the extra processes itself with trainer.strategy=ddp (trainer=ddp or "
                          f"trainer=ddp_cpu).")


def describe_keys(group: Optional[str] = None) -> str:
    """Every key of the core groups with its type, default and help (``rnnbench keys``)."""
    from .value_types import describe

    lines = []
    schemas = {"": RunConfig, **GROUPS} if group is None else {group: GROUPS.get(group, RunConfig)}
    for prefix, schema in schemas.items():
        hints = typing.get_type_hints(schema)
        lines.append(f"{prefix or 'top-level'}:")
        for f in dataclasses.fields(schema):
            if prefix == "" and f.name in GROUPS or f.name in ("cell", "task"):
                continue
            default = defaults(schema).get(f.name, "(required)")
            lines.append(f"  {(prefix + '.' if prefix else '') + f.name:<26} {describe(hints[f.name]):<28} "
                         f"default {default!r}: {f.metadata['help']}")
    return "\n".join(lines)

