"""Finding corpus files: a local data folder first, then a cache, then a download.

Every real corpus file a task reads is named by a path relative to a data root
(e.g. ``ptb/ptb.train.txt``) and, where it is published, by a download URL and the
SHA-256 of the published bytes. :func:`corpus_file` looks in this order:

1. ``data_dir`` (a task option) or the ``RNNBENCH_DATA_DIR`` environment variable:
   files there are used as they are (the user vouches for them);
2. the cache, ``cache_dir`` or ``RNNBENCH_CACHE_DIR`` or ``~/.cache/rnnbench``:
   files there were verified when downloaded;
3. the URL: downloaded into the cache under a temporary name, checked against the
   SHA-256, then renamed into place (a failed or partial download never looks
   like a good file). A checksum mismatch deletes the download and says so.

Offline, or with no URL known, the error names the file, the places looked in, and
the option or variable that points rnnbench at a copy.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from .errors import ConfigError
from .files import write_atomic

DATA_DIR_VARIABLE = "RNNBENCH_DATA_DIR"
CACHE_DIR_VARIABLE = "RNNBENCH_CACHE_DIR"


class DataError(ConfigError):
    """A corpus file is missing, cannot be downloaded, or fails its checksum."""


def default_data_dir() -> Optional[Path]:
    """``RNNBENCH_DATA_DIR`` if set, else None."""
    value = os.environ.get(DATA_DIR_VARIABLE, "").strip()
    return Path(value).expanduser() if value else None


def default_cache_dir() -> Path:
    """``RNNBENCH_CACHE_DIR`` if set, else ``~/.cache/rnnbench``."""
    value = os.environ.get(CACHE_DIR_VARIABLE, "").strip()
    return Path(value).expanduser() if value else Path.home() / ".cache" / "rnnbench"


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def corpus_file(
    relative_path: str,
    *,
    url: Optional[str] = None,
    sha256: Optional[str] = None,
    data_dir: Optional[str | os.PathLike] = None,
    cache_dir: Optional[str | os.PathLike] = None,
) -> Path:
    """The local path of ``relative_path``, downloading it into the cache if needed."""
    data_root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    cache_root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    looked_in = []
    if data_root is not None:
        candidate = data_root / relative_path
        if candidate.is_file():
            return candidate
        looked_in.append(str(candidate))
    cached = cache_root / relative_path
    if cached.is_file():
        return cached
    looked_in.append(str(cached))

    where = " and ".join(looked_in)
    hint = (f"Point rnnbench at a folder holding {relative_path} with task.data_dir=/path/to/data "
            f"or {DATA_DIR_VARIABLE}=/path/to/data")
    if url is None:
        raise DataError(f"corpus file {relative_path} not found (looked in {where}) and it has no download "
                        f"location. {hint}.")
    try:
        download(url, cached, sha256)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise DataError(f"corpus file {relative_path} not found (looked in {where}) and downloading it from "
                        f"{url} failed ({type(exc).__name__}: {exc}); are you offline? {hint}, or put the "
                        f"file at {cached}.") from exc
    return cached


def download(url: str, destination: str | os.PathLike, sha256: Optional[str] = None, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``destination`` atomically (:func:`rnnbench.files.write_atomic`),
    verifying ``sha256`` if given: a mismatch leaves nothing behind."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)

    def fetch(out) -> None:
        digest = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=timeout) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
        if sha256 is not None and digest.hexdigest() != sha256:
            raise DataError(f"the file downloaded from {url} has SHA-256 {digest.hexdigest()}, expected {sha256}: "
                            f"it was deleted, not used. The published file may have changed, or the "
                            f"download was corrupted; try again or provide a verified copy.")

    write_atomic(destination, fetch)
    return destination
