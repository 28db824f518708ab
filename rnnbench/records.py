"""Run records: one ``summary.json`` per run, written atomically.

A record is the unit the analysis reads: the resolved config and its hash, what
was trained (cell, task, sizes), how it ended (status, error), what it scored
(best and last validation metrics, test metrics and which checkpoint they come
from, the task's baseline and whether the ``solved`` criterion was met), and what
it cost (steps, wall time, tokens/s, device, versions, git commit).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.yaml"
# Left in a sweep's job folder when the job reused an earlier run (skipped because it
# had finished, or resumed in its own folder): {"run_dir": ...}. Tables and reports of
# the sweep follow it, so a restarted sweep still reports every job.
REUSED_FILE = "reused_run.json"
RECORD_VERSION = 1

# Config keys that change where or how verbosely a run is reported, not what it
# computes; they are left out of the config hash so that the same experiment run
# into another results directory is recognised as the same.
HASH_EXCLUDED_KEYS = ("results_dir", "resume", "force", "trainer.progress_bar", "trainer.log_every_n_steps",
                      "trainer.threads")
# A run writes a few small files and its checkpoints; refuse to start below this much
# free space rather than die at the first checkpoint hours later.
MIN_FREE_BYTES = 64 * 2**20


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` via ``write(file)`` on a temp file in the same folder, fsync, and an
    atomic rename: readers see the old file or the complete new one, never a torn one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON to ``path`` atomically (:func:`write_atomic`)."""
    text = json.dumps(_jsonable(data), indent=2, sort_keys=False, allow_nan=False) + "\n"
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def read_record(path: str | os.PathLike) -> dict:
    """A run record; ``ValueError`` if the file is truncated, corrupt or not a record."""
    with open(path, encoding="utf-8") as f:
        record = json.load(f)
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, found {type(record).__name__}")
    return record


def record_paths(root: str | os.PathLike) -> list[Path]:
    """Every ``summary.json`` under ``root``, and those that sweep jobs under ``root``
    reused from elsewhere (``REUSED_FILE``), each once."""
    root = Path(root)
    paths = sorted(root.rglob(SUMMARY_FILE))
    seen = {p.resolve() for p in paths}
    for pointer in sorted(root.rglob(REUSED_FILE)):
        try:
            target = Path(read_record(pointer)["run_dir"]) / SUMMARY_FILE
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("skipping unreadable %s: %s", pointer, exc)
            continue
        if target.is_file() and target.resolve() not in seen:
            seen.add(target.resolve())
            paths.append(target)
        elif not target.is_file():
            log.warning("%s points at %s, which no longer exists", pointer, target)
    return paths


def read_records(paths: Iterable[Path]) -> Iterator[tuple[Path, dict]]:
    """``(path, record)`` of each readable record of ``paths``; unreadable ones (truncated,
    corrupt, not a record) are skipped with a warning naming the file."""
    for path in paths:
        try:
            yield path, read_record(path)
        except (OSError, ValueError) as exc:
            log.warning("skipping unreadable run record %s: %s", path, exc)


def find_records(root: str | os.PathLike, config_hash: str) -> Iterator[tuple[Path, dict]]:
    """``(path, record)`` of every readable run record under ``root`` with this config hash."""
    for path, record in read_records(sorted(Path(root).rglob(SUMMARY_FILE))):
        if record.get("config_hash") == config_hash:
            yield path, record


def check_results_dir(root: str | os.PathLike) -> None:
    """Fail early, with a clear message, if run records cannot be written under ``root``."""
    from .errors import ConfigError

    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".rnnbench-write-test.", dir=root)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"results_dir={str(root)!r} is not writable ({exc.strerror or exc}). Choose another "
                          f"folder with results_dir=... or RNNBENCH_RESULTS_DIR.") from exc
    free = shutil.disk_usage(root).free
    if free < MIN_FREE_BYTES:
        raise ConfigError(f"results_dir={str(root)!r} has only {free / 2**20:.1f} MiB free; a run needs at least "
                          f"{MIN_FREE_BYTES / 2**20:.0f} MiB for its records and checkpoints. Free some space "
                          f"or choose another folder with results_dir=....")


def _jsonable(value: Any) -> Any:
    """Plain JSON types; non-finite floats become strings ("nan", "inf") so the file stays valid JSON."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


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
    canonical = json.dumps(_jsonable(trimmed), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def versions() -> dict[str, str]:
    """Versions of the software that produced a result."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for dist in ("rnnbench", "torch", "pytorch-lightning", "hydra-core", "omegaconf"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            found[dist] = None
    return found


def git_commit() -> dict[str, Any] | None:
    """The git commit of the rnnbench source tree (and whether it had local changes), if any."""
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
