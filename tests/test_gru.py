"""GRU against torch.nn.GRU and against Cho et al.'s equations; CellStack against nn.GRU stacks."""


import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from helpers.cli import compose_config
from rnnbench.cells.gru import GRU
from rnnbench.errors import ConfigError
from rnnbench.registry import CELLS
from rnnbench.experiment import build_stack
from rnnbench.stack import CellStack

I, H, B, T = 3, 5, 4, 6
LENGTHS = [6, 2, 5, 1]  # unsorted on purpose; nn.GRU's packing refuses length 0


def copy_weights(cell, ref, suffix="_l0"):
    """Copy torch.nn.GRU parameters (``weight_ih_l0``...) into a GRU cell (``weight_ih``...)."""
    with torch.no_grad():
        for name, param in cell.named_parameters():
            param.copy_(getattr(ref, name + suffix))


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


def run_reference(ref, x, h0, lengths):
    """nn.GRU on padded input, through pack_padded_sequence when lengths are given."""
    if lengths is None:
        return ref(x, h0)
    packed = pack_padded_sequence(x, torch.tensor(lengths), batch_first=True, enforce_sorted=False)
    y, h_n = ref(packed, h0)
    return pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])[0], h_n


def test_registered_as_gru():
    assert CELLS.get("gru") is GRU
    assert GRU.gate_names == ("r", "z", "n")


def test_parameters_like_torch():
    cell = GRU(I, H)
    shapes = {name: tuple(p.shape) for name, p in cell.named_parameters()}
    assert shapes == {"weight_ih": (3 * H, I), "weight_hh": (3 * H, H), "bias_ih": (3 * H,), "bias_hh": (3 * H,)}
    bound = H**-0.5
    assert all(p.abs().max() <= bound for p in cell.parameters())
    assert [name for name, _ in GRU(I, H, bias=False).named_parameters()] == ["weight_ih", "weight_hh"]


