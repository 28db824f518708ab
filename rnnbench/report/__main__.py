"""``python -m rnnbench.report RESULTS_DIR``: the same as the ``rnnbench-report`` command."""

from . import main

main()
