"""IndRNN against its equations (an oracle written here), its custom autograd Function,
its constraint and initialisations, its options, and a short training run.

Numerical comparisons run in float64 on three paths of the cell: the fused
recurrence (``forward``, ``use_fused=True``), the Python loop through autograd
(``use_fused=False``) and the reference ``Cell.loop_steps`` (``step`` at every step).
"""

import pytest
import torch

from helpers.cells import run_path
from helpers.cli import compose_config
from rnnbench.cells.indrnn import IndRNN, _IndRNNRecurrence
from rnnbench.errors import ConfigError
from rnnbench.registry import CELLS
from rnnbench.experiment import build_experiment
from rnnbench.stack import CellStack

I, H, B, T = 3, 5, 4, 7
LENGTHS = [7, 3, 1, 0]  # full, partial, one step, empty
PATHS = ("fused", "loop", "steps")


def oracle(x, h0, W, u, b, act, lengths=None):
    """The paper's equation, step by step: h_t = act(W x_t + u * h_{t-1} + b); padding keeps h, outputs 0."""
    h, ys = h0, []
    for t in range(x.shape[1]):
        new = act(x[:, t] @ W.T + u * h + (0 if b is None else b))
        real = torch.ones(x.shape[0], 1, dtype=torch.bool) if lengths is None else (t < lengths)[:, None]
        h = torch.where(real, new, h)
        ys.append(torch.where(real, new, torch.zeros_like(new)))
    return torch.stack(ys, dim=1), h


def make_cell(**options):
    torch.manual_seed(0)
    cell = IndRNN(I, H, **options).double()
    with torch.no_grad():  # signed u, and biases: every branch of the equations is exercised
        cell.weight_hh.uniform_(-1.2, 1.2)
        if cell.bias_ih is not None:
            cell.bias_ih.normal_()
    return cell


def test_registered_as_indrnn():
    assert CELLS.get("indrnn") is IndRNN
    assert IndRNN.gate_names == ("a",)


