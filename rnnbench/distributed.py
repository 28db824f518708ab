"""Multi-process training without re-running the command line.

Lightning's own launcher for ``strategy=ddp`` re-executes ``sys.argv`` in each
child process; under a Hydra sweep (``-m``) that would start the whole sweep again
in every child. rnnbench instead launches the extra ranks of *one job* itself, the
way ``torchrun`` does: each child runs ``python -m rnnbench.worker RUN_DIR``, which
re-reads that job's resolved ``config.yaml``. Every job gets its own free port, so
sweep jobs never share a process group, and Lightning sees the ranks as created
externally (``LOCAL_RANK`` set) and launches nothing.

When a cluster manager already started one process per rank (SLURM with several
tasks, ``torchrun``), nothing is launched here.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

RANK_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK")


def global_rank() -> int:
    """This process's rank as the launcher told it (0 when not distributed)."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


def launched_externally() -> bool:
    """True if someone else (torchrun, SLURM, our own launcher) created the ranks."""
    return "LOCAL_RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) > 1


def resolve_devices(accelerator: str, devices) -> int:
    """``devices: -1`` means every visible GPU (or one process per CPU core on CPU)."""
    if devices in (-1, "-1", "auto"):
        if accelerator in ("gpu", "cuda"):
            return max(1, torch.cuda.device_count())
        return max(1, os.cpu_count() or 1)
    return int(devices)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_ranks(run_dir: Path, nprocs: int):
    """Start ranks 1..nprocs-1 as workers for this job; this process becomes rank 0.

    On exit the workers are waited for (and killed if they outlive rank 0 by more
    than a minute), the process group is destroyed and the environment restored, so
    the next job of a sequential sweep starts clean.
    """
    saved = {key: os.environ.get(key) for key in RANK_VARIABLES}
    common = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(nprocs),
              "NODE_RANK": "0"}
    workers = []
    try:
        for rank in range(1, nprocs):
            env = {**os.environ, **common, "RANK": str(rank), "LOCAL_RANK": str(rank)}
            workers.append(subprocess.Popen([sys.executable, "-m", "rnnbench.worker", str(run_dir)], env=env))
        os.environ.update({**common, "RANK": "0", "LOCAL_RANK": "0"})
        yield workers
    finally:
        for proc in workers:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
