"""Every experiment preset composes and every run of its sweep is valid (built, not
trained); the launcher presets compose; the README's main job names a real preset."""

from __future__ import annotations

import itertools
from importlib.resources import files
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config
from rnnbench.experiment import build_experiment

EXPERIMENTS = sorted(p.name[:-5] for p in files("rnnbench.conf").joinpath("experiment").iterdir()
                     if p.name.endswith(".yaml"))
README = Path(__file__).resolve().parent.parent / "README.md"


def _compose(overrides: list[str]):
    return compose_config(overrides, resolved=False, hydra=True)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_sweep_combination_of_an_experiment_is_valid(experiment):
    cfg = _compose([f"experiment={experiment}"])
    params = {k: str(v).split(",") for k, v in (cfg.hydra.sweeper.params or {}).items()}
    # Every cell and task choice; the sweep's other axes at their longest value.
    axes = {k: v if k in ("cell", "task") else [v[-1]] for k, v in params.items()}
    # Without a GPU here, GPU experiments are validated on the CPU (everything else unchanged).
    device = [] if torch.cuda.is_available() or cfg.trainer.accelerator == "cpu" else ["trainer.accelerator=cpu"]
    for values in itertools.product(*axes.values()):
        overrides = [f"experiment={experiment}", *(f"{k}={v}" for k, v in zip(axes, values)), *device]
        config = OmegaConf.to_container(_compose(overrides), resolve=False)
        config.pop("hydra")
        config = OmegaConf.to_container(OmegaConf.create(config), resolve=True)
        build_experiment(config)  # raises ConfigError on any bad key or value


def test_readme_main_job_is_an_experiment_preset():
    first_block = README.read_text(encoding="utf-8").split("```bash\n", 1)[1].split("```", 1)[0]
    command = first_block.strip().split(" && ")[-1]
    assert command.startswith("rnnbench experiment=")
    assert command.split("=", 1)[1] in EXPERIMENTS


def test_long_range_quick_covers_every_cell_and_fits_two_cores():
    cfg = _compose(["experiment=long_range_quick"])
    params = cfg.hydra.sweeper.params
    assert set(params.cell.split(",")) == {"gru", "bigru", "stacked_gru", "lstm", "rnn", "indrnn", "sru"}
    assert set(params.task.split(",")) == {"adding", "copy_small"} and len(params.seed.split(",")) == 3
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert cfg.hydra.launcher.n_jobs * cfg.trainer.threads <= 2
    assert cfg.hydra.callbacks.sweep.report is True


def test_slurm_launcher_follows_the_trainer():
    cfg = _compose(["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"])
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    root = OmegaConf.create({"trainer": OmegaConf.to_container(cfg.trainer), "hydra": {"launcher": launcher}})
    assert root.hydra.launcher.nodes == 2 and root.hydra.launcher.tasks_per_node == 4
    assert launcher["_target_"].endswith("SlurmLauncher")