def test_parameter_shapes():
    shapes = {name: tuple(p.shape) for name, p in IndRNN(I, H).named_parameters()}
    assert shapes == {"weight_ih": (H, I), "weight_hh": (H,), "bias_ih": (H,)}
    assert [name for name, _ in IndRNN(I, H, bias=False).named_parameters()] == ["weight_ih", "weight_hh"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lengths", [None, LENGTHS])
def test_matches_equations(path, nonlinearity, bias, lengths):
    """Outputs, final state and gradients (x, h0, every parameter) equal the oracle's."""
    cell = make_cell(nonlinearity=nonlinearity, bias=bias)
    act = torch.relu if nonlinearity == "relu" else torch.tanh
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(B, T, I, dtype=torch.float64, generator=gen, requires_grad=True)
    h0 = torch.rand(B, H, dtype=torch.float64, generator=gen, requires_grad=True)
    lengths_t = None if lengths is None else torch.tensor(lengths)
    wy = torch.randn(B, T, H, dtype=torch.float64, generator=gen)
    wh = torch.randn(B, H, dtype=torch.float64, generator=gen)
    params = list(cell.parameters())

    y_ref, h_ref = oracle(x, h0, cell.weight_ih, cell.weight_hh, cell.bias_ih, act, lengths_t)
    g_ref = torch.autograd.grad((y_ref * wy).sum() + (h_ref * wh).sum(), [x, h0, *params])
    y, h = run_path(cell, path, x, h0, lengths_t)
    g = torch.autograd.grad((y * wy).sum() + (h * wh).sum(), [x, h0, *params])

    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(h, h_ref)
    for grad, ref in zip(g, g_ref):
        torch.testing.assert_close(grad, ref)


def test_gates_are_the_preactivation():
    cell = make_cell()
    x = torch.randn(B, T, I, dtype=torch.float64)
    y, _, gates = cell.forward_with_gates(x, lengths=torch.tensor(LENGTHS))
    torch.testing.assert_close(y, cell(x, lengths=torch.tensor(LENGTHS))[0])
    assert gates["a"].shape == (B, T, H)
    torch.testing.assert_close(torch.relu(gates["a"]), y)


@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
def test_gradcheck_custom_function(nonlinearity):
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(6, 2, 3, dtype=torch.float64, generator=gen, requires_grad=True)  # (T, B, H)
    u = torch.empty(3, dtype=torch.float64).uniform_(-1.1, 1.1, generator=gen).requires_grad_()
    h0 = torch.rand(2, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, u, h0: _IndRNNRecurrence.apply(a, u, h0, nonlinearity), (a, u, h0))


def test_constrain_clips_u_after_an_optimiser_step():
    max_len = 10
    bound = 2 ** (1 / max_len)
    cell = IndRNN(I, H, max_len=max_len, recurrent_init="identity")
    assert cell.recurrent_bound == pytest.approx(bound)
    optimiser = torch.optim.SGD(cell.parameters(), lr=100.0)
    y, _ = cell(torch.rand(B, T, I) + 1.0)
    (-y.sum()).backward()  # pushes active units' u far above the bound
    optimiser.step()
    assert cell.weight_hh.abs().max() > bound
    cell.constrain_()
    assert cell.weight_hh.abs().max() <= bound
    with torch.no_grad():  # the bound is on |u|: large negative values are clipped too
        cell.weight_hh.fill_(-5.0)
    cell.constrain_()
    torch.testing.assert_close(cell.weight_hh, torch.full((H,), -bound))

    free = IndRNN(I, H)  # max_len=None: no constraint
    with torch.no_grad():
        free.weight_hh.fill_(5.0)
    free.constrain_()
    assert torch.all(free.weight_hh == 5.0)


@pytest.mark.parametrize("recurrent_init, low, high", [
    ("uniform", 0.0, 1.0),
    ("last_layer_long", 0.5 ** (1 / 50), 2 ** (1 / 50)),
    ("identity", 1.0, 1.0),
])
def test_recurrent_init_ranges(recurrent_init, low, high):
    torch.manual_seed(0)
    u = IndRNN(I, 1000, max_len=50, recurrent_init=recurrent_init).weight_hh
    assert u.min() >= low and u.max() <= high
    if low < high:  # spread over the range, not a constant
        assert u.min() < low + 0.1 * (high - low) and u.max() > high - 0.1 * (high - low)


def test_input_init():
    torch.manual_seed(0)
    repo = IndRNN(64, 500)  # default: kaiming_uniform(a=8, fan_in), zero bias
    bound = (6 / (65 * 64)) ** 0.5
    assert repo.weight_ih.abs().max() <= bound and repo.weight_ih.abs().max() > 0.9 * bound
    assert torch.all(repo.bias_ih == 0)
    linear = IndRNN(64, 500, input_init="linear")  # torch.nn.Linear's U(-1/sqrt(I), 1/sqrt(I))
    for p in (linear.weight_ih, linear.bias_ih):
        assert p.abs().max() <= 64**-0.5 and p.abs().max() > 0.9 * 64**-0.5


@pytest.mark.parametrize("bias", [True, False])
def test_sizes(bias):
    cell = IndRNN(I, H, bias=bias)
    assert IndRNN.num_parameters(I, H, bias=bias) == sum(p.numel() for p in cell.parameters())
    assert cell.flops_per_step() == 2 * H * I + (4 * H if bias else 3 * H)
    assert cell.state_size == H


@pytest.mark.parametrize("option, value", [
    ("bias", "yes"),
    ("nonlinearity", "sigmoid"),
    ("max_len", 0),
    ("max_len", 10.0),
    ("max_len", True),
    ("recurrent_init", "orthogonal"),
    ("input_init", "xavier"),
])
def test_bad_options_name_the_key(option, value):
    with pytest.raises(ConfigError, match=rf"cell\.{option}="):
        IndRNN(I, H, **{option: value})


def test_last_layer_long_needs_max_len():
    with pytest.raises(ConfigError, match=r"cell\.recurrent_init=.*cell\.max_len"):
        IndRNN(I, H, recurrent_init="last_layer_long")


def test_max_len_is_the_true_sequence_length_of_the_task():
    """``max_len: task`` bounds |u| by 2^(1/L) with L the steps the model really reads: the copy
    task's sequences have T + 2K steps, not the gap T."""
    adding = build_experiment(compose_config(["cell=indrnn", "task=adding", "task.seq_len=37", "cell.hidden_size=4"]))
    assert {cell.max_len for cell in adding.stack.cells} == {37}
    copy = build_experiment(compose_config(["cell=indrnn", "task=copy", "task.seq_len=37", "task.copy_len=5",
                                            "cell.hidden_size=4"]))
    assert {cell.max_len for cell in copy.stack.cells} == {37 + 2 * 5}
    assert copy.stack.cells[0].recurrent_bound == pytest.approx(2 ** (1 / 47))
    assert IndRNN.resolve_options({"max_len": "task"}, None) == {"max_len": None}  # no task: unconstrained
    assert IndRNN.resolve_options({"max_len": 12}, None) == {"max_len": 12}


def test_last_layer_long_initialises_only_the_last_layer_long():
    """The authors' adding script: layer 1 draws u ~ U(0, 2^(1/T)), the last layer U(2^(-1/T), 2^(1/T))."""
    T = 10
    stack = CellStack(IndRNN, 2, 4000, num_layers=2, max_len=T, recurrent_init="last_layer_long")
    first, last = (cell.weight_hh.detach() for cell in stack.cells)
    assert 0 <= float(first.min()) < 0.01 and float(first.max()) <= 2 ** (1 / T)
    assert float(last.min()) >= 0.5 ** (1 / T) and float(last.max()) <= 2 ** (1 / T)
    assert float(last.min()) < 0.5 ** (1 / T) + 0.01  # the whole range is drawn
