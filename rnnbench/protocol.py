"""The comparison protocol as Hydra sweepers: tune every cell at an equal budget, then search
each cell's memory horizon, through whatever launcher is configured (sequential, joblib,
SLURM).

- ``hydra/sweeper=tune`` (:class:`TuneSweeper`): for each combination of the sweep's axes
  but the seed (e.g. every cell preset on every task preset), the same grid of settings
  (by default the learning rate on a log scale), at the same step budget, at the tuning
  seeds (disjoint from the evaluation seeds) and a tuning length T; the best validation
  score wins. Writes ``tuned.yaml`` (the chosen settings per cell and task preset, with
  every trial), which ``tuning=path/to/tuned.yaml`` applies to any later sweep.
- ``hydra/sweeper=horizon`` (:class:`HorizonSweeper`): every combination of the sweep's
  axes, seeds included, is one :class:`rnnbench.horizon.HorizonSearch` over ``task.seq_len``.
  All searches advance together, one launcher batch per round, so parallel launchers stay
  busy. A finished record of the same config is reused (the run is skipped), so an
  interrupted search continues where it stopped when the same command is run again.
- ``hydra/sweeper=protocol`` (:class:`ProtocolSweeper`): the two in one command (the main
  job), the horizon stage reading the tuning stage's ``tuned.yaml``.

Hydra loads sweepers from its ``hydra_plugins`` namespace only; the classes are declared
there by ``rnnbench/hydra_plugin_path/rnnbench_protocol.py`` (see :func:`register_with_hydra`).
"""

from __future__ import annotations

import itertools
import logging
import math
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf

from . import sweep
from .errors import ConfigError, check, is_int
from .files import write_text_atomic
from .horizon import HorizonSearch, HorizonSettings
from .record import ENDED

log = logging.getLogger("rnnbench")

TUNED_FILE = "tuned.yaml"
HORIZON_FILE = "horizon.yaml"
SEED_KEY = "seed"

try:
    from hydra.plugins.sweeper import Sweeper
except ImportError:  # pragma: no cover - hydra is a dependency
    Sweeper = object


def register_with_hydra() -> None:
    """Put ``rnnbench/hydra_plugin_path`` on the ``hydra_plugins`` namespace, where Hydra looks
    for sweepers (an editable install cannot list a namespace package's modules, and a wheel
    of rnnbench installs no second top-level package: so the folder is added here, at import)."""
    import importlib
    import sys
    import types

    folder = str(Path(__file__).parent / "hydra_plugin_path")
    try:
        namespace = importlib.import_module("hydra_plugins")
    except ImportError:  # no Hydra plugin installed at all
        namespace = sys.modules.setdefault("hydra_plugins", types.ModuleType("hydra_plugins"))
        namespace.__path__ = []
    if folder not in list(namespace.__path__):
        namespace.__path__.append(folder)


def expand(arguments: list[str], params: Optional[dict] = None) -> tuple[list[str], dict[str, list[str]]]:
    """Split overrides (the command line's and ``params``) into fixed ones and sweep axes
    (``key -> ["key=value", ...]``), as Hydra's grammar reads them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = [*arguments, *(f"{k}={v}" for k, v in (params or {}).items())]
    fixed, axes = [], {}
    for override in OverridesParser.create().parse_overrides(lines):
        key = override.get_key_element()
        if override.is_sweep_override():
            axes[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            fixed.append(override.input_line)
    return fixed, axes


def combinations(axes: dict[str, list[str]]) -> list[list[str]]:
    """Every combination of the axes' values (the last axis varies fastest)."""
    return [list(values) for values in itertools.product(*axes.values())] if axes else [[]]


class ProtocolSweeperBase(Sweeper):
    """Launches batches of jobs through the configured launcher and reads their summaries."""

    def __init__(self, params: Optional[dict] = None):
        self.params = dict(params or {})
        self.config: Optional[DictConfig] = None
        self.launcher = None
        self.job_idx = 0

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    @property
    def sweep_dir(self) -> Path:
        return Path(self.config.hydra.sweep.dir)

    def launch(self, batch: list[list[str]]) -> list[dict[str, Any]]:
        """Run ``batch`` (one override list per job); each job's summary (``cli.job_summary``),
        ``{"status": "failed"}`` for a job that raised past rnnbench's own handling."""
        from hydra.core.utils import JobStatus

        if not batch:
            return []
        returns = self.launcher.launch(batch, initial_job_idx=self.job_idx)
        self.job_idx += len(batch)
        summaries = []
        for overrides, job in zip(batch, returns):
            ok = job.status == JobStatus.COMPLETED and isinstance(job._return_value, dict)
            summaries.append(job._return_value if ok else {"status": "failed", "overrides": overrides})
        return summaries

    def start_sweep(self) -> None:
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, self.sweep_dir / "multirun.yaml")


