"""Registry behaviour and third-party plugins through real entry points."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers.cli import TINY, run_cli, summaries
from rnnbench import Cell
from rnnbench.errors import RegistryError
from rnnbench.registry import CELLS, TASKS, Registry, load_plugin_file


def test_builtins_are_discovered():
    assert {"gru", "lstm", "rnn"} <= set(CELLS.names())
    assert {"copy", "adding"} <= set(TASKS.names())


def test_unknown_name_lists_known_names_and_closest_match():
    with pytest.raises(RegistryError) as info:
        CELLS.get("gruu")
    message = str(info.value)
    assert "unknown cell 'gruu'" in message and "Did you mean 'gru'?" in message and "lstm" in message


def test_duplicate_name_names_both_modules(tmp_path):
    registry = Registry("cell", "rnnbench.cells", "rnnbench.cells.test-none", base="rnnbench.cell:Cell",
                        required=(("step",),))
    step = lambda self, x_t, h: (h, h)  # noqa: E731
    first = type("First", (Cell,), {"__module__": "pkg_a.cells", "step": step})
    second = type("Second", (Cell,), {"__module__": "pkg_b.cells", "step": step})
    registry.add("same", first)
    with pytest.raises(RegistryError) as info:
        registry.add("same", second)
    assert "pkg_a.cells.First" in str(info.value) and "pkg_b.cells.Second" in str(info.value)
    registry.add("same", first)  # the same class again (a re-import) is fine


def test_plugin_file_registers_and_loads_once(tmp_path):
    file = tmp_path / "my_cells.py"
    file.write_text(textwrap.dedent("""
        from rnnbench import Cell, register_cell
        LOADS = []
        LOADS.append(1)

        @register_cell("file_cell_for_test")
        class FileCell(Cell):
            def step(self, x_t, h):
                return h, h
    """))
    load_plugin_file(file)
    load_plugin_file(file)
    assert CELLS.get("file_cell_for_test").__name__ == "FileCell"
    module = sys.modules[CELLS.get("file_cell_for_test").__module__]
    assert module.LOADS == [1]
    with pytest.raises(RegistryError, match="does not exist"):
        load_plugin_file(tmp_path / "missing.py")


TOY_PACKAGE = '''
"""A throw-away third-party cell: h' = tanh(W x + U h)."""
import torch
from torch import nn
from rnnbench import Cell

class ToyCell(Cell):
    def __init__(self, input_size, hidden_size, scale=1.0):
        super().__init__(input_size, hidden_size)
        self.input_map = nn.Linear(input_size, hidden_size)
        self.recurrent = nn.Linear(hidden_size, hidden_size, bias=False)
        self.scale = scale

    def step(self, x_t, h):
        h = torch.tanh(self.input_map(x_t) + self.scale * self.recurrent(h))
        return h, h
