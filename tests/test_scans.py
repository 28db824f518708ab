"""The parallel paths of the scan cells (minGRU, minLSTM, QRNN, LRU) against their step
references at the tolerances their issue states: float64 to 1e-10 and float32 to 1e-5 in
values and every gradient, with variable lengths and an initial state; and the log-space scan
at a long sequence (4,096 steps), where its cumulative sums are most delicate."""

from __future__ import annotations

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
@pytest.mark.parametrize("name", SCAN_CELLS)
def test_parallel_path_equals_the_step_reference(name, dtype):
    torch.manual_seed(0)
    cell = CELLS.get(name)(3, 6).to(dtype).eval()
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
    cell = CELLS.get(name)(2, 4).eval()
    cell.load_state_dict({k: v.float() for k, v in reference_cell.state_dict().items()})
    x = torch.randn(2, 4096, 2, dtype=torch.float64)
    with torch.no_grad():
        y, _ = cell(x.float())
        y_ref, _ = reference_cell.loop_steps(x)
    assert torch.isfinite(y).all()
    assert float((y.double() - y_ref).abs().max()) <= 1e-4
