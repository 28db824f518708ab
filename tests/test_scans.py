"""The fast paths of the scan cells (minGRU, minLSTM, QRNN, LRU), by each scan (``scan``:
the parallel scan and the fused loop), against their step references at the tolerances
their issue states: float64 to 1e-10 and float32 to 1e-5 in values and every gradient, with
variable lengths and an initial state; and the log-space scan at a long sequence (4,096
steps), where its cumulative sums are most delicate."""

from __future__ import annotations

import sys

import pytest
import torch

from rnnbench.cell import state_leaves
from rnnbench.registry import CELLS

SCAN_CELLS = ["mingru", "minlstm", "qrnn", "lru"]
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


def _run(cell, fused: bool, x, lengths):
    x = x.detach().clone().requires_grad_()
    cell.use_fused = fused
    y, state = cell(x, None, lengths) if fused else cell.loop_steps(x, None, lengths)
    total = (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum()
    total = total + sum(leaf.sum() for leaf in state_leaves(state))
    grads = torch.autograd.grad(total, [x, *cell.parameters()])
    return [y.detach(), *[leaf.detach() for leaf in state_leaves(state)], *grads]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("scan", ["parallel", "loop"])
@pytest.mark.parametrize("name", SCAN_CELLS)
def test_fast_path_equals_the_step_reference(name, scan, dtype):
    torch.manual_seed(0)
    cell = CELLS.get(name)(3, 6, scan=scan).to(dtype).eval()
    x = torch.randn(4, 40, 3, dtype=dtype)  # 40 steps: more than two scan blocks of 16
    lengths = torch.tensor([40, 33, 16, 1])
    for fused, reference in zip(_run(cell, True, x, lengths), _run(cell, False, x, lengths), strict=True):
        scale = reference.abs().max().clamp(min=1.0)
        assert float((fused - reference).abs().max() / scale) <= TOLERANCE[dtype]


@pytest.mark.parametrize("name", ["mingru", "minlstm"])
def test_log_space_scan_holds_at_4096_steps(name):
    """float32 parallel path against the float64 step reference over 4,096 steps."""
    torch.manual_seed(0)
    reference_cell = CELLS.get(name)(2, 4).double().eval()
    cell = CELLS.get(name)(2, 4, scan="parallel").eval()
    cell.load_state_dict({k: v.float() for k, v in reference_cell.state_dict().items()})
    x = torch.randn(2, 4096, 2, dtype=torch.float64)
    with torch.no_grad():
        y, _ = cell(x.float())
        y_ref, _ = reference_cell.loop_steps(x)
    assert torch.isfinite(y).all()
    assert float((y.double() - y_ref).abs().max()) <= 1e-4


@pytest.mark.parametrize("name", SCAN_CELLS)
def test_auto_scan_runs_the_loop_on_cpu(name, monkeypatch):
    """``scan: auto`` (the presets' value) on a CPU tensor takes the fused loop, not the parallel scan."""
    import rnnbench.scans as scans

    def refuse(*args):
        raise AssertionError("the parallel scan ran on the CPU with scan=auto")

    cell_module = sys.modules[CELLS.get(name).__module__]
    monkeypatch.setattr(scans.AssociativeScan, "apply", refuse)
    monkeypatch.setattr(cell_module, "log_space_scan", refuse, raising=False)
    cell = CELLS.get(name)(3, 6)
    assert cell.scan == "auto"
    y, _ = cell(torch.randn(2, 20, 3))
    assert torch.isfinite(y).all()
    assert scans.use_parallel_scan("auto", torch.device("cuda")) and not scans.use_parallel_scan("auto", y.device)


def test_min_rnn_activation_g_is_the_papers_piecewise_function():
    """``g``, ``log g`` and ``(log g)'`` (written without ``torch.where``) against Feng et al.
    (2024, appendix B) as written: ``g(v) = v + 1/2`` for ``v >= 0``, ``σ(v)`` below; the
    derivative against autograd of the piecewise ``log g``, in float64, at 0 and far out."""
    from rnnbench.cells.mingru import g, log_g, log_g_derivative

    v = torch.cat([torch.linspace(-40, 40, 8001, dtype=torch.float64), torch.tensor([0.0, -1e-300, 1e-300, 1e4], dtype=torch.float64)])
    paper = torch.where(v >= 0, v + 0.5, torch.sigmoid(v))
    assert torch.equal(g(v), paper)
    # log σ(v) as -softplus(-v) (stable); an absolute error in log g is a relative error in g
    paper_log = torch.where(v >= 0, torch.log(v + 0.5), -torch.nn.functional.softplus(-v))
    assert float((log_g(v) - paper_log).abs().max()) <= 1e-14
    leaf = v.clone().requires_grad_()
    torch.where(leaf >= 0, torch.log(leaf + 0.5), torch.nn.functional.logsigmoid(leaf)).sum().backward()
    assert torch.allclose(log_g_derivative(v), leaf.grad, rtol=1e-14, atol=0)