class TuneSweeper(ProtocolSweeperBase):
    """``hydra/sweeper=tune``: the same grid of settings for every cell (module docstring)."""

    def __init__(self, params: Optional[dict] = None, search: Optional[dict] = None, seeds=(100,),
                 length: Optional[int] = None):
        super().__init__(params)
        # name -> {key: a config key, low/high/points/log or values}; the name keeps overrides
        # simple (hydra.sweeper.search.lr.points=3), the key says what is tuned.
        self.search = {spec["key"]: grid_values(name, spec) for name, spec in (search or {}).items()}
        check(bool(self.search), "hydra.sweeper.search", search,
              "at least one setting to tune, e.g. {lr: {key: optim.lr, low: 1e-3, high: 3e-2, points: 4}}")
        self.seeds = [int(seed) for seed in seeds]
        self.length = length

    def sweep(self, arguments: list[str]) -> Any:
        self.start_sweep()
        path = self.tune(arguments, self.sweep_dir)
        log.info("tuned settings written to %s (apply them with tuning=%s)", path, path)
        return path

    def tune(self, arguments: list[str], out: Path) -> Path:
        """Run every trial of every group; write and return ``out/tuned.yaml``."""
        fixed, axes = expand(arguments, self.params)
        axes.pop(SEED_KEY, None)  # the tuning seeds are the tuner's own
        if self.length is not None:
            fixed = [o for o in fixed if not o.startswith("task.seq_len=")] + [f"task.seq_len={self.length}"]
        grid = combinations({key: [f"{key}={v}" for v in values] for key, values in self.search.items()})
        # Every trial runs its whole step budget (no stop when solved): the same steps for every
        # cell, and best validation scores that compare (an early-stopped trial would stop improving).
        fixed = [o for o in fixed if not o.startswith("trainer.stop_when_solved=")] + ["trainer.stop_when_solved=false"]
        batch = [[*fixed, *group, *trial, f"seed={seed}", "stage=tune"]
                 for group in combinations(axes) for trial in grid for seed in self.seeds]
        sweep.set_stage(self.sweep_dir, f"tuning: {len(batch)} trials", total=len(batch))
        summaries = self.launch(batch)
        settings = choose(batch, summaries, list(self.search))
        protocol = {"tuned": {k: [float(v) for v in values] for k, values in self.search.items()},
                    "seeds": self.seeds, "length": self.length,
                    "max_steps": OmegaConf.select(self.config, "trainer.max_steps"),
                    "selection": "best validation score of the primary metric (metrics.val_best)"}
        path = out / TUNED_FILE
        write_text_atomic(path, yaml.safe_dump({"protocol": protocol, "settings": settings}, sort_keys=False))
        return path


def grid_values(name: str, spec: Any) -> list[float]:
    """A search spec: ``{key, values: [...]}``, or ``{key, low, high, points, log}`` (log-spaced
    by default); ``name`` is its name in ``hydra.sweeper.search``, for messages."""
    spec = dict(spec)
    where = f"hydra.sweeper.search.{name}"
    check(isinstance(spec.get("key"), str) and bool(spec.get("key")), f"{where}.key", spec.get("key"),
          "the config key to tune, e.g. optim.lr")
    if spec.get("values") is not None:
        return [float(v) for v in spec["values"]]
    low, high, points = spec.get("low"), spec.get("high"), spec.get("points", 3)
    check(is_int(points) and points >= 1, f"{where}.points", points, "an integer >= 1")
    check(isinstance(low, (int, float)) and isinstance(high, (int, float)) and 0 < low <= high,
          where, spec, "{key, low, high, points} with 0 < low <= high, or {key, values: [...]}")
    if points == 1:
        return [float(low)]
    if spec.get("log", True):
        return [float(low * (high / low) ** (i / (points - 1))) for i in range(points)]
    return [float(low + (high - low) * i / (points - 1)) for i in range(points)]


