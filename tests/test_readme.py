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


def test_readme_cell_example_keeps_the_cell_contract(monkeypatch):
    """The printed MGU, loaded in process (registration stubbed so the registry is untouched):
    its loop equals its step reference, in values and gradients, it records its gates, and
    its parameter formula counts its parameters."""
    import torch

    import rnnbench
    from rnnbench.cell import Cell

    monkeypatch.setattr(rnnbench, "register_cell", lambda name: (lambda cls: cls))
    namespace: dict = {}
    exec(compile(_block("python", "## Add a cell"), "mgu.py", "exec"), namespace)
    mgu = namespace["MGU"]
    assert issubclass(mgu, Cell)
    torch.manual_seed(0)
    cell = mgu(3, 5).double()
    x = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([6, 4])
    y, h = cell(x, cell.initial_state(2), lengths)  # forward: one GEMM for the inputs, then the loop
    y_ref, h_ref = cell.loop_steps(x, cell.initial_state(2), lengths)
    assert torch.allclose(y, y_ref, atol=1e-12) and torch.allclose(h, h_ref, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x: cell(x, cell.initial_state(2), lengths)[0], (x,))
    _, _, gates = cell.step_with_gates(x[:, 0], cell.initial_state(2))
    assert set(gates) == set(mgu.gate_names) and mgu.retention_gate in gates
    assert torch.allclose(gates["keep"], 1 - gates["f"])
    for bias in (True, False):
        counted = sum(p.numel() for p in mgu(3, 5, bias=bias).parameters())
        assert mgu.num_parameters(3, 5, bias=bias) == counted


@pytest.mark.slow
def test_a_quoted_main_job_run_is_reproduced(workdir):
    """The README quotes the main job's results; one of its runs, named in a comment beside
    them (``<!-- quoted-run: OVERRIDES => METRIC=VALUE steps_to_solve=N -->``), is run again
    here with the same config and must give the quoted numbers (CPU runs are deterministic;
    the tolerance allows other CPUs' floating-point kernels)."""
    match = re.search(r"<!-- quoted-run: (.*?) => (\w+)=([0-9.e-]+) steps_to_solve=(\d+|None) -->",
                      README.read_text(encoding="utf-8"))
    assert match, "the README names no quoted run"
    overrides, metric, value, steps = match.group(1).split(), match.group(2), float(match.group(3)), match.group(4)
    proc = run_cli(["experiment=long_range_quick", "hydra.mode=RUN", *overrides], workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = summaries(workdir / "results")
    assert record["metrics"]["test"][metric] == pytest.approx(value, rel=1e-3)
    assert str(record["steps_to_solve"]) == steps
