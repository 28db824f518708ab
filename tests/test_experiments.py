"""Every experiment preset composes and every run of its sweep is valid (built, not
trained); the launcher presets compose; the README's main job names a real preset."""

from __future__ import annotations

import itertools
from importlib.resources import files
from pathlib import Path

import pytest
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf

from helpers.cli import compose_config, composer
from rnnbench.experiment import build_experiment

EXPERIMENTS = sorted(p.name[:-5] for p in files("rnnbench.conf").joinpath("experiment").iterdir()
                     if p.name.endswith(".yaml"))
README = Path(__file__).resolve().parent.parent / "README.md"


def _compose(overrides: list[str]):
    return compose_config(overrides, resolved=False, hydra=True)


def _sweep_jobs(experiment: str, every_combination: bool):
    """The sweep's jobs to validate: every cell and task choice (each at least once, or in
    every combination); the sweep's other axes at their longest value."""
    cfg = _compose([f"experiment={experiment}"])
    for name, callback in cfg.hydra.callbacks.items():  # a stale _target_ would only fail at the sweep's end
        assert callable(get_class(callback._target_)), name
    params = {k: str(v).split(",") for k, v in (cfg.hydra.sweeper.params or {}).items()}
    axes = {k: v if k in ("cell", "task") else [v[-1]] for k, v in params.items()}
    if every_combination:
        jobs = list(itertools.product(*axes.values()))
    else:
        longest = max(len(v) for v in axes.values()) if axes else 1
        jobs = [tuple(v[i % len(v)] for v in axes.values()) for i in range(longest)]
    # Without a GPU here, GPU experiments are validated on the CPU (everything else unchanged).
    device = [] if torch.cuda.is_available() or cfg.trainer.accelerator == "cpu" else ["trainer.accelerator=cpu"]
    return [[f"experiment={experiment}", *(f"{k}={v}" for k, v in zip(axes, values)), *device] for values in jobs]


def _validate(jobs: list[list[str]]) -> None:
    with composer() as compose:
        for overrides in jobs:
            config = OmegaConf.to_container(compose(overrides, resolved=False, hydra=True), resolve=False)
            config.pop("hydra")
            config = OmegaConf.to_container(OmegaConf.create(config), resolve=True)
            assert build_experiment(config).model is not None  # raises ConfigError on any bad key or value


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_cell_and_task_of_an_experiment_is_valid(experiment):
    _validate(_sweep_jobs(experiment, every_combination=False))


@pytest.mark.slow  # up to 40 composed configs per experiment (cell-task refusals show only in combination)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_sweep_combination_of_an_experiment_is_valid(experiment):
    _validate(_sweep_jobs(experiment, every_combination=True))


def test_readme_main_job_is_an_experiment_preset():
    first_block = README.read_text(encoding="utf-8").split("```bash\n", 1)[1].split("```", 1)[0]
    command = first_block.strip().split(" && ")[-1]
    assert command.startswith("rnnbench experiment=")
    assert command.split("=", 1)[1] in EXPERIMENTS


CELL_PRESETS = {p.name[:-5] for p in files("rnnbench.conf").joinpath("cell").iterdir() if p.name.endswith(".yaml")}
# Presets that are another preset with one paper's setting (not a cell of their own).
PAPER_VARIANTS = {"lstm_plain"}


@pytest.mark.parametrize("experiment", ["long_range_quick", "long_range"])
def test_main_jobs_run_the_protocol_on_every_cell_at_matched_size(experiment):
    cfg = _compose([f"experiment={experiment}"])
    params = cfg.hydra.sweeper.params
    assert set(params.cell.split(",")) == CELL_PRESETS - PAPER_VARIANTS
    assert set(params.task.split(",")) <= {"adding", "copy", "copy_small", "copy_quick"} and len(params.task.split(",")) == 2
    assert len(params.seed.split(",")) >= 3
    assert cfg.hydra.sweeper._target_.endswith("ProtocolSweeper")
    assert cfg.model.param_budget is not None  # size-matched by default
    tuning_seeds = set(cfg.hydra.sweeper.tune.seeds)
    assert tuning_seeds and not tuning_seeds & {int(s) for s in params.seed.split(",")}  # disjoint seeds
    assert cfg.hydra.sweeper.max_length >= 500  # the cap lets a cell that gets there reach T=500
    assert cfg.hydra.callbacks.sweep.report is True


def test_long_range_quick_fits_two_cores():
    cfg = _compose(["experiment=long_range_quick"])
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert cfg.hydra.launcher.n_jobs * cfg.trainer.threads <= 2


@pytest.mark.parametrize("experiment, sweeper", [("tune", "TuneSweeper"), ("horizon", "HorizonSweeper")])
def test_protocol_stages_are_reusable_recipes(experiment, sweeper):
    cfg = _compose([f"experiment={experiment}", "cell=gru"])
    assert cfg.hydra.sweeper._target_.endswith(sweeper)
    assert cfg.hydra.mode.name == "MULTIRUN"


def test_slurm_launcher_follows_the_trainer():
    cfg = _compose(["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"])
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    root = OmegaConf.create({"trainer": OmegaConf.to_container(cfg.trainer), "hydra": {"launcher": launcher}})
    assert root.hydra.launcher.nodes == 2 and root.hydra.launcher.tasks_per_node == 4
    assert launcher["_target_"].endswith("SlurmLauncher")


def test_suite_quick_runs_every_new_task_on_two_cells():
    cfg = _compose(["experiment=suite_quick"])
    tasks = {compose_config([f"task={preset}"])["task"]["name"] for preset in cfg.hydra.sweeper.params.task.split(",")}
    formal = {"parity_check", "even_pairs", "cycle_navigation", "modular_arithmetic", "reverse_string",
              "stack_manipulation", "duplicate_string", "bucket_sort"}
    assert tasks == {"selective_copy", "mqar", "music", "seq_image", *formal}
    assert len(cfg.hydra.sweeper.params.cell.split(",")) == 2
    assert cfg.hydra.launcher.n_jobs * cfg.trainer.threads <= 2
