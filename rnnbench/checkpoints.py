"""Checkpoint files: written atomically, read back as tensors and plain values only.

Lightning writes checkpoints through fsspec; on a local disk its "transaction" writes
a temp file in the system temp folder and moves it, which is neither fsynced nor a
rename within one file system. :class:`AtomicCheckpointIO` writes the temp file next
to the target and renames it (:func:`rnnbench.files.write_atomic`), so a crash or
a full disk mid-save leaves the previous ``last.ckpt`` intact.

Every checkpoint is loaded with ``torch.load(weights_only=True)``: a checkpoint file
can hold no code. Everything rnnbench puts into one (model and optimiser state,
loop counters, callback states of numbers, dicts and tensors) passes that loader.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from .errors import CheckpointError
from .files import write_atomic


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """A checkpoint as plain data; :class:`CheckpointError` naming the file if it cannot be."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist.")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [""])[0]
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded: it is truncated, corrupt, or holds more than tensors and "
            f"plain values ({type(exc).__name__}: {reason}). Delete it, or start the run afresh with force=true."
        ) from exc
    if not isinstance(checkpoint, dict) or "global_step" not in checkpoint:
        raise CheckpointError(f"checkpoint {path} is not a Lightning checkpoint (no global_step). "
                              f"Delete it, or start the run afresh with force=true.")
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO: atomic saves, ``weights_only=True`` loads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda f: torch.save(checkpoint, f))

    def load_checkpoint(self, path, map_location: Any = None, weights_only: Optional[bool] = None) -> dict:
        return read_checkpoint(path, map_location="cpu" if map_location is None else map_location)
