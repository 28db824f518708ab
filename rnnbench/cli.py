"""Command line: ``rnnbench [-m] key=value ...`` or ``rnnbench list|keys|table|generate ...``.

``rnnbench cell=gru task=adding task.seq_len=100`` trains one run; ``-m`` with
comma lists sweeps (``rnnbench -m cell=gru,lstm task=copy,adding seed=0,1``).
Configs are composed by Hydra from the packaged ``rnnbench.conf``; see
``rnnbench --help`` for the groups and ``rnnbench --cfg job`` for the result.

``rnnbench list`` shows the registered cells and tasks and the config presets;
``rnnbench keys [GROUP]`` every core config key with its type, default and reason;
``rnnbench table [RESULTS_DIR]`` prints a table of the run records found there;
``rnnbench generate RUN_DIR [--prompt ...]`` samples text from a language-model run.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from . import config as config_schema
from . import slurm_launcher, store, sweep
from .errors import ConfigError
from .presets import check_group_choices, config_search_path, precheck, preset_files
from .record import RunRecord

log = logging.getLogger("rnnbench")

SUBCOMMANDS = ("list", "keys", "table", "generate")


def error(message: str) -> None:
    print(f"rnnbench: error: {message}", file=sys.stderr)


def refused_record(run_dir: Path, cfg: DictConfig, error: str, presets: dict, status: str = "failed") -> RunRecord:
    """In a sweep, a job that did not run (bad input; a cluster job that never started)
    still leaves a record saying why."""
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an interpolation error is itself the bad input
        config = None
    record = RunRecord(run_dir=str(run_dir), status=status, error=error,
                       cell=OmegaConf.select(cfg, "cell.name"), task=OmegaConf.select(cfg, "task.name"),
                       cell_preset=presets.get("cell"), task_preset=presets.get("task"),
                       seed=OmegaConf.select(cfg, "seed"), config=config)
    run_dir.mkdir(parents=True, exist_ok=True)
    record.write(run_dir)
    return record


@hydra.main(version_base="1.3", config_path="pkg://rnnbench.conf", config_name="config")
def hydra_app(cfg: DictConfig):
    """Hydra task function: one job of a run or a sweep. Returns what a sweeper needs to
    decide on the next jobs: the record's status, primary metric, test score and solved."""
    from .run import run_job  # heavy imports only once a job really runs

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    sweeping = hydra_cfg.mode == RunMode.MULTIRUN
    presets = dict(hydra_cfg.runtime.choices)
    try:
        result = run_job(cfg, run_dir, presets=presets)
    except ConfigError as exc:
        if not sweeping:
            store.remove_if_only_hydra_files(run_dir)
            error(str(exc))
            sys.exit(2)
        log.error("job %s not run: %s", hydra_cfg.job.num, exc)
        record = refused_record(run_dir, cfg, f"ConfigError: {exc}", presets)
        sweep.job_done(Path(hydra_cfg.sweep.dir), str(hydra_cfg.job.num), record.status)
        return job_summary(record)
    except Exception as exc:
        if not sweeping:
            raise
        log.exception("job %s failed (recorded in %s); the sweep goes on", hydra_cfg.job.num, run_dir)
        sweep.job_done(Path(hydra_cfg.sweep.dir), str(hydra_cfg.job.num), "failed")
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    record = result.record
    used_dir = Path(record.run_dir)
    log.info("%s on %s: status=%s %s=%s solved=%s steps=%s record=%s%s",
             record.cell_preset or record.cell, record.task_preset or record.task, record.status, record.metric,
             record.test_score, record.solved, record.steps, used_dir / "summary.json",
             f" ({result.reused}: already run)" if result.reused == "skipped" else "")
    if used_dir.resolve() != run_dir.resolve():  # skipped, or resumed in the earlier run's directory
        if sweeping:  # the sweep's table and report follow this pointer: a restarted sweep reports every job
            store.write_reused_pointer(run_dir, used_dir, skipped=result.reused == "skipped")
        else:
            store.remove_if_only_hydra_files(run_dir)
    if sweeping:
        sweep.job_done(Path(hydra_cfg.sweep.dir), str(hydra_cfg.job.num), record.status)
    return job_summary(record)


