"""Config presets and the checks made before Hydra starts a run: where presets are found
(the packaged configs, ``RNNBENCH_CONFIG_PATH``, installed plugins' config folders), a
clear error for a preset that does not exist, and the composition of the first job so
that a malformed command line fails with one line before any run directory exists.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import OmegaConf

from .errors import ConfigError
from .files import check_results_dir

log = logging.getLogger("rnnbench")


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
        check_results_dir(cfg.results_dir)
