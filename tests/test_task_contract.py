"""The contract every registered task keeps, checked on each of them (a new task is
picked up here without editing this file, as cells are in test_cell_contract.py).

Each task is built from its packaged preset (``conf/task/<name>.yaml``) at a small size
(``SMALL``, for the keys the preset has). A task that needs corpus files not present
here is skipped with the reason; a task without a preset of its own name cannot be
built generically and is skipped too.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
from importlib.resources import files

import pytest
import torch
from omegaconf import OmegaConf

from helpers.cli import compose_config
from rnnbench.download import DataError
from rnnbench.evaluation import evaluate
from rnnbench.registry import TASKS
from rnnbench.run import build_experiment
from rnnbench.task import SyntheticTask, Task

NAMES = sorted(TASKS.names())
PRESETS = files("rnnbench.conf").joinpath("task")
# Small sizes, for the keys a preset has: every task trains and tests in milliseconds here.
SMALL = {"seq_len": 16, "max_test_len": 20, "batch_size": 8, "val_size": 32, "test_size": 32}
# Per-task settings where a preset's default data are not on this machine: MNIST is not in
# ../shared/data, Fashion-MNIST is (same IDX format); rows keep the test set quick.
LOCAL = {"seq_image": {"dataset": "fashion_mnist", "mode": "row", "train_subset": 256, "eval_batch_size": 2000}}


def preset(name: str) -> dict:
    path = PRESETS.joinpath(f"{name}.yaml")
    if not path.is_file():
        pytest.skip(f"task {name!r} has no preset conf/task/{name}.yaml to build it from")
    return OmegaConf.to_container(OmegaConf.load(str(path)))


@functools.lru_cache(maxsize=None)
def _experiment(name: str, **sizes):
    options = preset(name)
    overrides = [f"task={name}", "cell.hidden_size=8", "seed=0",
                 *(f"task.{k}={v}" for k, v in {**SMALL, **LOCAL.get(name, {}), **sizes}.items() if k in options)]
    try:
        return build_experiment(compose_config(overrides))
    except DataError as exc:  # a real corpus that is not on this machine
        pytest.skip(f"task {name!r} needs corpus files that are absent here: {exc}")


def experiment(name: str, **sizes):
    return _experiment(name, **sizes)


def same(a, b) -> bool:
    return all(torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(a, b))


def first(loader, count: int = 1) -> list:
    batches = iter(loader)
    return [next(batches) for _ in range(count)]


@pytest.mark.parametrize("name", NAMES)
def test_preset_lists_every_constructor_argument(name):
    options = preset(name)
    assert options.pop("name") == name
    signature = inspect.signature(TASKS.get(name).__init__)
    arguments = {k for k, p in signature.parameters.items()
                 if k != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    assert set(options) == arguments, f"preset keys {sorted(options)} != constructor arguments {sorted(arguments)}"


@pytest.mark.parametrize("name", NAMES)
def test_record_fields_are_json(name):
    task = experiment(name).task
    json.dumps(task.key_parameters(), allow_nan=False)
    json.dumps(task.baseline(), allow_nan=False)
    assert isinstance(task.causal, bool) and task.metric_mode in ("min", "max")
    if "seq_len" in preset(name):
        assert task.key_parameters()["seq_len"] == SMALL["seq_len"]  # the length a horizon search varies


@pytest.mark.parametrize("name", NAMES)
def test_training_stream_is_a_function_of_seed_rank_and_step(name):
    task = experiment(name).task
    run = first(task.train_dataloader(7, rank=0, world_size=2), 3)
    assert all(same(a, b) for a, b in zip(run, first(task.train_dataloader(7, rank=0, world_size=2), 3)))
    assert same(first(task.train_dataloader(7, rank=0, world_size=2, start_step=2))[0], run[2])  # resume
    assert not same(first(task.train_dataloader(7, rank=1, world_size=2))[0], run[0])  # DDP ranks differ
    if isinstance(task, SyntheticTask):  # a corpus is the same whatever the seed; generated data are not
        assert not same(run[0], run[1])
        assert not same(first(task.train_dataloader(8, rank=0, world_size=2))[0], run[0])


@pytest.mark.parametrize("name", NAMES)
def test_validation_and_test_sets_are_fixed_and_distinct(name):
    task = experiment(name).task
    val, test = list(task.val_dataloader(3)), list(task.test_dataloader(3))
    assert all(same(a, b) for a, b in zip(val, task.val_dataloader(3)))
    assert all(same(a, b) for a, b in zip(test, task.test_dataloader(3)))
    assert not all(same(a, b) for a, b in zip(val, test))
    train = first(task.train_dataloader(3))[0]
    assert not any(same(train, b) for b in val + test)


@pytest.mark.parametrize("name", NAMES)
def test_model_trains_and_reports_its_metric(name):
    exp = experiment(name)
    batch = first(exp.task.train_dataloader(0))[0]
    exp.model.train()
    loss, metrics = exp.task.loss_and_metrics(exp.model, batch)
    loss.backward()
    assert torch.isfinite(loss) and exp.task.count_tokens(batch) > 0
    exp.task.eval_epoch_start("val")
    exp.model.eval()
    with torch.no_grad():
        _, metrics = exp.task.loss_and_metrics(exp.model, first(exp.task.val_dataloader(0))[0])
    means = {k: float(v) for k, v in metrics.items()}
    assert exp.task.metric in {**means, **exp.task.eval_epoch_end("val", means)}


@pytest.mark.parametrize("name", NAMES)
def test_diagnostic_batch_and_events(name):
    task = experiment(name).task
    batch = task.diagnostic_batch(0, 4)
    events = task.event_positions(batch)
    if events is not None:
        steps = batch[0].shape[1]
        assert events.shape == (len(batch[0]),) and events.dtype == torch.long
        assert bool(((events >= 0) & (events < steps)).all())


# Sequences the simulated memoryless baselines are scored on: enough that an accuracy is
# known to about +-0.005 and an MSE to about +-0.004.
SIMULATION = {"test_size": 4000}
TOLERANCE = {"default": 0.02, "loss": 0.02}  # absolute; the baselines are exact, the simulation is not


# Tasks whose baseline is a closed formula declare the model that scores it; the data-driven
# baselines (lm, music, seq_image, translation) are counted from the data in their own tests.
WITH_MEMORYLESS_MODEL = [n for n in NAMES if TASKS.get(n).memoryless_model is not Task.memoryless_model]


@pytest.mark.parametrize("name", WITH_MEMORYLESS_MODEL)
def test_memoryless_model_scores_the_baseline(name):
    task = experiment(name, **SIMULATION).task
    model = task.memoryless_model()
    assert sum(p.numel() for p in model.parameters()) == 0  # nothing learnt: it reads no input
    measured = evaluate(task, model, task.test_dataloader(5))
    baseline = task.baseline()
    shared = set(baseline) & set(measured)
    assert task.metric in shared
    for key in shared:
        tolerance = TOLERANCE.get(key, TOLERANCE["default"])
        assert math.isclose(measured[key], baseline[key], abs_tol=tolerance), \
            f"{name}: {key} simulated {measured[key]:.4f}, formula {baseline[key]:.4f}"
    assert not task.is_solved(measured)