def job_summary(record: RunRecord) -> dict:
    """A job's return value for Hydra sweepers (plain values, picklable across processes)."""
    return {"status": record.status, "cell_preset": record.cell_preset, "task_preset": record.task_preset,
            "metric": record.metric, "metric_mode": record.metric_mode, "test": record.test_score,
            "solved": record.solved,
            "val_best": (record.metrics.get("val_best") or {}).get(record.metric) if record.metric else None,
            "steps_to_solve": record.steps_to_solve, "run_dir": record.run_dir, "error": record.error}


def list_registered() -> None:
    """Print registered cells and tasks (installed plugins are listed, not imported)."""
    from .registry import CELLS, TASKS

    search_path = config_search_path()
    for registry, group in ((CELLS, "cell"), (TASKS, "task")):
        plugins = registry.entry_points()
        print(f"{registry.kind}s:")
        for name in registry.names():
            if name in plugins and not registry.is_loaded(name):
                dist = getattr(plugins[name].dist, "name", "?")
                origin = f"plugin from {dist} ({plugins[name].value}), not imported"
            else:
                origin = registry.get(name).__module__
            print(f"  {name:<16} {origin}")
        print(f"  config presets ({group}=...): {', '.join(sorted(preset_files(group, search_path)))}")
    for group in ("trainer", "optim", "logger", "experiment"):
        print(f"{group} presets ({group}=...): {', '.join(sorted(preset_files(group, search_path))) or '(none)'}")


def generate(argv: list[str]) -> None:
    """``rnnbench generate RUN_DIR``: sample text from a trained run of a task that generates text."""
    import argparse

    from .experiment import load_run
    from .task import seeded_generator

    parser = argparse.ArgumentParser(prog="rnnbench generate",
                                     description="Sample text from a trained language-model run (task=lm).")
    parser.add_argument("run_dir", help="the run's directory (holds config.yaml, vocab.json, checkpoints/)")
    parser.add_argument("--prompt", default="", help="text to start from (default: none)")
    parser.add_argument("--length", type=int, default=200, help="tokens to sample (default: 200)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="divides the logits: below 1 is more conservative (default: 1.0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling (default: 0)")
    args = parser.parse_args(argv)
    experiment = load_run(args.run_dir)
    print(experiment.task.generate(experiment.model, args.prompt, args.length, args.temperature,
                                   seeded_generator(args.seed)))


def table(argv: list[str]) -> None:
    from .report.frame import summary_table
    from .store import load_records

    root = Path(argv[0] if argv else "results")
    records = load_records(root)
    print(summary_table(records) if records else f"no run records under {root}")


def main(argv: list[str] | None = None) -> None:
    """Console script ``rnnbench``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SUBCOMMANDS:
        command, rest = argv[0], argv[1:]
        try:
            if command == "list":
                list_registered()
            elif command == "keys":
                print(config_schema.describe_keys(rest[0] if rest else None))
            elif command == "generate":
                generate(rest)
            else:
                table(rest)
        except ConfigError as exc:
            error(str(exc))
            sys.exit(2)
        return
    search_path = config_search_path()
    try:
        check_group_choices([a for a in argv if not a.startswith("-")], search_path)
        slurm_launcher.check_installed(argv)
        precheck(argv, search_path)
    except ConfigError as exc:
        error(str(exc))
        sys.exit(2)
    if search_path and not any(a.startswith("hydra.searchpath=") for a in argv):
        argv = [*argv, f"hydra.searchpath=[{','.join(search_path)}]"]
    sys.argv = [sys.argv[0], *argv]
    hydra_app()