@pytest.mark.parametrize("use_fused", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lengths", [None, LENGTHS])
def test_matches_torch_gru(use_fused, bias, lengths):
    torch.manual_seed(0)
    ref = nn.GRU(I, H, bias=bias, batch_first=True).double()
    cell = GRU(I, H, bias=bias).double()
    copy_weights(cell, ref)
    cell.use_fused = use_fused
    x = torch.randn(B, T, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(B, H, dtype=torch.float64, requires_grad=True)

    y_ref, h_ref = run_reference(ref, x, h0.unsqueeze(0), lengths)
    y, h = cell(x, h0, None if lengths is None else torch.tensor(lengths))
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(h, h_ref[0])

    weights = torch.randn_like(y)
    loss_ref = (y_ref * weights).sum() + h_ref.sum()
    loss = (y * weights).sum() + h.sum()
    for g, g_ref in zip(grads(loss, [x, h0, *cell.parameters()]), grads(loss_ref, [x, h0, *ref.parameters()])):
        torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize("use_fused", [True, False])
def test_stack_matches_torch_bidirectional_3_layers(use_fused):
    torch.manual_seed(0)
    layers = 3
    ref = nn.GRU(I, H, num_layers=layers, bidirectional=True, batch_first=True).double()
    stack = CellStack(GRU, I, H, num_layers=layers, bidirectional=True).double()
    for layer in range(layers):
        for direction, suffix in enumerate(["", "_reverse"]):
            cell = stack.layers[layer][direction]
            copy_weights(cell, ref, f"_l{layer}{suffix}")
            cell.use_fused = use_fused
    x = torch.randn(B, T, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2 * layers, B, H, dtype=torch.float64, requires_grad=True)

    y_ref, h_ref = run_reference(ref, x, h0, LENGTHS)
    y, state = stack(x, tuple(h0.unbind(0)), torch.tensor(LENGTHS))
    assert y.shape == (B, T, 2 * H) and stack.output_size == 2 * H
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(torch.stack(state), h_ref)

    weights = torch.randn_like(y)
    loss_ref = (y_ref * weights).sum() + (h_ref**2).sum()
    loss = (y * weights).sum() + (torch.stack(state) ** 2).sum()
    ours = [p for cell in stack.cells for p in cell.parameters()]
    theirs = [getattr(ref, name) for layer in range(layers) for suffix in ["", "_reverse"]
              for name in [f"{w}_l{layer}{suffix}" for w in ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]]]
    for g, g_ref in zip(grads(loss, [x, h0, *ours]), grads(loss_ref, [x, h0, *theirs])):
        torch.testing.assert_close(g, g_ref)


def cho_gru(x, h, cell):
    """Cho et al. 2014 written out (reset gate applied before the recurrent matmul)."""
    W_ir, W_iz, W_in = cell.weight_ih.chunk(3)
    W_hr, W_hz, W_hn = cell.weight_hh.chunk(3)
    b_ir, b_iz, b_in = cell.bias_ih.chunk(3)
    b_hr, b_hz, b_hn = cell.bias_hh.chunk(3)
    outputs = []
    for x_t in x.unbind(1):
        r = torch.sigmoid(x_t @ W_ir.T + b_ir + h @ W_hr.T + b_hr)
        z = torch.sigmoid(x_t @ W_iz.T + b_iz + h @ W_hz.T + b_hz)
        n = torch.tanh(x_t @ W_in.T + b_in + (r * h) @ W_hn.T + b_hn)
        h = (1 - z) * n + z * h
        outputs.append(h)
    return torch.stack(outputs, dim=1), h


@pytest.mark.parametrize("use_fused", [True, False])  # no fused kernel exists: both take the loop
def test_reset_after_false_is_cho_et_al(use_fused):
    torch.manual_seed(0)
    cell = GRU(I, H, reset_after=False).double()
    cell.use_fused = use_fused
    x = torch.randn(B, T, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(B, H, dtype=torch.float64)
    y_ref, h_ref = cho_gru(x, h0, cell)
    y, h = cell(x, h0)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(h, h_ref)
    params = [x, *cell.parameters()]
    for g, g_ref in zip(grads(y.sum() + h.sum(), params), grads(y_ref.sum() + h_ref.sum(), params)):
        torch.testing.assert_close(g, g_ref)

    # Same weights, the other convention: a different model, not a rounding difference.
    other = GRU(I, H, reset_after=True).double()
    other.load_state_dict(cell.state_dict())
    assert (other(x, h0)[0] - y).abs().max() > 1e-3


def test_step_with_gates():
    torch.manual_seed(0)
    cell = GRU(I, H)
    x_t, h = torch.randn(B, I), torch.randn(B, H)
    y, state, gates = cell.step_with_gates(x_t, h)
    torch.testing.assert_close(state, cell.step(x_t, h)[1])
    assert set(gates) == set(cell.gate_names)
    assert all(g.shape == (B, H) for g in gates.values())
    torch.testing.assert_close(state, (1 - gates["z"]) * gates["n"] + gates["z"] * h)


def test_inter_layer_dropout_only_in_training():
    torch.manual_seed(0)
    stack = CellStack(GRU, I, H, num_layers=2, dropout=0.5)
    plain = CellStack(GRU, I, H, num_layers=2, dropout=0.0)
    plain.load_state_dict(stack.state_dict())
    x = torch.randn(B, T, I)

    stack.eval()
    y_eval = stack(x)[0]
    torch.testing.assert_close(y_eval, plain.eval()(x)[0])

    stack.train()
    torch.manual_seed(1)
    y_a = stack(x)[0]
    torch.manual_seed(2)
    y_b = stack(x)[0]
    assert not torch.allclose(y_a, y_eval) and not torch.allclose(y_a, y_b)
    assert torch.all(y_a != 0), "no dropout after the last layer"
    torch.testing.assert_close(plain.train()(x)[0], y_eval)  # dropout 0: training mode changes nothing

    # Where: layer 0 reads the input as is, layer 1 reads dropped-out layer-0 outputs.
    seen = {}
    for layer in (0, 1):
        stack.layers[layer][0].register_forward_hook(lambda m, args, out, layer=layer: seen.update({layer: args[0]}))
    stack(x)
    assert torch.equal(seen[0], x)
    assert (seen[1] == 0).float().mean() > 0.2


def test_stack_attributes_and_state_order():
    stack = CellStack(GRU, I, H, num_layers=2, bidirectional=True, bias=False)
    assert (stack.num_layers, stack.bidirectional, stack.hidden_size, stack.output_size) == (2, True, H, 2 * H)
    assert isinstance(stack.layers, nn.ModuleList) and len(stack.layers) == 2
    assert stack.layers[1][0].input_size == 2 * H and stack.layers[1][1].bias is False
    assert stack.state_size == 4 * H
    state = stack.initial_state(B, dtype=torch.float64)
    assert len(state) == 4 and all(s.shape == (B, H) and s.dtype == torch.float64 for s in state)
    with pytest.raises(ValueError, match="tuple of 4"):
        stack(torch.randn(B, T, I), state[:3])


@pytest.mark.parametrize(
    "build, key",
    [
        (lambda: GRU(I, 0), "cell.hidden_size"),
        (lambda: GRU(I, H, bias="yes"), "cell.bias"),
        (lambda: GRU(I, H, reset_after=None), "cell.reset_after"),
        (lambda: CellStack(GRU, I, 0), "cell.hidden_size"),
        (lambda: CellStack(GRU, I, H, num_layers=0), "cell.num_layers"),
        (lambda: CellStack(GRU, I, H, num_layers=1.5), "cell.num_layers"),
        (lambda: CellStack(GRU, I, H, dropout=1.0), "cell.dropout"),
        (lambda: CellStack(GRU, I, H, dropout=-0.1), "cell.dropout"),
        (lambda: CellStack(GRU, I, H, bidirectional="no"), "cell.bidirectional"),
    ],
)
def test_bad_arguments_name_the_key(build, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as info:
        build()
    if key == "cell.num_layers":
        assert "integer >= 1" in str(info.value)
    if key == "cell.dropout":
        assert "[0, 1)" in str(info.value)


def test_dropout_with_one_layer_warns():
    with pytest.warns(UserWarning, match="no effect"):
        CellStack(GRU, I, H, num_layers=1, dropout=0.2)


@pytest.mark.parametrize("preset", ["gru", "bigru", "stacked_gru"])
def test_presets_build_a_stack(preset):
    """Every key of the composed preset is used: stack keys by CellStack, the rest by the cell."""
    stack = build_stack(compose_config([f"cell={preset}"])["cell"], I)
    y, _ = stack(torch.randn(B, T, I))
    assert y.shape == (B, T, stack.output_size)
