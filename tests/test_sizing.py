"""Size, cost and introspection, for every registered cell (picked up automatically):
parameter-count formulas against counted parameters, FLOPs per step, gates over
time equal to the plain forward pass, and ``model.param_budget``."""

from __future__ import annotations

import pytest
import torch

from helpers.cli import compose_config
from rnnbench.errors import ConfigError
from rnnbench.models import count_parameters
from rnnbench.registry import CELLS
from rnnbench.experiment import build_experiment
from rnnbench.stack import CellStack

BUILTIN_CELLS = ("gru", "lstm", "rnn", "indrnn", "sru")


@pytest.mark.parametrize("name", CELLS.names())
@pytest.mark.parametrize("input_size, hidden_size", [(3, 5), (8, 8)])
def test_parameter_formula_matches_counted_parameters(name, input_size, hidden_size):
    cls = CELLS.get(name)
    formula = cls.num_parameters(input_size, hidden_size)
    if formula is None:
        assert name not in BUILTIN_CELLS, f"built-in cell {name!r} must state its parameter formula"
        pytest.skip(f"{name} states no parameter formula")
    assert formula == count_parameters(cls(input_size, hidden_size))


@pytest.mark.parametrize("name", [n for n in BUILTIN_CELLS if n in CELLS.names()])
def test_builtin_cells_state_flops_per_step(name):
    small, large = CELLS.get(name)(4, 8), CELLS.get(name)(4, 16)
    assert 0 < small.flops_per_step() < large.flops_per_step()


@pytest.mark.parametrize("name", CELLS.names())
def test_gates_over_time_leave_results_unchanged(name):
    torch.manual_seed(0)
    cell = CELLS.get(name)(3, 4).double()
    x = torch.randn(2, 6, 3, dtype=torch.double)
    lengths = torch.tensor([6, 4])
    y, state = cell(x, lengths=lengths)
    y_g, state_g, gates = cell.forward_with_gates(x, lengths=lengths)
    torch.testing.assert_close(y_g, y)
    torch.testing.assert_close(state_g, state)
    assert set(gates) == set(cell.gate_names)
    for name_, g in gates.items():
        assert g.shape[:2] == (2, 6), name_
        assert torch.all(g[1, 4:] == 0), f"gate {name_} not zero on padding"


def test_stack_gates_are_keyed_by_layer_and_direction_in_input_time_order():
    torch.manual_seed(0)
    stack = CellStack(CELLS.get("gru"), 3, 4, num_layers=2, bidirectional=True).double().eval()
    x = torch.randn(2, 5, 3, dtype=torch.double)
    lengths = torch.tensor([5, 3])
    y, _ = stack(x, lengths=lengths)
    y_g, _, gates = stack.forward_with_gates(x, lengths=lengths)
    torch.testing.assert_close(y_g, y)
    assert {"l0.fwd.z", "l0.bwd.z", "l1.fwd.r", "l1.bwd.n"} <= set(gates)
    # The backward cell of layer 0 read sequence 1 as x[1, 2], x[1, 1], x[1, 0]: its update gate at
    # input time 0 is the one of its last step, computed from that step alone.
    backward = stack.layers[0][1]
    h = backward.initial_state(1, dtype=torch.double)
    for t in (2, 1):
        _, h = backward.step(x[1:2, t], h)
    _, _, last = backward.step_with_gates(x[1:2, 0], h)
    torch.testing.assert_close(gates["l0.bwd.z"][1, 0], last["z"][0])


def _experiment(*overrides: str):
    return build_experiment(compose_config(overrides))


@pytest.mark.parametrize("preset", ["gru", "lstm", "rnn", "bigru", "stacked_gru"])
@pytest.mark.parametrize("task", ["adding", "copy"])
def test_param_budget_lands_within_a_few_percent(preset, task):
    exp = _experiment(f"cell={preset}", f"task={task}", "model.param_budget=70000")
    assert abs(count_parameters(exp.model) - 70000) / 70000 < 0.03
    assert exp.config["cell"]["hidden_size"] == exp.stack.hidden_size  # recorded as chosen


def test_param_budget_too_small_is_refused():
    with pytest.raises(ConfigError, match="model.param_budget=10 is too small"):
        _experiment("cell=gru", "model.param_budget=10")
