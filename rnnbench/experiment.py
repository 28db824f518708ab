"""From a resolved config to the objects of a run: validate, build the task, the cell
stacks and the model around them. Nothing is trained here.

Everything that can be checked is checked in :func:`build_experiment`, before any data
are generated or any step is taken, so bad input fails fast with a
:class:`~rnnbench.errors.ConfigError`. The same stack factory serves the speed
benchmark (:func:`build_stack`), and :func:`load_run` rebuilds a finished run's model
from its folder (sampling text, decoding, evaluating again).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from omegaconf import OmegaConf
from torch import nn

from . import config as config_schema
from .errors import ConfigError
from .models import count_parameters
from .registry import CELLS, TASKS, load_plugin_file
from .stack import POSITION_KEYS, STACK_KEYS, CellStack
from .task import Task
from .value_types import check_signature

CONFIG_FILE = "config.yaml"


@dataclass
class Experiment:
    """Everything built from a config before training starts."""

    config: dict
    task: Task
    model: nn.Module
    stacks: list[CellStack] = field(default_factory=list)  # every cell stack of the model, in build order

    @property
    def stack(self) -> CellStack:
        """The first cell stack (a translation model's encoder)."""
        return self.stacks[0]


def cell_options(cell_config: dict) -> dict[str, Any]:
    """The options of the cell class itself: every key of the cell config but the stack's."""
    return {k: v for k, v in cell_config.items() if k not in STACK_KEYS}


def build_stack(cell_config: dict, input_size: int, task: Optional[Task] = None,
                bidirectional: Optional[bool] = None, hidden_size: Optional[int] = None) -> CellStack:
    """The cell stack a cell config describes (``bidirectional``/``hidden_size`` override the
    config, e.g. for a decoder that must run one way); options that depend on the task are
    resolved by the cell class (:meth:`rnnbench.cell.Cell.resolve_options`)."""
    cell_class = CELLS.get(cell_config["name"])
    options = cell_class.resolve_options(cell_options(cell_config), task)
    return CellStack(cell_class, input_size, cell_config["hidden_size"] if hidden_size is None else hidden_size,
                     num_layers=cell_config["num_layers"],
                     bidirectional=cell_config["bidirectional"] if bidirectional is None else bidirectional,
                     dropout=cell_config["dropout"], **options)


def check_plugin_options(config: dict) -> tuple[type, type]:
    """The cell and task classes the config names, with its options checked against their
    constructors (unknown keys, wrong types)."""
    cell_config, task_config = config["cell"], config["task"]
    cell_class = CELLS.get(cell_config["name"])
    task_class = TASKS.get(task_config["name"])
    check_signature(cell_class, cell_options(cell_config), ("input_size", "hidden_size", *POSITION_KEYS), "cell",
                    f"cell {cell_config['name']!r}")
    check_signature(CellStack, {k: cell_config.get(k) for k in STACK_KEYS if k != "name"}, ("cell_cls", "input_size"),
                    "cell", "the cell stack")
    check_signature(task_class, {k: v for k, v in task_config.items() if k != "name"}, (), "task",
                    f"task {task_config['name']!r}")
    if cell_config["bidirectional"] and task_class.causal:
        raise ConfigError(
            f"cell.bidirectional=true is not allowed with task {task_config['name']!r}: the task is causal "
            f"(each output may only depend on earlier inputs) and a bidirectional cell would see the future. "
            f"Use a unidirectional cell (e.g. cell=gru) or set cell.bidirectional=false.")
    return cell_class, task_class


def build_experiment(config: dict, task: Optional[Task] = None) -> Experiment:
    """Validate ``config`` (a resolved dict) and build task and model. No training.

    ``task``: one already built from ``config["task"]`` (e.g. with a trained run's
    vocabulary restored, to rebuild its model); by default it is built here. With
    ``model.param_budget`` the chosen ``cell.hidden_size`` is written into ``config``."""
    config_schema.validate(config)
    for path in config.get("plugins") or []:
        load_plugin_file(path)
    _, task_class = check_plugin_options(config)
    if task is None:
        task = task_class(**{k: v for k, v in config["task"].items() if k != "name"})

    def build(hidden_size: int) -> tuple[nn.Module, list[CellStack]]:
        stacks: list[CellStack] = []

        def make_stack(input_size: int, bidirectional: Optional[bool] = None) -> CellStack:
            stacks.append(build_stack(config["cell"], input_size, task, bidirectional, hidden_size))
            return stacks[-1]

        try:
            return task.build_model(make_stack), stacks
        except TypeError as exc:  # a cell option of the wrong type, found by the cell itself
            raise ConfigError(f"cell {config['cell']['name']!r} could not be built: {exc}") from exc

    budget = config["model"].get("param_budget")
    if budget is not None:
        config["cell"]["hidden_size"] = hidden_size_for_budget(lambda h: build(h)[0], budget)
    import pytorch_lightning as pl

    pl.seed_everything(config["init_seed"], workers=True, verbose=False)  # torch, numpy, random
    model, stacks = build(config["cell"]["hidden_size"])
    return Experiment(config=config, task=task, model=model, stacks=stacks)


def hidden_size_for_budget(build: Callable[[int], nn.Module], budget: int, largest: int = 1 << 16) -> int:
    """The hidden size whose whole model comes closest to ``budget`` trainable parameters.

    Models are built on the meta device (no memory, no init cost); the parameter
    count grows with the hidden size, so a bisection finds the largest size within
    the budget, and the next size up wins if it lands closer.
    """
    def params(hidden_size: int) -> int:
        with torch.device("meta"):
            return count_parameters(build(hidden_size))

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


def load_run(run_dir: str | Path, checkpoint: str = "best") -> Experiment:
    """A finished run's model, rebuilt on the CPU from ``config.yaml`` (the task restores what
    it saved, e.g. a vocabulary: :meth:`Task.load_artifacts`; no corpus is read for that), with
    the weights of ``checkpoints/<checkpoint>.ckpt`` (else the other of best / last), in eval mode."""
    from .checkpoints import read_checkpoint

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise ConfigError(f"{run_dir} has no {CONFIG_FILE}: give the directory of an rnnbench run.")
    config = config_schema.with_defaults(OmegaConf.to_container(OmegaConf.load(run_dir / CONFIG_FILE), resolve=True))
    # Rebuild on this machine's CPU, whatever the run trained on.
    config["trainer"] = {**config["trainer"], "accelerator": "cpu", "devices": 1, "strategy": "auto", "num_nodes": 1}
    config_schema.validate(config)
    for path in config.get("plugins") or []:
        load_plugin_file(path)
    _, task_class = check_plugin_options(config)
    task = task_class(**{k: v for k, v in config["task"].items() if k != "name"})
    task.load_artifacts(run_dir)
    experiment = build_experiment(config, task=task)
    names = [checkpoint, "last" if checkpoint == "best" else "best"]
    found = next((run_dir / "checkpoints" / f"{n}.ckpt" for n in names
                  if (run_dir / "checkpoints" / f"{n}.ckpt").is_file()), None)
    if found is None:
        raise ConfigError(f"{run_dir} has no checkpoints/best.ckpt or last.ckpt (was it run with "
                          f"trainer.checkpoint=false?).")
    weights = read_checkpoint(found)["state_dict"]
    experiment.model.load_state_dict({k[len("model."):]: v for k, v in weights.items() if k.startswith("model.")})
    experiment.model.eval()
    return experiment
