"""Where the read-only shared corpora are (conftest sets ``RNNBENCH_DATA_DIR`` for the session)."""

from __future__ import annotations

import os
from pathlib import Path


def shared_data(required: str) -> Path | None:
    """The corpora folder, if it holds ``required`` (a file or folder path inside it)."""
    value = os.environ.get("RNNBENCH_DATA_DIR")
    return Path(value) if value and (Path(value) / required).exists() else None
