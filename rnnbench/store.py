"""The run store: the run records under a results folder, and what an earlier run of the
same config means for a new one (skip it, resume it, or run afresh).

A run is identified by its config hash (:func:`rnnbench.record.config_hash`). A sweep
job that reused an earlier run (skipped because it had finished, or resumed in the
earlier run's folder) leaves ``reused_run.json`` in its own folder, pointing at that
run, so that a restarted sweep's table and report still cover every job.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional

from .errors import is_int
from .files import read_json, write_json_atomic
from .record import ENDED, SUMMARY_FILE, RunRecord

log = logging.getLogger(__name__)

REUSED_FILE = "reused_run.json"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
BEST_CHECKPOINT = Path("checkpoints") / "best.ckpt"
# A run that stopped early and can go on from its last checkpoint.
RESUMABLE = ("running", "interrupted")


def record_paths(root: str | os.PathLike) -> list[Path]:
    """Every ``summary.json`` under ``root``, and those that sweep jobs under ``root``
    reused from elsewhere (``REUSED_FILE``), each once."""
    root = Path(root)
    paths = sorted(root.rglob(SUMMARY_FILE))
    seen = {p.resolve() for p in paths}
    for pointer in sorted(root.rglob(REUSED_FILE)):
        try:
            target = Path(read_json(pointer)["run_dir"]) / SUMMARY_FILE
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("skipping unreadable %s: %s", pointer, exc)
            continue
        if target.is_file() and target.resolve() not in seen:
            seen.add(target.resolve())
            paths.append(target)
        elif not target.is_file():
            log.warning("%s points at %s, which no longer exists", pointer, target)
    return paths


def read_records(paths: Iterable[Path]) -> Iterator[tuple[Path, RunRecord]]:
    """``(path, record)`` of each readable record of ``paths``; unreadable ones (truncated,
    corrupt, no record) are skipped with a warning naming the file."""
    for path in paths:
        try:
            yield path, RunRecord.read(path)
        except (OSError, ValueError, TypeError) as exc:
            log.warning("skipping unreadable run record %s: %s", path, exc)


def load_records(root: str | os.PathLike) -> list[RunRecord]:
    """Every readable run record under ``root``, reused runs of sweep jobs included."""
    return [record for _, record in read_records(record_paths(root))]


def write_reused_pointer(job_dir: Path, used_dir: Path, skipped: bool) -> None:
    """Leave ``reused_run.json`` in a sweep job's folder: the job's result is in ``used_dir``."""
    write_json_atomic(job_dir / REUSED_FILE, {"run_dir": str(used_dir), "skipped": skipped})


def alive_elsewhere(record: RunRecord) -> bool:
    """True if the process that wrote a ``running`` record is still running on this host."""
    pid = record.pid
    if record.status != "running" or record.host != socket.gethostname() or not is_int(pid):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@dataclass
class PreviousRun:
    """An earlier run of the same config: ``action`` is ``"skip"`` (it finished or diverged,
    or it is still running in another process here) or ``"resume"`` (interrupted or killed,
    with a ``last.ckpt``)."""

    action: str
    run_dir: Path
    record: RunRecord


def find_previous_run(results_dir: str | os.PathLike, config_hash: str) -> Optional[PreviousRun]:
    """What an earlier run with the same config hash under ``results_dir`` means for this one
    (None: nothing to reuse, e.g. only failed runs, which are run again)."""
    root = Path(results_dir)
    if not root.is_dir():
        return None
    resumable = None
    for path, record in read_records(_mentioning(root, config_hash)):
        if record.config_hash != config_hash:
            continue
        run_dir = path.parent  # where it is now, even if the results were moved
        if record.status in ENDED or alive_elsewhere(record):
            return PreviousRun("skip", run_dir, record)
        if record.status in RESUMABLE and (run_dir / LAST_CHECKPOINT).is_file():
            resumable = resumable or PreviousRun("resume", run_dir, record)
    return resumable


def _mentioning(root: Path, text: str) -> list[Path]:
    """The run records under ``root`` whose file contains ``text`` (a config hash): a sweep of
    hundreds of jobs checks every record before each job, and parsing only the candidates keeps
    that cheap. Unreadable files are kept, so that reading them warns as usual."""
    found = []
    for path in sorted(root.rglob(SUMMARY_FILE)):
        try:
            if text in path.read_text(encoding="utf-8", errors="replace"):
                found.append(path)
        except OSError:
            found.append(path)
    return found


def remove_if_only_hydra_files(run_dir: Path) -> None:
    """A run refused before it started (or a sweep job that reused another folder) leaves no
    folder behind that holds nothing but Hydra's own files."""
    import shutil

    if run_dir.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in run_dir.iterdir()):
        logging.shutdown()  # release Hydra's log file handle
        shutil.rmtree(run_dir, ignore_errors=True)
