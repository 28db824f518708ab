"""The README's 'add a cell' example really works, exactly as printed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers.cli import TINY, run_cli, summaries

README = Path(__file__).resolve().parent.parent / "README.md"


def _block(language: str, after: str) -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index(after):]
    return re.search(rf"```{language}\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_cell_example_trains_through_the_cli(workdir):
    (workdir / "my_cells").mkdir()
    (workdir / "my_conf" / "cell").mkdir(parents=True)
    (workdir / "my_cells" / "mgu.py").write_text(_block("python", "## Add a cell"))
    (workdir / "my_conf" / "cell" / "mgu.yaml").write_text(_block("yaml", "and its preset"))
    command = _block("bash", "Then:").splitlines()[0].split()
    assert command[:2] == ["RNNBENCH_CONFIG_PATH=my_conf", "rnnbench"]
    proc = run_cli([*command[2:], *TINY], workdir, env={"RNNBENCH_CONFIG_PATH": "my_conf"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = summaries(workdir / "results")
    assert record["cell"] == "mgu" and record["status"] == "finished"
    # MGU, hidden 16, input 2: input map 2*16*(2+1), two 16x16 recurrent maps; head 17.
    assert record["params"] == 2 * 16 * 3 + 2 * 16 * 16 + 17
