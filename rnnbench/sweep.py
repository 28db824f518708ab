"""Sweeps: where a sweep is while it runs, and what it says when it ends.

- **Progress.** When a sweep starts, :class:`SweepEnd` writes ``progress.json`` into the
  sweep folder (the number of jobs, when known, and the stage of an adaptive sweep).
  Every job, in whatever process or node runs it (sequential, joblib, SLURM), appends
  one line to ``progress.log`` when it ends and logs ``progress: 12/126 jobs done (1
  failed), 3m 10s elapsed, about 30m left``: one line per job, which reads the same in
  a terminal and in a log file. The time left is the elapsed time per finished job
  times the jobs left (parallel launchers included: the rate is measured in wall time).
- **The end.** :class:`SweepEnd` prints the table of the sweep's run records, writes the
  report when asked (``hydra.callbacks.sweep.report=true``, as the experiments do), and
  ends the command with exit code 1 if any job failed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from .files import read_json, write_json_atomic
from .record import ENDED

log = logging.getLogger("rnnbench")

PROGRESS_FILE = "progress.json"
PROGRESS_LOG = "progress.log"

try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra is a dependency
    Callback = object


def count_jobs(config: DictConfig) -> Optional[int]:
    """The jobs the basic sweeper will launch for this multirun config (None for other sweepers,
    which say so themselves through :func:`set_stage`)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not str(OmegaConf.select(config, "hydra.sweeper._target_", default="")).endswith("BasicSweeper"):
        return None
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    overrides = [*config.hydra.overrides.task, *(f"{k}={v}" for k, v in params.items())]
    parsed = OverridesParser.create().parse_overrides(overrides)
    return sum(len(batch) for batch in BasicSweeper.split_arguments(parsed, None))


def start(sweep_dir: Path, total: Optional[int], stage: Optional[str] = None) -> None:
    """Begin the progress of a sweep (``total`` jobs, None if unknown)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(sweep_dir / PROGRESS_FILE, {"total": total, "started": time.time(), "stage": stage})


def set_stage(sweep_dir: Path, stage: str, total: Optional[int] = None) -> None:
    """An adaptive sweep says where it is (e.g. ``horizon: adding / gru at T=80``)."""
    state = _state(sweep_dir) or {"started": time.time()}
    write_json_atomic(sweep_dir / PROGRESS_FILE, {**state, "stage": stage, "total": total})
    log.info("sweep stage: %s", stage)


def job_done(sweep_dir: Path, job: str, status: str) -> str:
    """Note that a job of the sweep ended; returns (and logs) the progress line."""
    line = json.dumps({"job": job, "status": status, "time": time.time()}) + "\n"
    fd = os.open(sweep_dir / PROGRESS_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one small O_APPEND write: whole lines even from parallel jobs
    finally:
        os.close(fd)
    text = progress_line(sweep_dir)
    log.info(text)
    return text


def progress_line(sweep_dir: Path, now: Optional[float] = None) -> str:
    """``progress: 12/126 jobs done (1 failed), 3m 10s elapsed, about 30m left [stage]``."""
    state = _state(sweep_dir) or {}
    ended = [json.loads(line) for line in (sweep_dir / PROGRESS_LOG).read_text().splitlines() if line.strip()]
    done, failed = len(ended), sum(e["status"] not in ENDED for e in ended)
    elapsed = (now or time.time()) - state.get("started", time.time())
    total = state.get("total")
    text = f"progress: {done}/{total} jobs done" if total else f"progress: {done} jobs done"
    text += f" ({failed} failed), {duration(elapsed)} elapsed"
    if total and 0 < done < total:
        text += f", about {duration(elapsed / done * (total - done))} left"
    if state.get("stage"):
        text += f" [{state['stage']}]"
    return text


def duration(seconds: float) -> str:
    """``1h 02m``, ``3m 10s``, ``42s``."""
    seconds = int(math.ceil(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds}s"


def _state(sweep_dir: Path) -> Optional[dict[str, Any]]:
    try:
        return read_json(sweep_dir / PROGRESS_FILE)
    except (OSError, ValueError):
        return None


class SweepEnd(Callback):
    """Hydra callback of every sweep: progress at the start; at the end the table of its run
    records, the report if ``report`` is true, and exit code 1 if any job failed."""

    def __init__(self, report: bool = False, group_by: Optional[list[str]] = None, plots: bool = True):
        self.report = report
        self.group_by = list(group_by) if group_by else None
        self.plots = plots

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        total = count_jobs(config)
        start(sweep_dir, total)
        log.info("sweep of %s jobs into %s", total if total is not None else "an adaptive number of", sweep_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from .report.frame import summary_table
        from .store import load_records, remove_if_only_hydra_files

        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():  # a job folder with nothing but Hydra's files holds no result
            for job_dir in sweep_dir.iterdir():
                if job_dir.is_dir():
                    remove_if_only_hydra_files(job_dir)
        records = load_records(sweep_dir)
        if not records:
            return
        print(f"\nrnnbench: {len(records)} runs in {sweep_dir}\n")
        print(summary_table(records))
        if self.report:
            self._write_report(sweep_dir)
        failed = [r.run_dir for r in records if r.status not in ENDED]
        if failed:
            print(f"rnnbench: error: {len(failed)} run(s) of the sweep failed; see their summary.json: "
                  + ", ".join(failed), file=sys.stderr)
            sys.exit(1)

    def _write_report(self, sweep_dir: Path) -> None:
        from .report import build_report

        try:
            kwargs = {"group_by": self.group_by} if self.group_by else {}
            report = build_report(sweep_dir, sweep_dir / "report", plots=self.plots, **kwargs)
        except Exception:  # the records stay as they are; the report can be made again
            log.exception("the report of %s could not be written; run rnnbench-report %s", sweep_dir, sweep_dir)
            return
        print("\n" + report.summary())
