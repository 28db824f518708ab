"""The Cell contract, checked for every registered cell (new cells are picked up automatically).

Each cell is built with its defaults, ``CELLS.get(name)(input_size, hidden_size)``.
Numerical comparisons run in float64 and eval mode.
"""

import pytest
import torch

from rnnbench.cell import map_state, state_leaves
from rnnbench.registry import CELLS
from rnnbench.stack import CellStack

CELL_NAMES = CELLS.names()
I, H, B, T = 3, 5, 4, 7
LENGTHS = [7, 4, 1, 0]  # full, partial, one step, empty


def make_cell(name, input_size=I, hidden_size=H, dtype=torch.float64):
    torch.manual_seed(0)
    return CELLS.get(name)(input_size, hidden_size).to(dtype).eval()


def reachable_state(cell, batch_size, dtype=torch.float64):
    """A non-trivial state any cell can reach: the state after a random prefix."""
    with torch.no_grad():
        _, state = cell.loop_steps(torch.randn(batch_size, 3, cell.input_size, dtype=dtype))
    return state


def weighted_sum(y, state):
    """A scalar that depends on every output and state entry, with fixed random weights."""
    gen = torch.Generator().manual_seed(1234)
    total = (y * torch.randn(y.shape, generator=gen, dtype=y.dtype)).sum()
    for leaf in state_leaves(state):
        total = total + (leaf * torch.randn(leaf.shape, generator=gen, dtype=leaf.dtype)).sum()
    return total


def values_and_grads(cell, run, x, state, lengths):
    """Outputs, final state and the gradients w.r.t. x, the initial state and every parameter."""
    x = x.detach().clone().requires_grad_()
    state = map_state(lambda s: s.detach().clone().requires_grad_(), state)
    y, final = run(x, state, lengths)
    wrt = [x, *state_leaves(state), *cell.parameters()]
    grads = torch.autograd.grad(weighted_sum(y, final), wrt, allow_unused=True)
    return y, final, grads


def test_some_cells_are_registered():
    assert "gru" in CELL_NAMES


@pytest.mark.parametrize("name", CELL_NAMES)
def test_output_and_state_shapes(name):
    cell = make_cell(name, dtype=torch.float32)
    x = torch.randn(B, T, I)
    expected = [leaf.shape for leaf in state_leaves(cell.initial_state(B))]
    for lengths in (None, torch.tensor(LENGTHS)):
        y, state = cell(x, lengths=lengths)
        assert y.shape == (B, T, cell.output_size)
        assert y.dtype == x.dtype
        assert [leaf.shape for leaf in state_leaves(state)] == expected
    y, state = cell(x[:, :0])  # an empty batch of sequences leaves the state as it was
    assert y.shape == (B, 0, cell.output_size)
    for leaf, init in zip(state_leaves(state), state_leaves(cell.initial_state(B))):
        torch.testing.assert_close(leaf, init)


@pytest.mark.parametrize("name", CELL_NAMES)
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
def test_forward_matches_step_loop(name, with_lengths, with_state):
    """The fast ``forward`` agrees with the ``step`` reference, values and gradients."""
    cell = make_cell(name)
    torch.manual_seed(1)
    x = torch.randn(B, T, I, dtype=torch.float64)
    state = reachable_state(cell, B) if with_state else cell.initial_state(B)
    lengths = torch.tensor(LENGTHS) if with_lengths else None
    y_ref, s_ref, g_ref = values_and_grads(cell, cell.loop_steps, x, state, lengths)
    y, s, g = values_and_grads(cell, cell.forward, x, state, lengths)
    torch.testing.assert_close(y, y_ref)
    for leaf, ref in zip(state_leaves(s), state_leaves(s_ref)):
        torch.testing.assert_close(leaf, ref)
    for grad, ref in zip(g, g_ref):
        assert (grad is None) == (ref is None)
        if ref is not None:
            torch.testing.assert_close(grad, ref)


def check_padding(model, x, lengths, initial):
    """Row by row: batched run with lengths == run on the unpadded prefix alone."""
    y, state = model(x, lengths=torch.tensor(lengths))
    for b, length in enumerate(lengths):
        assert torch.all(y[b, length:] == 0), "outputs at padded steps must be 0"
        row_state = map_state(lambda s: s[b : b + 1], state)
        if length == 0:
            expected = map_state(lambda s: s[b : b + 1], initial)
        else:
            y_row, expected = model(x[b : b + 1, :length])
            torch.testing.assert_close(y[b : b + 1, :length], y_row)
        for leaf, ref in zip(state_leaves(row_state), state_leaves(expected)):
            torch.testing.assert_close(leaf, ref)


@pytest.mark.parametrize("name", CELL_NAMES)
@pytest.mark.parametrize("path", ["forward", "loop_steps"])
def test_padded_steps_leave_state_unchanged(name, path):
    cell = make_cell(name)
    torch.manual_seed(2)
    x = 10 * torch.randn(B, T, I, dtype=torch.float64)  # large padding values must not leak in
    with torch.no_grad():
        check_padding(getattr(cell, path), x, LENGTHS, cell.initial_state(B))


@pytest.mark.parametrize("name", CELL_NAMES)
def test_padding_through_bidirectional_stack(name):
    torch.manual_seed(0)
    stack = CellStack(CELLS.get(name), I, H, num_layers=2, bidirectional=True).double().eval()
    torch.manual_seed(3)
    x = 10 * torch.randn(B, T, I, dtype=torch.float64)
    with torch.no_grad():
        check_padding(stack, x, LENGTHS, stack.initial_state(B))


@pytest.mark.parametrize("name", CELL_NAMES)
def test_gradients_reach_every_parameter(name):
    cell = make_cell(name).train()
    x = torch.randn(B, T, I, dtype=torch.float64)
    y, state = cell(x, lengths=torch.tensor(LENGTHS))
    weighted_sum(y, state).backward()
    for param_name, param in cell.named_parameters():
        assert param.grad is not None, f"{param_name} gets no gradient"
        assert param.grad.abs().sum() > 0, f"{param_name} gets an all-zero gradient"


@pytest.mark.parametrize("name", CELL_NAMES)
def test_state_size_counts_the_state(name):
    cell = make_cell(name, dtype=torch.float32)
    assert cell.state_size == sum(leaf.numel() for leaf in state_leaves(cell.initial_state(1)))
    stack = CellStack(CELLS.get(name), I, H, num_layers=2, bidirectional=True)
    assert stack.state_size == 4 * cell.state_size
    assert stack.state_size == sum(leaf.numel() for leaf in state_leaves(stack.initial_state(1)))


@pytest.mark.parametrize("name", CELL_NAMES)
def test_gradcheck(name):
    cell = make_cell(name, input_size=2, hidden_size=3)
    names = [n for n, _ in cell.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in cell.parameters()]
    x = torch.randn(2, 4, 2, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([4, 2])

    def run(x, *param_values):
        y, state = torch.func.functional_call(cell, dict(zip(names, param_values)), (x,), {"lengths": lengths})
        return (y, *state_leaves(state))

    assert torch.autograd.gradcheck(run, (x, *params))
