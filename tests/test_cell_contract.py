"""The Cell contract, checked for every registered cell, every cell preset and every
option set a cell declares: new cells, presets and options are picked up automatically.

A configuration is a cell class and its options:

- every registered cell with its defaults, at ``input_size != hidden_size`` and at
  ``input_size == hidden_size`` (some cells take another path then: SRU's highway,
  LRU's skip term);
- every option set in its ``option_examples`` (:class:`rnnbench.cell.Cell`);
- every preset ``conf/cell/*.yaml``, composed through Hydra as ``rnnbench cell=<preset>``
  does (options that depend on the task resolved without one), with its own depth,
  direction and dropout for the stack tests.

Numerical comparisons run in float64 and eval mode. Paths: ``fused`` (``forward`` with
``use_fused``, only for cells with ``fused_forward``), ``loop`` (``forward`` without it:
one projection GEMM, then ``recurrence`` per step), ``steps`` (``loop_steps``: ``step`` at
every step, the reference).
"""

from dataclasses import dataclass, field
from importlib.resources import files

import pytest
import torch

from helpers.cells import run_path
from helpers.cli import compose_config
from rnnbench.cell import map_state, state_leaves
from rnnbench.experiment import cell_options
from rnnbench.models import count_parameters
from rnnbench.registry import CELLS
from rnnbench.stack import CellStack

CELL_NAMES = CELLS.names()
PRESETS = sorted(p.name[:-5] for p in files("rnnbench.conf").joinpath("cell").iterdir() if p.name.endswith(".yaml"))
I, H, B, T = 3, 5, 4, 7
LENGTHS = [7, 4, 1, 0]  # full, partial, one step, empty


@dataclass(frozen=True)
class Config:
    """A cell class with options, and the stack the stack tests wrap it in."""

    name: str
    options: dict = field(default_factory=dict, hash=False)
    input_size: int = I
    num_layers: int = 2
    bidirectional: bool = True
    dropout: float = 0.0

    @property
    def cls(self):
        return CELLS.get(self.name)


def _label(options: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in options.items()) or "defaults"


def configurations() -> list:
    configs = []
    for name in CELL_NAMES:
        configs.append(pytest.param(Config(name), id=name))
        configs.append(pytest.param(Config(name, input_size=H), id=f"{name}[I=H]"))
        configs += [pytest.param(Config(name, dict(options)), id=f"{name}[{_label(options)}]")
                    for options in CELLS.get(name).option_examples]
    for preset in PRESETS:
        cell_config = compose_config([f"cell={preset}"])["cell"]
        cls = CELLS.get(cell_config["name"])
        configs.append(pytest.param(Config(cell_config["name"], cls.resolve_options(cell_options(cell_config), None),
                                           num_layers=cell_config["num_layers"],
                                           bidirectional=cell_config["bidirectional"],
                                           dropout=cell_config["dropout"]), id=f"preset:{preset}"))
    return configs


CONFIGS = configurations()
FUSED_CONFIGS = [c for c in CONFIGS if c.values[0].cls._defines("fused_forward")]


def make_cell(config: Config, dtype=torch.float64):
    torch.manual_seed(0)
    return config.cls(config.input_size, H, **config.options).to(dtype).eval()


def make_stack(config: Config):
    torch.manual_seed(0)
    return CellStack(config.cls, config.input_size, H, num_layers=config.num_layers,
                     bidirectional=config.bidirectional, dropout=config.dropout, **config.options).double().eval()


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


def assert_same_run(run, reference):
    (y, s, g), (y_ref, s_ref, g_ref) = run, reference
    torch.testing.assert_close(y, y_ref)
    for leaf, ref in zip(state_leaves(s), state_leaves(s_ref), strict=True):
        torch.testing.assert_close(leaf, ref)
    for grad, ref in zip(g, g_ref, strict=True):
        assert (grad is None) == (ref is None)
        if ref is not None:
            torch.testing.assert_close(grad, ref)


def test_some_cells_are_registered_and_presets_found():
    assert "gru" in CELL_NAMES and "gru" in PRESETS


@pytest.mark.parametrize("config", CONFIGS)
def test_output_and_state_shapes(config):
    cell = make_cell(config, dtype=torch.float32)
    x = torch.randn(B, T, config.input_size)
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