def choose(batch: list[list[str]], summaries: list[dict], keys: list[str]) -> dict[str, dict]:
    """Per cell preset and task preset: the trial values with the best mean validation score over
    the tuning seeds (a trial that failed or has no score loses), and every trial."""
    trials: dict[tuple, dict[tuple, list]] = {}
    for overrides, summary in zip(batch, summaries):
        values = tuple(float(o.split("=", 1)[1]) for o in overrides for key in keys if o.startswith(key + "="))
        pair = (summary.get("cell_preset"), summary.get("task_preset"))
        trials.setdefault(pair, {}).setdefault(values, []).append(summary)
    settings: dict[str, dict] = {}
    for (cell, task), by_values in trials.items():
        if cell is None or task is None:
            continue
        scored = []
        for values, runs in by_values.items():
            scores = [r["val_best"] for r in runs if r.get("val_best") is not None and math.isfinite(r["val_best"])]
            mode = next((r.get("metric_mode") for r in runs if r.get("metric_mode")), "min")
            mean = sum(scores) / len(scores) if len(scores) == len(runs) else None
            scored.append((values, mean, mode, runs))
        valid = [s for s in scored if s[1] is not None]
        best = (min(valid, key=lambda s: s[1] if s[2] == "min" else -s[1]) if valid else None)
        settings.setdefault(cell, {})[task] = {
            "values": dict(zip(keys, best[0])) if best else {},
            "metric": next((r.get("metric") for s in scored for r in s[3] if r.get("metric")), None),
            "trials": [{"values": dict(zip(keys, values)), "val_best": mean,
                        "statuses": [r.get("status") for r in runs]} for values, mean, _, runs in scored],
        }
        if best is None:
            log.warning("tuning %s on %s: no trial produced a validation score; nothing chosen", cell, task)
    return settings


class HorizonSweeper(ProtocolSweeperBase):
    """``hydra/sweeper=horizon``: one adaptive search over T per combination of the axes."""

    def __init__(self, params: Optional[dict] = None, start: int = 10, growth: float = 2.0, max_length: int = 640,
                 resolution: float = 0.25, max_runs: int = 1000, length_key: str = "task.seq_len"):
        super().__init__(params)
        self.settings = HorizonSettings(start, growth, max_length, resolution, max_runs)
        self.length_key = length_key

    def sweep(self, arguments: list[str]) -> Any:
        self.start_sweep()
        return self.search(arguments, extra=[])

    def search(self, arguments: list[str], extra: list[str]) -> list[dict]:
        """Run every search to its end (or the run cap); write and return their summary."""
        fixed, axes = expand(arguments, self.params)
        if self.length_key in axes:
            raise ConfigError(f"{self.length_key} is what a horizon search chooses; remove it from the sweep "
                              f"(set hydra.sweeper.start / max_length instead).")
        searches = [(group, HorizonSearch(self.settings)) for group in combinations(axes)]
        runs, rounds = 0, 0
        while True:
            proposals = [(group, search, search.next_length()) for group, search in searches]
            proposals = [p for p in proposals if p[2] is not None][: max(0, self.settings.max_runs - runs)]
            if not proposals:
                break
            # Longest T first: a parallel launcher starts the slowest jobs first and fills the
            # end of the round with short ones, instead of waiting on a long one started last.
            proposals.sort(key=lambda p: -p[2])
            rounds += 1
            lengths = sorted({T for _, _, T in proposals})
            sweep.set_stage(self.sweep_dir, f"horizon round {rounds}: {len(proposals)} runs at T in "
                                            f"{{{', '.join(map(str, lengths))}}}, {runs} runs before")
            batch = [[*fixed, *group, f"{self.length_key}={T}", "stage=horizon", *extra] for group, _, T in proposals]
            for (_, search, T), summary in zip(proposals, self.launch(batch)):
                search.record(T, summary.get("status") in ENDED and bool(summary.get("solved")))
            runs += len(batch)
        results = [{"group": group, "tried": dict(sorted(s.tried.items())), "horizon": s.longest_solved}
                   for group, s in searches]
        write_text_atomic(self.sweep_dir / HORIZON_FILE, yaml.safe_dump(
            {"settings": vars(self.settings), "runs": runs, "searches": results}, sort_keys=False))
        for result in results:
            log.info("horizon %s: %s (tried %s)", " ".join(result["group"]), result["horizon"], result["tried"])
        return results


class ProtocolSweeper(HorizonSweeper):
    """``hydra/sweeper=protocol``: tuning, then the horizon search with the tuned settings."""

    def __init__(self, params: Optional[dict] = None, tune: Optional[dict] = None, **horizon):
        super().__init__(params, **horizon)
        self.tuner = TuneSweeper(params, **dict(tune or {}))

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.tuner.config, self.tuner.launcher = self.config, self.launcher

    def sweep(self, arguments: list[str]) -> Any:
        self.start_sweep()
        tune_dir = self.sweep_dir / "tune"
        tune_dir.mkdir(parents=True, exist_ok=True)
        path = self.tuner.tune(arguments, tune_dir)
        self.job_idx = self.tuner.job_idx
        log.info("tuned settings: %s", path)
        return self.search(arguments, extra=[f"tuning={path}"])
