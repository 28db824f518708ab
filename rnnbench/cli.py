"""Command line: ``rnnbench [list|table] ...`` or ``rnnbench [-m] key=value ...``.

``rnnbench cell=gru task=adding task.seq_len=100`` trains one run; ``-m`` with
comma lists sweeps (``rnnbench -m cell=gru,lstm task=copy,adding seed=0,1``).
Configs are composed by Hydra from the packaged ``rnnbench.conf``; see
``rnnbench --help`` for the groups and ``rnnbench --cfg job`` for the result.

``rnnbench list`` shows the registered cells and tasks and the config presets;
``rnnbench table [RESULTS_DIR]`` prints a table of the run records found there;
``rnnbench generate RUN_DIR [--prompt ...]`` samples text from a language-model run.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from . import records
from .errors import ConfigError

log = logging.getLogger("rnnbench")

SUBCOMMANDS = ("list", "table", "generate")
_sweep_failures: list[str] = []


def _error(message: str) -> None:
    print(f"rnnbench: error: {message}", file=sys.stderr)


def _record_config_error(run_dir: Path, cfg: DictConfig, exc: ConfigError) -> None:
    """In a sweep, a job with bad input still leaves a record saying why it did not run."""
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an interpolation error is itself the bad input
        config = None
    run_dir.mkdir(parents=True, exist_ok=True)
    records.write_json_atomic(run_dir / records.SUMMARY_FILE, {
        "record_version": records.RECORD_VERSION, "run_dir": str(run_dir),
        "cell": OmegaConf.select(cfg, "cell.name"), "task": OmegaConf.select(cfg, "task.name"),
        "seed": OmegaConf.select(cfg, "seed"), "status": "failed", "error": f"ConfigError: {exc}",
        "config": config,
    })


def _remove_if_only_hydra_files(run_dir: Path) -> None:
    """A run refused before it started leaves no empty run directory behind."""
    import shutil

    if run_dir.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in run_dir.iterdir()):
        logging.shutdown()  # release Hydra's log file handle
        shutil.rmtree(run_dir, ignore_errors=True)


@hydra.main(version_base="1.3", config_path="pkg://rnnbench.conf", config_name="config")
def hydra_app(cfg: DictConfig):
    """Hydra task function: one job of a run or a sweep."""
    from .run import run_job  # heavy imports only once a job really runs

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    sweeping = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        record = run_job(cfg, run_dir, presets=dict(hydra_cfg.runtime.choices))
    except ConfigError as exc:
        if not sweeping:
            _remove_if_only_hydra_files(run_dir)
            _error(str(exc))
            sys.exit(2)
        log.error("job %s not run: %s", hydra_cfg.job.num, exc)
        _record_config_error(run_dir, cfg, exc)
        return None
    except Exception as exc:
        if not sweeping:
            raise
        log.exception("job %s failed (recorded in %s); the sweep goes on", hydra_cfg.job.num, run_dir)
        return None
    test = (record.get("metrics") or {}).get("test") or {}
    metric = record.get("metric")
    used_dir = Path(record["run_dir"])
    log.info("%s on %s: status=%s %s=%s solved=%s steps=%s record=%s%s",
             record.get("cell_preset") or record["cell"], record.get("task_preset") or record["task"],
             record["status"], metric, test.get(metric), record.get("solved"), record.get("steps"),
             used_dir / records.SUMMARY_FILE, " (skipped: already run)" if record.get("skipped") else "")
    if used_dir.resolve() != run_dir.resolve():  # skipped, or resumed in the earlier run's directory
        if sweeping:  # the sweep's table and report follow this pointer: a restarted sweep reports every job
            records.write_json_atomic(run_dir / records.REUSED_FILE,
                                      {"run_dir": str(used_dir), "skipped": bool(record.get("skipped"))})
        else:
            _remove_if_only_hydra_files(run_dir)
    return test.get(metric)


class SweepTable(Callback):
    """Hydra callback: at the end of a sweep, print one table of its run records."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from .analysis import load_records, summary_table

        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():  # a job folder with nothing but Hydra's files holds no result
            for job_dir in sweep_dir.iterdir():
                if job_dir.is_dir() and not (job_dir / records.SUMMARY_FILE).exists():
                    _remove_if_only_hydra_files(job_dir)
        frame = load_records(sweep_dir)
        if frame.empty:
            return
        print(f"\nrnnbench: {len(frame)} runs in {sweep_dir}\n")
        print(summary_table(frame))
        bad = frame[~frame["status"].isin(["finished", "diverged"])]
        _sweep_failures.extend(bad["run_dir"].astype(str))


