"""Tuned settings: a ``tuned.yaml`` written by a tuning sweep holds, per cell preset and task
preset, the settings chosen on validation (e.g. ``optim.lr``) and the trials behind them.
``tuning=path/to/tuned.yaml`` applies them to every run of a later sweep, and the run
record's ``protocol`` says what was tuned, over what range, with what budget, and where
the values came from.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


def read(path: str | Path) -> dict[str, Any]:
    """A tuned.yaml (``protocol`` and ``settings``); ``ConfigError`` naming the file if it is not one.
    Parsed once per file version (a sweep's worker applies the same file to every job)."""
    path = Path(path)
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        stamp = None  # _parse reports the missing file
    return copy.deepcopy(_parse(path, stamp))


@functools.lru_cache(maxsize=8)
def _parse(path: Path, stamp: int | None) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"tuning={str(path)!r} cannot be read ({type(exc).__name__}: {exc}). Give the tuned.yaml "
                          f"a tuning sweep wrote (rnnbench experiment=tune ...).") from exc
    if not isinstance(data, dict) or not isinstance(data.get("settings"), dict):
        raise ConfigError(f"tuning={str(path)!r} is not a tuned.yaml: it has no 'settings' mapping.")
    return data


def chosen_settings(config: dict, presets: dict) -> tuple[str, dict[str, Any]]:
    """The tuning file's entry for the run's cell preset and task preset: ``(path, entry)``;
    the entry holds ``values`` (config key -> value) and the ``trials`` they were chosen from."""
    path = config["tuning"]
    data = read(path)
    cell, task = presets.get("cell", config["cell"]["name"]), presets.get("task", config["task"]["name"])
    chosen = (data["settings"].get(cell) or {}).get(task)
    if not chosen:
        known = ", ".join(f"{c} on {t}" for c, tasks in data["settings"].items() for t in tasks)
        raise ConfigError(f"tuning={path!r} has no settings for cell preset {cell!r} on task preset {task!r}; "
                          f"it has: {known or 'none'}. Tune this pair first, or leave tuning=null.")
    return path, {**chosen, "search": data.get("protocol", {})}


def apply(config: dict, presets: dict) -> dict:
    """``config`` with the tuned settings of its cell preset and task preset set (a copy);
    unchanged when ``config["tuning"]`` is null."""
    if not config.get("tuning"):
        return config
    path, chosen = chosen_settings(config, presets)
    config = copy.deepcopy(config)
    for key, value in chosen["values"].items():
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            raise ConfigError(f"tuning={path!r} sets {key}, which is not a config key.")
        node[leaf] = value
    return config


def provenance(config: dict, presets: dict) -> dict[str, Any]:
    """What the record's ``protocol`` says about tuning: the file, the values applied to this
    run, the search that chose them (keys, ranges, budget, seeds, length) and its trials."""
    if not config.get("tuning"):
        return {}
    path, chosen = chosen_settings(config, presets)
    return {"tuning": {"file": str(Path(path).resolve()), **chosen}}