def _compare_with_steps(config, path, with_lengths, with_state):
    cell = make_cell(config)
    torch.manual_seed(1)
    x = torch.randn(B, T, config.input_size, dtype=torch.float64)
    state = reachable_state(cell, B) if with_state else cell.initial_state(B)
    lengths = torch.tensor(LENGTHS) if with_lengths else None
    reference = values_and_grads(cell, cell.loop_steps, x, state, lengths)
    run = values_and_grads(cell, lambda *args: run_path(cell, path, *args), x, state, lengths)
    assert_same_run(run, reference)


@pytest.mark.parametrize("config", FUSED_CONFIGS)
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
def test_fused_forward_matches_step_loop(config, with_lengths, with_state):
    """The fast path agrees with the ``step`` reference, values and gradients."""
    _compare_with_steps(config, "fused", with_lengths, with_state)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
def test_loop_forward_matches_step_loop(config, with_lengths, with_state):
    """The loop (one projection GEMM, then ``recurrence`` per step) agrees with ``step`` at
    every step, values and gradients (the same code for a cell that writes only ``step``)."""
    _compare_with_steps(config, "loop", with_lengths, with_state)


@pytest.mark.parametrize("config", CONFIGS)
def test_continuing_from_the_returned_state_is_exact(config):
    """Two calls, the second from the state the first returned, equal one call over the whole."""
    cell = make_cell(config)
    x = torch.randn(B, T, config.input_size, dtype=torch.float64)
    with torch.no_grad():
        y, state = cell(x)
        y_first, middle = cell(x[:, :3])
        y_second, end = cell(x[:, 3:], middle)
    torch.testing.assert_close(torch.cat([y_first, y_second], dim=1), y)
    for leaf, ref in zip(state_leaves(end), state_leaves(state)):
        torch.testing.assert_close(leaf, ref)


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


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("path", ["forward", "loop_steps"])
def test_padded_steps_leave_state_unchanged(config, path):
    cell = make_cell(config)
    torch.manual_seed(2)
    x = 10 * torch.randn(B, T, config.input_size, dtype=torch.float64)  # large padding values must not leak in
    with torch.no_grad():
        check_padding(getattr(cell, path), x, LENGTHS, cell.initial_state(B))


@pytest.mark.parametrize("config", CONFIGS)
def test_padding_through_bidirectional_stack(config):
    """The stack (two bidirectional layers; a preset's own depth and direction) keeps padding exact."""
    stack = make_stack(config)
    torch.manual_seed(3)
    x = 10 * torch.randn(B, T, config.input_size, dtype=torch.float64)
    with torch.no_grad():
        check_padding(stack, x, LENGTHS, stack.initial_state(B))


@pytest.mark.parametrize("config", CONFIGS)
def test_gradients_reach_every_parameter(config):
    cell = make_cell(config).train()
    x = torch.randn(B, T, config.input_size, dtype=torch.float64)
    y, state = cell(x, lengths=torch.tensor(LENGTHS))
    weighted_sum(y, state).backward()
    for param_name, param in cell.named_parameters():
        assert param.grad is not None, f"{param_name} gets no gradient"
        assert param.grad.abs().sum() > 0, f"{param_name} gets an all-zero gradient"


@pytest.mark.parametrize("config", CONFIGS)
def test_state_size_counts_the_state(config):
    cell = make_cell(config, dtype=torch.float32)
    assert cell.state_size == sum(leaf.numel() for leaf in state_leaves(cell.initial_state(1)))
    stack = make_stack(config)
    assert stack.state_size == sum(c.state_size for c in stack.cells)
    assert stack.state_size == sum(leaf.numel() for leaf in state_leaves(stack.initial_state(1)))


@pytest.mark.parametrize("config", CONFIGS)
def test_parameter_formula_matches_counted_parameters(config):
    formula = config.cls.num_parameters(config.input_size, H, **config.options)
    if formula is not None:  # a plugin may leave it out; built-in cells state it (tests/test_sizing.py)
        assert formula == count_parameters(make_cell(config))


@pytest.mark.parametrize("config", CONFIGS)
def test_gradcheck(config):
    cell = make_cell(config)
    names = [n for n, _ in cell.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in cell.parameters()]
    x = torch.randn(2, 4, config.input_size, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([4, 2])

    def run(x, *param_values):
        y, state = torch.func.functional_call(cell, dict(zip(names, param_values)), (x,), {"lengths": lengths})
        return (y, *state_leaves(state))

    assert torch.autograd.gradcheck(run, (x, *params))