def list_registered() -> None:
    """Print registered cells and tasks (installed plugins are listed, not imported)."""
    from importlib.resources import files

    from .registry import CELLS, TASKS

    conf = files("rnnbench.conf")
    for registry, group in ((CELLS, "cell"), (TASKS, "task")):
        plugins = registry.entry_points()
        print(f"{registry.kind}s:")
        for name in registry.names():
            if name in plugins and name not in registry._classes:
                dist = getattr(plugins[name].dist, "name", "?")
                origin = f"plugin from {dist} ({plugins[name].value}), not imported"
            else:
                origin = registry.get(name).__module__
            print(f"  {name:<16} {origin}")
        presets = sorted(p.name[:-5] for p in conf.joinpath(group).iterdir() if p.name.endswith(".yaml"))
        print(f"  config presets ({group}=...): {', '.join(presets)}")
    for group in ("trainer", "optim", "experiment"):
        presets = sorted(p.name[:-5] for p in conf.joinpath(group).iterdir() if p.name.endswith(".yaml"))
        print(f"{group} presets ({group}=...): {', '.join(presets) or '(none)'}")


def config_search_path() -> list[str]:
    """Extra config folders for Hydra, as ``file://`` entries.

    - ``RNNBENCH_CONFIG_PATH``: folders separated by ``os.pathsep``, each holding
      ``cell/``, ``task/`` ... subfolders of YAML presets;
    - installed plugins' ``rnnbench.conf`` entry points, each naming a package
      folder laid out the same way. The folder is located without importing the
      plugin, so a broken plugin cannot break the command line.
    """
    import importlib.util
    import os
    from importlib.metadata import entry_points

    paths = [Path(p).resolve() for p in os.environ.get("RNNBENCH_CONFIG_PATH", "").split(os.pathsep) if p]
    if os.environ.get("RNNBENCH_NO_PLUGINS", "").strip() in ("", "0"):
        for ep in entry_points(group="rnnbench.conf"):
            top, *rest = ep.value.split(".")
            spec = importlib.util.find_spec(top)
            if spec is None or not spec.submodule_search_locations:
                log.warning("ignoring config folder %r of plugin %r: package %r not found", ep.value,
                            getattr(ep.dist, "name", "?"), top)
                continue
            paths.append(Path(list(spec.submodule_search_locations)[0]).joinpath(*rest))
    return [f"file://{p}" for p in paths]


def preset_files(group: str, search_path: list[str]) -> dict[str, Path]:
    """The YAML presets of a config group by name: the packaged configs first, then the
    folders of ``search_path`` (see :func:`config_search_path`); the first of a name wins."""
    from importlib.resources import files

    folders = [Path(str(files("rnnbench.conf").joinpath(group)))]
    folders += [Path(entry[len("file://"):]) / group for entry in search_path]
    found: dict[str, Path] = {}
    for folder in folders:
        if folder.is_dir():
            for path in sorted(folder.glob("*.yaml")):
                found.setdefault(path.stem, path)
    return found


def check_group_choices(overrides: list[str], search_path: list[str]) -> None:
    """Refuse ``cell=NAME`` / ``task=NAME`` that name no preset, before Hydra does,
    with the closest match and the registered names (Hydra's own message only
    lists the YAML files)."""
    import difflib

    for override in overrides:
        group, sep, value = override.partition("=")
        if not sep or group not in ("cell", "task"):
            continue
        presets = preset_files(group, search_path)
        for name in value.split(","):
            name = name.strip()
            if name in presets or not name or name.startswith(("choice(", "range(", "glob(")):
                continue
            from .registry import CELLS, TASKS

            registry = CELLS if group == "cell" else TASKS
            if name in registry.entry_points():
                registry.get(name)  # a broken plugin is reported here, naming its distribution
            close = difflib.get_close_matches(name, sorted(presets), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"unknown {group} {name!r}.{hint} Known {group} presets: {', '.join(sorted(presets))}. "
                f"A registered {group} without a preset can be chosen with {group}.name={name} "
                f"(list everything with `rnnbench list`); your own presets go in a folder on "
                f"RNNBENCH_CONFIG_PATH as {group}/{name}.yaml."
            )


