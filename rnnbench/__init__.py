"""rnnbench: which recurrent cell remembers what, for how long, at what cost?

Public API for plugin authors::

    from rnnbench import Cell, Task, register_cell, register_task
"""

from .cell import Cell, State
from .protocol import register_with_hydra
from .registry import CELLS, TASKS, load_plugin_file, register_cell, register_task
from .task import SyntheticTask, Task

register_with_hydra()  # rnnbench's sweepers (hydra/sweeper=tune|horizon|protocol) on Hydra's plugin path

__version__ = "0.1.0"

__all__ = [
    "CELLS", "TASKS", "Cell", "State", "SyntheticTask", "Task",
    "load_plugin_file", "register_cell", "register_task", "__version__",
]
