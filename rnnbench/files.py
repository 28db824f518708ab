"""Files that must never be torn: atomic writes (temp file, fsync, rename), JSON that stays
valid with non-finite numbers, and the check that a results folder can be written."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

from .errors import ConfigError

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


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a text file (UTF-8) atomically (:func:`write_atomic`)."""
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON to ``path`` atomically (:func:`write_atomic`)."""
    write_text_atomic(path, json.dumps(jsonable(data), indent=2, sort_keys=False, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> dict:
    """A JSON object; ``ValueError`` if the file is truncated, corrupt or not an object."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, found {type(data).__name__}")
    return data


def jsonable(value: Any) -> Any:
    """Plain JSON types; non-finite floats become strings ("nan", "inf") so the file stays valid JSON."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def check_results_dir(root: str | os.PathLike) -> None:
    """Fail early, with a clear message, if run records cannot be written under ``root``."""
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
