"""LSTM and RNN cells against torch.nn.LSTM / torch.nn.RNN with copied weights.

Every comparison runs in float64 on three paths of our cell: the fused kernel
(``forward``, ``use_fused=True``), the Python loop (``use_fused=False``) and the
reference ``Cell.loop_steps`` (``step`` at every time step). Outputs, final states
and the gradients of the input, the initial state and every parameter must match.
"""

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from helpers.cells import run_path
from rnnbench.errors import ConfigError
from rnnbench.registry import get_cell
from rnnbench.cells.lstm import LSTM
from rnnbench.cells.rnn import RNN

CONF_CELL = Path(__file__).resolve().parents[1] / "conf" / "cell"
PATHS = ("fused", "loop", "steps")
# (registry name, our options, torch class, torch options)
CASES = {
    "lstm": ("lstm", {}, nn.LSTM, {}),
    "rnn_tanh": ("rnn", {"nonlinearity": "tanh"}, nn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": ("rnn", {"nonlinearity": "relu"}, nn.RNN, {"nonlinearity": "relu"}),
}
B, T, I, H = 4, 7, 3, 5
LENGTHS = [5, 7, 2, 6]  # unsorted, one full-length sequence, several padded


# --- helpers --------------------------------------------------------------------------
def make_pair(case: str, bias: bool = True, seed: int = 0):
    """Our cell and the torch module, float64, with the torch module's weights copied over."""
    name, options, torch_cls, torch_options = CASES[case]
    torch.manual_seed(seed)
    ref = torch_cls(I, H, bias=bias, batch_first=True, **torch_options).double()
    cell = get_cell(name)(I, H, bias=bias, **options).double()
    # Same names as torch's layer 0, without the "_l0" suffix: load_state_dict checks names and shapes.
    cell.load_state_dict({k.removesuffix("_l0"): v for k, v in ref.state_dict().items()})
    return cell, ref


def leaves(state):
    return list(state) if isinstance(state, tuple) else [state]


def random_state(cell, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    state = cell.initial_state(B, dtype=torch.float64)
    return tuple(torch.randn(s.shape, generator=g, dtype=torch.float64) for s in leaves(state))


def as_cell_state(cell, tensors):
    return tensors if isinstance(cell, LSTM) else tensors[0]


def as_torch_hx(cell, tensors):
    hx = tuple(t.unsqueeze(0) for t in tensors)
    return hx if isinstance(cell, LSTM) else hx[0]


def from_torch_state(cell, hn):
    return [t[0] for t in (hn if isinstance(cell, LSTM) else (hn,))]


def loss_of(y, state_leaves, seed: int = 2):
    """A loss that weighs every output and state element differently (so all gradients show)."""
    g = torch.Generator().manual_seed(seed)
    total = (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum()
    for s in state_leaves:
        total = total + (s * torch.randn(s.shape, generator=g, dtype=s.dtype)).sum()
    return total


def grads(tensors):
    out = [t.grad.clone() for t in tensors]
    for t in tensors:
        t.grad = None
    return out


def assert_all_close(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e)


# --- against torch.nn.LSTM / torch.nn.RNN --------------------------------------------
def test_registered():
    assert get_cell("lstm") is LSTM and get_cell("rnn") is RNN
    assert LSTM.gate_names == ("i", "f", "g", "o", "c") and RNN.gate_names == ("a",)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_parameters_like_torch_layer0(case, bias):
    cell, ref = make_pair(case, bias=bias)
    ours = {k: tuple(v.shape) for k, v in cell.named_parameters()}
    theirs = {k.removesuffix("_l0"): tuple(v.shape) for k, v in ref.named_parameters()}
    assert ours == theirs
    fresh = type(cell)(I, H, bias=bias)  # torch's init: U(-1/sqrt(H), 1/sqrt(H))
    for p in fresh.parameters():
        assert p.abs().max() <= H**-0.5
    assert fresh.weight_hh.std() > 0.5 * H**-0.5 / 3**0.5  # uniform, not zeros


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("bias", [True, False])
def test_full_length_matches_torch(case, path, bias):
    cell, ref = make_pair(case, bias=bias)
    x = torch.randn(B, T, I, dtype=torch.float64, requires_grad=True)
    s0 = [s.requires_grad_() for s in random_state(cell)]

    y, state = run_path(cell, path, x, as_cell_state(cell, tuple(s0)))
    loss_of(y, leaves(state)).backward()
    ours = grads([x, *s0, *cell.parameters()])

    y_ref, hn = ref(x, as_torch_hx(cell, s0))
    state_ref = from_torch_state(cell, hn)
    loss_of(y_ref, state_ref).backward()
    theirs = grads([x, *s0, *ref.parameters()])

    torch.testing.assert_close(y, y_ref)
    assert_all_close(leaves(state), state_ref)
    assert_all_close(ours, theirs)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("path", PATHS)
def test_variable_lengths_match_packed_torch(case, path):
    cell, ref = make_pair(case)
    x = torch.randn(B, T, I, dtype=torch.float64, requires_grad=True)
    s0 = [s.requires_grad_() for s in random_state(cell)]
    lengths = torch.tensor(LENGTHS)

    y, state = run_path(cell, path, x, as_cell_state(cell, tuple(s0)), lengths)
    loss_of(y, leaves(state)).backward()
    ours = grads([x, *s0, *cell.parameters()])

    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    packed_y, hn = ref(packed, as_torch_hx(cell, s0))
    y_ref, _ = pad_packed_sequence(packed_y, batch_first=True, total_length=T)
    state_ref = from_torch_state(cell, hn)
    loss_of(y_ref, state_ref).backward()
    theirs = grads([x, *s0, *ref.parameters()])

    torch.testing.assert_close(y, y_ref)
    for b, n in enumerate(LENGTHS):
        assert torch.all(y[b, n:] == 0)  # padded outputs are exactly zero
    assert_all_close(leaves(state), state_ref)
    assert_all_close(ours, theirs)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize(
    "lengths",
    [
        [0, 7, 3, 0],  # empty sequences (torch's packing refuses them)
        [3, 3, 3, 3],  # all equal, shorter than T
        [6, 1, 6, 2],  # ties, none full-length
        [0, 0, 0, 0],  # nothing to read
        [7, 7, 7, 7],  # all full-length
    ],
)
def test_fused_matches_reference_for_any_lengths(case, lengths):
    """Fused path == ``Cell.loop_steps`` (values and gradients) where torch has no packed twin."""
    cell, _ = make_pair(case)
    x = torch.randn(B, T, I, dtype=torch.float64, requires_grad=True)
    s0 = [s.requires_grad_() for s in random_state(cell)]
    results = []
    for path in ("fused", "steps"):
        y, state = run_path(cell, path, x, as_cell_state(cell, tuple(s0)), torch.tensor(lengths))
        loss_of(y, leaves(state)).backward()
        results.append((y, leaves(state), grads([x, *s0, *cell.parameters()])))
    (y, state, g), (y_ref, state_ref, g_ref) = results
    torch.testing.assert_close(y, y_ref)
    assert_all_close(state, state_ref)
    assert_all_close(g, g_ref)
    for b, n in enumerate(lengths):
        assert torch.all(y[b, n:] == 0)
        if n == 0:  # an empty sequence keeps its initial state
            assert_all_close([s[b] for s in state], [s[b] for s in s0])


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("path", PATHS)
def test_no_time_steps(case, path):
    cell, _ = make_pair(case)
    s0 = as_cell_state(cell, random_state(cell))
    y, state = run_path(cell, path, torch.randn(B, 0, I, dtype=torch.float64), s0)
    assert y.shape == (B, 0, H)
    assert_all_close(leaves(state), leaves(s0))


@pytest.mark.parametrize("case", CASES)
def test_default_state_and_step_with_gates(case):
    cell, ref = make_pair(case)
    x = torch.randn(B, T, I, dtype=torch.float64)
    y, state = cell(x)
    y_ref, _ = ref(x)
    torch.testing.assert_close(y, y_ref)
    assert cell.state_size == (2 * H if isinstance(cell, LSTM) else H)

    s = cell.initial_state(B, dtype=torch.float64)
    x_t = x[:, 0]
    y_t, s_step = cell.step(x_t, s)
    y_g, s_gates, gates = cell.step_with_gates(x_t, s)
    assert tuple(gates) == tuple(cell.gate_names)
    assert all(g.shape == (B, H) for g in gates.values())
    torch.testing.assert_close(y_g, y_t)
    assert_all_close(leaves(s_gates), leaves(s_step))
    if isinstance(cell, LSTM):
        c = gates["f"] * s[1] + gates["i"] * gates["g"]
        torch.testing.assert_close(gates["c"], c)
        torch.testing.assert_close(y_t, gates["o"] * torch.tanh(c))
    else:
        torch.testing.assert_close(y_t, torch.tanh(gates["a"]) if cell.nonlinearity == "tanh" else torch.relu(gates["a"]))


# --- forget_bias -----------------------------------------------------------------------
def test_forget_bias_lands_in_forget_slice_only():
    torch.manual_seed(0)
    plain = LSTM(I, H)
    torch.manual_seed(0)
    biased = LSTM(I, H, forget_bias=1.0)
    diff = biased.bias_ih.detach() - plain.bias_ih.detach()
    expected = torch.zeros(4 * H)
    expected[H : 2 * H] = 1.0  # gate order i, f, g, o
    torch.testing.assert_close(diff, expected)
    for name in ("weight_ih", "weight_hh", "bias_hh"):
        assert torch.equal(getattr(biased, name), getattr(plain, name))
    # forget_bias=0.0 is exactly torch.nn.LSTM's initialisation (same draws, same order).
    torch.manual_seed(0)
    ref = nn.LSTM(I, H)
    for name, p in plain.named_parameters():
        assert torch.equal(p, getattr(ref, f"{name}_l0"))


# --- bad options -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "cls, options, key",
    [
        (LSTM, {"bias": False, "forget_bias": 1.0}, "cell.forget_bias"),
        (LSTM, {"forget_bias": "1.0"}, "cell.forget_bias"),
        (LSTM, {"forget_bias": True}, "cell.forget_bias"),
        (LSTM, {"forget_bias": float("nan")}, "cell.forget_bias"),
        (LSTM, {"bias": "yes"}, "cell.bias"),
        (RNN, {"nonlinearity": "sigmoid"}, "cell.nonlinearity"),
        (RNN, {"nonlinearity": None}, "cell.nonlinearity"),
        (RNN, {"bias": 1}, "cell.bias"),
    ],
)
def test_bad_options_raise_config_error(cls, options, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        cls(I, H, **options)


@pytest.mark.parametrize("cls", [LSTM, RNN])
def test_bad_hidden_size(cls):
    with pytest.raises(ConfigError, match=r"cell\.hidden_size"):
        cls(I, 0)


def test_lstm_without_bias_accepts_zero_forget_bias():
    cell = LSTM(I, H, bias=False, forget_bias=0.0)
    assert cell.bias_ih is None and cell.bias_hh is None


# --- configs ---------------------------------------------------------------------------
@pytest.mark.parametrize("name, cls", [("lstm", LSTM), ("rnn", RNN)])
def test_yaml_builds_the_cell_and_comments_every_key(name, cls):
    text = (CONF_CELL / f"{name}.yaml").read_text()
    cfg = yaml.safe_load(text)
    assert cfg["name"] == name and cfg["hidden_size"] == 128
    stack_keys = ("name", "hidden_size", "num_layers", "bidirectional", "dropout")
    assert list(cfg)[:5] == list(stack_keys)
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            assert "#" in line, f"{name}.yaml: key without a WHY comment: {line!r}"
    cell = cls(I, cfg["hidden_size"], **{k: v for k, v in cfg.items() if k not in stack_keys})
    assert cell.hidden_size == 128
    if name == "lstm":
        assert cell.forget_bias == 1.0


# --- stacked and bidirectional ---------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_bidirectional_two_layer_stack_matches_torch(case):
    from rnnbench.stack import CellStack

    name, options, torch_cls, torch_options = CASES[case]
    torch.manual_seed(0)
    ref = torch_cls(I, H, num_layers=2, bidirectional=True, batch_first=True, **torch_options).double()
    stack = CellStack(get_cell(name), I, H, num_layers=2, bidirectional=True, dropout=0.0, **options).double()
    weights = dict(ref.named_parameters())
    for layer in range(2):
        for direction, suffix in enumerate(("", "_reverse")):
            cell = stack.layers[layer][direction]
            for pname, p in cell.named_parameters():
                with torch.no_grad():
                    p.copy_(weights[f"{pname}_l{layer}{suffix}"])

    x = torch.randn(B, T, I, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor(LENGTHS)
    for path in ("fused", "loop"):
        for cell in stack.cells:
            cell.use_fused = path == "fused"
        y, states = stack(x, lengths=lengths)
        # torch's h_n / c_n order is layer 0 fwd, layer 0 bwd, layer 1 fwd, ...: the stack's order.
        if name == "lstm":
            h_n = torch.stack([s[0] for s in states])
            c_n = torch.stack([s[1] for s in states])
            loss_of(y, [h_n, c_n]).backward()
        else:
            h_n = torch.stack(states)
            loss_of(y, [h_n]).backward()
        ours = grads([x, *[weights_of(stack, k) for k in weights]])

        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        packed_y, hn = ref(packed)
        y_ref, _ = pad_packed_sequence(packed_y, batch_first=True, total_length=T)
        state_ref = list(hn) if name == "lstm" else [hn]
        loss_of(y_ref, state_ref).backward()
        theirs = grads([x, *weights.values()])

        torch.testing.assert_close(y, y_ref)
        assert_all_close([h_n, c_n] if name == "lstm" else [h_n], state_ref)
        assert_all_close(ours, theirs)


def weights_of(stack, torch_name: str):
    """The stack's parameter that torch calls ``torch_name`` (e.g. ``weight_ih_l1_reverse``)."""
    base, rest = torch_name.split("_l")
    layer, _, suffix = rest.partition("_")
    return getattr(stack.layers[int(layer)][1 if suffix == "reverse" else 0], base)