# Hydra options after which the next argument is the option's value, not an override.
HYDRA_VALUE_OPTIONS = ("-c", "--cfg", "-p", "--package")
# Hydra options that compose a different config or only print help: no pre-check.
HYDRA_OTHER_MODES = ("-h", "--help", "--hydra-help", "-i", "--info", "-cp", "--config-path", "-cn",
                     "--config-name", "-cd", "--config-dir", "-sc", "--shell-completion", "--version",
                     "--experimental-rerun")


def _one_line(exc: BaseException) -> str:
    """Hydra's and OmegaConf's multi-line messages (and their cause) as one line."""
    lines = [line.strip() for line in str(exc).splitlines()]
    cause = exc.__cause__
    if cause is not None and str(cause).splitlines():
        lines.append(f"({str(cause).splitlines()[0].strip()})")
    return " ".join(line for line in lines if line and not line.startswith(("full_key:", "object_type=")))


def precheck(argv: list[str], search_path: list[str]) -> None:
    """Compose the config of the first job as Hydra will, before Hydra creates any run
    directory, so that malformed overrides, unknown keys and broken interpolations give
    one ``rnnbench: error:`` line instead of Hydra's report; then check that the
    results directory can be written. Values are validated per job by ``run_job``."""
    from hydra import compose, initialize_config_module
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ValueType
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if any(a in HYDRA_OTHER_MODES for a in argv):
        return
    overrides, skip_next = [], False
    for arg in argv:
        if not skip_next and not arg.startswith("-"):
            overrides.append(arg)
        skip_next = arg in HYDRA_VALUE_OPTIONS
    try:
        first_job = []
        for override in OverridesParser.create().parse_overrides(overrides):
            if override.is_sweep_override() and not override.get_key_element().lstrip("+~").startswith("hydra."):
                if override.value_type == ValueType.GLOB_CHOICE_SWEEP:
                    return  # glob(...) needs Hydra's config loader: leave it all to Hydra
                value = next(iter(override.sweep_string_iterator()), None)
                first_job.append(override.input_line if value is None else f"{override.get_key_element()}={value}")
            else:
                first_job.append(override.input_line)
        if search_path:
            first_job.append(f"hydra.searchpath=[{','.join(search_path)}]")
        with initialize_config_module("rnnbench.conf", version_base="1.3"):
            cfg = compose("config", overrides=first_job)
        OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as exc:
        if "hydra:" in str(exc):  # ${hydra:...} resolves only inside a Hydra job
            return
        raise ConfigError(f"the command line cannot be composed into a config: {_one_line(exc)}") from exc
    if not any(a in ("-c", "--cfg") for a in argv):
        records.check_results_dir(cfg.results_dir)


def generate(argv: list[str]) -> None:
    """``rnnbench generate RUN_DIR``: sample text from a trained ``task=lm`` run."""
    import argparse

    parser = argparse.ArgumentParser(prog="rnnbench generate",
                                     description="Sample text from a trained language-model run (task=lm).")
    parser.add_argument("run_dir", help="the run's directory (holds config.yaml, vocab.json, checkpoints/)")
    parser.add_argument("--prompt", default="", help="text to start from (default: none)")
    parser.add_argument("--length", type=int, default=200, help="tokens to sample (default: 200)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="divides the logits: below 1 is more conservative (default: 1.0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling (default: 0)")
    args = parser.parse_args(argv)
    from .tasks.lm import generate_from_run

    print(generate_from_run(args.run_dir, args.prompt, args.length, args.temperature, args.seed))


def main(argv: list[str] | None = None) -> None:
    """Console script ``rnnbench``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SUBCOMMANDS:
        try:
            if argv[0] == "list":
                list_registered()
            elif argv[0] == "generate":
                generate(argv[1:])
            else:
                from .analysis import load_records, summary_table

                root = Path(argv[1] if len(argv) > 1 else "results")
                frame = load_records(root)
                print(summary_table(frame) if not frame.empty else f"no run records under {root}")
        except ConfigError as exc:
            _error(str(exc))
            sys.exit(2)
        return
    search_path = config_search_path()
    try:
        check_group_choices([a for a in argv if not a.startswith("-")], search_path)
        precheck(argv, search_path)
    except ConfigError as exc:
        _error(str(exc))
        sys.exit(2)
    if search_path and not any(a.startswith("hydra.searchpath=") for a in argv):
        argv = [*argv, f"hydra.searchpath=[{','.join(search_path)}]"]
    sys.argv = [sys.argv[0], *argv]
    hydra_app()
    if _sweep_failures:
        _error(f"{len(_sweep_failures)} run(s) of the sweep failed; see their summary.json: "
               + ", ".join(_sweep_failures))
        sys.exit(1)
