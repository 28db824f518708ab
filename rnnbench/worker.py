"""Entry point of an extra DDP rank: ``python -m rnnbench.worker RUN_DIR``.

Started by :func:`rnnbench.distributed.local_ranks`; trains the job whose resolved
config is ``RUN_DIR/config.yaml`` as the rank given in the environment. Workers
never write run records (rank 0 does).
"""

import sys
from pathlib import Path

from omegaconf import OmegaConf

from .experiment import CONFIG_FILE
from .run import run_job


def main() -> None:
    run_dir = Path(sys.argv[1])
    cfg = OmegaConf.load(run_dir / CONFIG_FILE)
    run_job(cfg, run_dir)


if __name__ == "__main__":
    main()
