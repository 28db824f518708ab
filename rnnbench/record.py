"""The run record: one typed :class:`RunRecord` per run, ``summary.json`` in its folder.

A record is the unit the report reads: what was trained (cell, task, sizes), how it
ended (status, error), what it scored (validation and test metrics, which weights
were tested, the task's baseline and ``solved`` criterion), what it cost (steps,
tokens, time) and where it came from (the resolved config and its hash, versions,
git commit, tuning provenance, a paper preset's deviations).

One writer (:meth:`RunRecord.write`, atomic) and one reader (:meth:`RunRecord.read`),
used by runs, by the command line's failure path and by the report alike. Records
carry ``record_version``; older versions are migrated when read.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .files import jsonable, read_json, write_json_atomic

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
RECORD_VERSION = 2
STATUSES = ("running", "finished", "failed", "diverged", "interrupted")
# Statuses of a run that says something about the cell (a diverged run did train and failed).
ENDED = ("finished", "diverged")

# Config keys that change where or how verbosely a run is reported, not what it
# computes (also a tuned.yaml's path: the values it sets are in the config; and a
# preset's deviation notes); they are left out of the config hash so that the same
# experiment run into another results directory is recognised as the same.
HASH_EXCLUDED_KEYS = ("results_dir", "resume", "force", "trainer.progress_bar", "trainer.log_every_n_steps",
                      "trainer.threads", "logger", "tuning", "deviations")


@dataclass
class RunRecord:
    """Everything one run says about itself (``summary.json``)."""

    run_dir: str
    status: str = "running"  # one of STATUSES
    error: Optional[str] = None
    traceback: Optional[str] = None
    # --- what was trained -----------------------------------------------------------------
    cell: Optional[str] = None  # registry names
    task: Optional[str] = None
    cell_preset: Optional[str] = None  # the YAML presets chosen (cell=bigru is cell "gru")
    task_preset: Optional[str] = None
    task_params: dict[str, Any] = field(default_factory=dict)  # Task.key_parameters(), e.g. seq_len
    hidden_size: Optional[int] = None
    num_layers: Optional[int] = None
    bidirectional: Optional[bool] = None
    params: Optional[int] = None  # trainable parameters of the whole model
    param_groups: dict[str, int] = field(default_factory=dict)  # of named parts (Task.parameter_groups)
    cell_params: Optional[int] = None  # of every cell stack (a translation model has two)
    param_budget: Optional[int] = None
    state_size: Optional[int] = None  # floats of recurrent state per sequence, every stack
    cell_flops_per_step: Optional[int] = None  # forward FLOPs per sequence and step, first stack
    seed: Optional[int] = None
    data_seed: Optional[int] = None
    init_seed: Optional[int] = None
    # --- what it scored ------------------------------------------------------------------
    metric: Optional[str] = None  # the task's primary metric
    metric_mode: Optional[str] = None  # "min" or "max"
    solved_criterion: dict[str, Any] = field(default_factory=dict)  # metric, mode, threshold, patience
    metrics: dict[str, Any] = field(default_factory=dict)  # val_best, val_last, test, length_generalisation
    baseline: dict[str, Any] = field(default_factory=dict)  # what a memoryless model scores
    test_checkpoint: Optional[str] = None  # which weights the test scored, e.g. "best (step 900)"
    solved: bool = False  # the test metrics meet the criterion
    solved_val: Optional[bool] = None  # the validation metrics of the tested weights meet it
    steps_to_solve: Optional[int] = None  # first validation of the streak that met the criterion
    time_to_solve_s: Optional[float] = None
    stopped_when_solved: bool = False
    # --- what it cost ----------------------------------------------------------------------
    steps: int = 0
    world_size: int = 1  # processes that trained (DDP ranks)
    train_tokens: Optional[int] = None  # time steps trained on, all ranks, all resumed segments
    train_time_s: float = 0.0  # time inside training steps, all resumed segments
    tokens_per_s: Optional[float] = None  # train_tokens / train_time_s
    wall_time_s: float = 0.0
    resumed_from_step: Optional[int] = None
    diverged_at_step: Optional[int] = None
    device: dict[str, Any] = field(default_factory=dict)
    deterministic: Optional[bool] = None  # the same config and seeds give the same numbers
    # --- where it came from --------------------------------------------------------------------
    config_hash: Optional[str] = None
    config: Optional[dict[str, Any]] = None  # the resolved config
    protocol: dict[str, Any] = field(default_factory=dict)  # e.g. tuned settings and their provenance
    deviations: list[str] = field(default_factory=list)  # a paper preset's differences from its source
    versions: dict[str, Any] = field(default_factory=dict)
    git_commit: Optional[dict[str, Any]] = None
    pid: Optional[int] = None  # with host: tells a killed run from one still running
    host: Optional[str] = None
    slurm_job_id: Optional[str] = None  # the SLURM job that ran it (``sacct -j ID``), array task included
    slurm_restarts: Optional[int] = None  # how often SLURM requeued that job before this segment
    started_at: Optional[str] = None
    finished_at: Optional[str] = None
    diagnostics: Optional[str] = None  # the diagnostics file, when recorded
    artifacts: dict[str, Any] = field(default_factory=dict)  # what the task wrote (Task.write_artifacts)
    record_version: int = RECORD_VERSION

    @property
    def test_score(self) -> Optional[float]:
        """The primary metric on the test set, if the run got that far."""
        value = (self.metrics.get("test") or {}).get(self.metric)
        return None if value is None else float(value)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def write(self, folder: str | os.PathLike) -> Path:
        """``folder/summary.json``, atomically (readers never see a torn file)."""
        path = Path(folder) / SUMMARY_FILE
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def read(cls, path: str | os.PathLike) -> "RunRecord":
        """A record from ``summary.json`` (or its folder), migrated to this version;
        ``ValueError`` if the file is truncated, corrupt or no record."""
        path = Path(path)
        if path.is_dir():
            path = path / SUMMARY_FILE
        return cls.from_dict(read_json(path), default_run_dir=str(path.parent))

    @classmethod
    def from_dict(cls, data: dict[str, Any], default_run_dir: str = "") -> "RunRecord":
        version = data.get("record_version", 1)
        if not isinstance(version, int) or version > RECORD_VERSION:
            raise ValueError(f"record_version {version!r} is newer than this rnnbench reads ({RECORD_VERSION}); "
                             f"upgrade rnnbench")
        if version < RECORD_VERSION:
            data = migrate_v1(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            log.warning("ignoring unknown record fields %s", ", ".join(unknown))
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("run_dir", default_run_dir)
        record = cls(**values)
        if record.status not in STATUSES:
            raise ValueError(f"status {record.status!r} is not one of {', '.join(STATUSES)}")
        return record


# Version 1 (rnnbench up to 0.1.0): an untyped dict; task files' fields at the top level.
V1_RENAMED = {"stopped_early_when_solved": "stopped_when_solved"}
V1_DROPPED = ("skipped", "solved_on_val_at_step")


def migrate_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A version-1 record as version 2: renamed fields, the metric's mode from the solved
    criterion, and task-specific top-level fields (e.g. ``bleu_signature``) under ``artifacts``."""
    known = {f.name for f in dataclasses.fields(RunRecord)}
    migrated: dict[str, Any] = {"artifacts": {}}
    for key, value in data.items():
        key = V1_RENAMED.get(key, key)
        if key in V1_DROPPED:
            continue
        if key in known:
            migrated[key] = value
        else:
            migrated["artifacts"][key] = value
    migrated.setdefault("metric_mode", (data.get("solved_criterion") or {}).get("mode"))
    migrated["record_version"] = RECORD_VERSION
    return migrated