'''

TOY_YAML = '''# ToyCell from the rnnbench-toy distribution (test fixture).
name: toycell         # registry name given by the entry point
hidden_size: 16       # small: a test
num_layers: 1         # one layer
bidirectional: false  # one direction
dropout: 0.0          # no stacking, no dropout
scale: 0.5            # the cell's own option
'''


def make_distribution(root: Path, broken: bool = False) -> Path:
    """A package plus a ``.dist-info`` with ``entry_points.txt``, as pip would install it."""
    site = root / "site"
    package = site / "toy_plugin"
    (package / "conf" / "cell").mkdir(parents=True)
    (package / "__init__.py").write_text(TOY_PACKAGE + ("\nraise ImportError('toy is broken')\n" if broken else ""))
    (package / "conf" / "__init__.py").write_text("")
    (package / "conf" / "cell" / "toycell.yaml").write_text(TOY_YAML)
    dist_info = site / "rnnbench_toy-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: rnnbench-toy\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(
        "[rnnbench.cells]\ntoycell = toy_plugin:ToyCell\n\n[rnnbench.conf]\ntoy = toy_plugin.conf\n")
    return site


@pytest.mark.slow
def test_entry_point_plugin_is_listed_lazily_and_trains_by_name(tmp_path, workdir):
    site = make_distribution(tmp_path)
    env = {"PYTHONPATH": str(site)}
    lazy = subprocess.run(
        [sys.executable, "-c", "import sys; from rnnbench.registry import CELLS; "
                               "print('toycell' in CELLS.names(), 'toy_plugin' in sys.modules)"],
        env={**__import__("os").environ, **env}, capture_output=True, text=True, check=True)
    assert lazy.stdout.split() == ["True", "False"]  # listed, not imported

    listing = run_cli(["list"], workdir, env=env)
    assert "toycell" in listing.stdout and "rnnbench-toy" in listing.stdout and "not imported" in listing.stdout

    tiny = [a for a in TINY if not a.startswith("cell.")]
    proc = run_cli(["cell=toycell", *tiny], workdir, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = summaries(workdir / "results")
    assert record["cell"] == "toycell" and record["status"] == "finished"
    assert record["config"]["cell"]["scale"] == 0.5
    assert record["params"] == (2 * 16 + 16) + 16 * 16 + 17

    # With plugins disabled, the name is unknown again.
    proc = run_cli(["cell=gru", "cell.name=toycell", *tiny], workdir, env={**env, "RNNBENCH_NO_PLUGINS": "1"})
    assert proc.returncode == 2 and "unknown cell 'toycell'" in proc.stderr


@pytest.mark.slow
def test_broken_plugin_is_reported_with_its_distribution(tmp_path, workdir):
    site = make_distribution(tmp_path, broken=True)
    env = {"PYTHONPATH": str(site)}
    proc = run_cli(["cell=toycell", *TINY], workdir, env=env)
    assert proc.returncode == 2
    assert "'rnnbench-toy'" in proc.stderr and "toy is broken" in proc.stderr
    assert "Traceback" not in proc.stderr
    # Other cells keep working beside the broken plugin.
    proc = run_cli(["cell=gru", *TINY, "trainer.max_steps=2"], workdir, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]


BAD_PLUGINS = {
    "__init__.py": "from rnnbench import Cell\n\n"
                   "class NotACell:\n    def step(self, x_t, h):\n        return h, h\n\n"
                   "class NoStep(Cell):\n    pass\n",
    "dupe.py": "from rnnbench import Cell, register_cell\n\n"
               "@register_cell('gru')\nclass MyGRU(Cell):\n    def step(self, x_t, h):\n        return h, h\n",
    "broken.py": "import no_such_module_anywhere\n",
}


@pytest.mark.parametrize("name, reason", [
    ("notacell", "(bad_plugins.NotACell) does not implement the Cell API of rnnbench.cell: it must be a subclass of Cell"),
    ("nostep", "(bad_plugins.NoStep) does not implement the Cell API of rnnbench.cell: it must define recurrence() or step() or step_with_gates()"),
    ("dupe", "cell name 'gru' is registered twice: by rnnbench.cells.gru.GRU and by bad_plugins.dupe.MyGRU"),
    ("broken", "ModuleNotFoundError: No module named 'no_such_module_anywhere'"),
])
def test_bad_plugin_is_reported_with_distribution_and_reason(tmp_path, monkeypatch, name, reason):
    from importlib.metadata import distributions

    package = tmp_path / "bad_plugins"
    package.mkdir()
    for file, text in BAD_PLUGINS.items():
        (package / file).write_text(text)
    dist_info = tmp_path / "rnnbench_bad-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: rnnbench-bad\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(
        "[rnnbench.cells]\nnotacell = bad_plugins:NotACell\nnostep = bad_plugins:NoStep\n"
        "dupe = bad_plugins.dupe\nbroken = bad_plugins.broken\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    (dist,) = distributions(path=[str(tmp_path)])
    entry_point = next(ep for ep in dist.entry_points if ep.name == name)
    with pytest.raises(RegistryError) as info:
        CELLS._load_entry_point(entry_point)
    message = str(info.value)
    assert message.startswith(f"cell plugin {name!r} from distribution 'rnnbench-bad' failed to load")
    assert reason in message
    assert name not in CELLS._classes
    assert CELLS.get("gru").__module__ == "rnnbench.cells.gru"  # the other cells keep working