# --- provenance --------------------------------------------------------------------------------
def config_hash(config: dict) -> str:
    """A short stable hash of a resolved config, ignoring :data:`HASH_EXCLUDED_KEYS`."""
    trimmed = copy.deepcopy(config)
    for dotted in HASH_EXCLUDED_KEYS:
        node = trimmed
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    canonical = json.dumps(jsonable(trimmed), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, Optional[str]]:
    """Versions of the software that produced a result (once per process)."""
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, Optional[str]] = {"python": platform.python_version()}
    for dist in ("rnnbench", "torch", "pytorch-lightning", "hydra-core", "omegaconf"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            found[dist] = None
    return found


@functools.lru_cache(maxsize=1)
def git_commit() -> Optional[dict[str, Any]]:
    """The git commit of the rnnbench source tree (and whether it had local changes), if any;
    once per process (a sweep's worker runs many jobs of the same code)."""
    source = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def device_description(accelerator: str, devices: int, num_nodes: int) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"accelerator": accelerator, "devices": devices, "num_nodes": num_nodes,
                            "platform": platform.platform(), "torch_threads": torch.get_num_threads()}
    if accelerator in ("gpu", "cuda") and torch.cuda.is_available():
        info["name"] = torch.cuda.get_device_name(0)
    else:
        info["name"] = platform.processor() or platform.machine()
        info["cpu_count"] = os.cpu_count()
    info["argv"] = sys.argv
    return info
