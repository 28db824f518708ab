"""SRU against the ``sru`` package (``sru.SRUCell``, its CPU path) and against its own step loop.

The package is the independent oracle: its CPU path with gradients enabled is a
plain PyTorch loop (float64 works), time-first ``(T, B, I)``, with padding given
as ``mask_pad`` ``(T, B)``, nonzero on padded steps.
"""

import math
import warnings
from importlib.resources import files

import pytest
import torch
import yaml

from rnnbench.cells.sru import SRU, SRURecurrence
from rnnbench.errors import ConfigError
from rnnbench.registry import CELLS
from rnnbench.stack import CellStack

B, T = 4, 6
LENGTHS = [6, 2, 5, 0]  # unsorted, with an empty sequence

# The package warns on import (its CUDA kernels cannot be compiled without CUDA) and on
# every forward on CPU with gradients enabled; neither concerns these tests.
pytestmark = pytest.mark.filterwarnings("ignore:Running SRU on CPU", "ignore:Just-in-time loading")


@pytest.fixture(scope="module")
def sru_package():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip("sru")


def from_package_layout(weight, input_size, hidden_size):
    """The package's ``(I, k·H)`` weight (or its gradient) -> our ``(k·H, I)``."""
    k = weight.shape[1] // hidden_size
    return weight.reshape(input_size, hidden_size, k).permute(2, 1, 0).reshape(k * hidden_size, input_size)


def paired(sru_package, input_size, hidden_size, **options):
    """A package SRUCell and an SRU cell with the same weights, float64."""
    torch.manual_seed(0)
    package_options = {k: v for k, v in options.items() if k != "bias"}
    ref = sru_package.SRUCell(input_size, hidden_size, **package_options).double()
    cell = SRU(input_size, hidden_size, **options).double()
    with torch.no_grad():
        cell.weight_ih.copy_(from_package_layout(ref.weight, input_size, hidden_size))
        cell.weight_c.copy_(ref.weight_c)
        if cell.bias_fr is not None:
            cell.bias_fr.copy_(ref.bias)
        else:
            ref.bias.zero_()
            ref.bias.requires_grad_(False)
    if not cell.projected_highway and cell.rescale:
        # The package keeps α in a float32 buffer (scale_x); use its rounded value.
        assert math.isclose(ref.scale_x.item(), cell.highway_scale, rel_tol=1e-6)
        cell.highway_scale = ref.scale_x.item()
    return ref, cell


def run_package(ref, x, c0, lengths):
    mask_pad = None
    if lengths is not None:
        mask_pad = torch.arange(x.shape[1])[:, None] >= torch.tensor(lengths)[None, :]  # (T, B), True = pad
    h, c = ref(x.transpose(0, 1), c0, mask_pad=mask_pad)
    return h.transpose(0, 1), c


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


# --- the cell against the package ---------------------------------------------------------
@pytest.mark.parametrize("use_fused", [True, False])
@pytest.mark.parametrize("sizes", [(5, 5), (3, 5)], ids=["input==hidden", "input!=hidden"])
@pytest.mark.parametrize("rescale", [True, False])
@pytest.mark.parametrize("use_tanh", [False, True])
@pytest.mark.parametrize("highway_bias", [0.0, -2.0])
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
def test_matches_package(sru_package, use_fused, sizes, rescale, use_tanh, highway_bias, lengths):
    input_size, hidden_size = sizes
    ref, cell = paired(sru_package, input_size, hidden_size, rescale=rescale, use_tanh=use_tanh,
                       highway_bias=highway_bias)
    assert ref.num_matrices == cell.num_matrices
    cell.use_fused = use_fused
    torch.manual_seed(1)
    x = torch.randn(B, T, input_size, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(B, hidden_size, dtype=torch.float64, requires_grad=True)

    y_ref, c_ref = run_package(ref, x, c0, lengths)
    y, c = cell(x, c0, None if lengths is None else torch.tensor(lengths))
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(c, c_ref)

    weights = torch.randn_like(y)
    loss_ref = (y_ref * weights).sum() + (c_ref**2).sum()
    loss = (y * weights).sum() + (c**2).sum()
    g_x, g_c0, g_w, g_wc, g_b = grads(loss, [x, c0, cell.weight_ih, cell.weight_c, cell.bias_fr])
    r_x, r_c0, r_w, r_wc, r_b = grads(loss_ref, [x, c0, ref.weight, ref.weight_c, ref.bias])
    torch.testing.assert_close(g_x, r_x)
    torch.testing.assert_close(g_c0, r_c0)
    torch.testing.assert_close(g_w, from_package_layout(r_w, input_size, hidden_size))
    torch.testing.assert_close(g_wc, r_wc)
    torch.testing.assert_close(g_b, r_b)


@pytest.mark.parametrize("use_fused", [True, False])
def test_without_bias_is_package_with_zero_bias(sru_package, use_fused):
    ref, cell = paired(sru_package, 3, 5, bias=False)
    assert [name for name, _ in cell.named_parameters()] == ["weight_ih", "weight_c"]
    cell.use_fused = use_fused
    x = torch.randn(B, T, 3, dtype=torch.float64, requires_grad=True)
    y_ref, c_ref = run_package(ref, x, None, LENGTHS)
    y, c = cell(x, lengths=torch.tensor(LENGTHS))
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(c, c_ref)
    loss, loss_ref = (y**2).sum() + c.sum(), (y_ref**2).sum() + c_ref.sum()
    for g, r in zip(grads(loss, [x, cell.weight_c]), grads(loss_ref, [x, ref.weight_c])):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("sizes", [(64, 128), (128, 128)], ids=["input!=hidden", "input==hidden"])
@pytest.mark.parametrize("highway_bias", [0.0, -2.0])
def test_initialisation_like_package(sru_package, sizes, highway_bias):
    """Same distributions, block by block (the draws themselves differ: other layout)."""
    input_size, hidden_size = sizes
    ref = sru_package.SRUCell(input_size, hidden_size, highway_bias=highway_bias)
    cell = SRU(input_size, hidden_size, highway_bias=highway_bias)
    H = hidden_size
    ours = cell.weight_ih.detach().reshape(cell.num_matrices, H, input_size)
    theirs = ref.weight.detach().reshape(input_size, H, ref.num_matrices).permute(2, 1, 0)
    alpha = math.sqrt(1 + 2 * math.exp(highway_bias))
    bounds = [math.sqrt(3 / input_size) * scale for scale in (1, math.sqrt(0.5), math.sqrt(0.5), alpha)]
    for block in range(cell.num_matrices):  # U(-b, b) for both: the largest draw is just below b
        for weights in (ours[block], theirs[block]):
            assert 0.98 * bounds[block] <= weights.abs().max().item() <= bounds[block] * (1 + 1e-6)
    for weight_c in (cell.weight_c.detach(), ref.weight_c.detach()):  # U(-sqrt(3/2), sqrt(3/2)): variance 1/2
        assert 0.95 * math.sqrt(1.5) <= weight_c.abs().max().item() <= math.sqrt(1.5)
        assert weight_c.std().item() == pytest.approx(math.sqrt(0.5), rel=0.15)
    torch.testing.assert_close(cell.bias_fr.detach(), ref.bias.detach())
    assert cell.bias_fr[H:].eq(highway_bias).all() and cell.bias_fr[:H].eq(0).all()


# --- fast path, padding, gradients -------------------------------------------------------
@pytest.mark.parametrize("options", [{}, {"use_tanh": True}, {"bias": False}, {"rescale": False, "highway_bias": -1.0}])
@pytest.mark.parametrize("sizes", [(5, 5), (3, 5)], ids=["input==hidden", "input!=hidden"])
def test_fast_path_matches_step_loop(options, sizes):
    torch.manual_seed(0)
    cell = SRU(*sizes, **options).double()
    x = torch.randn(B, T, sizes[0], dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(B, sizes[1], dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor(LENGTHS)
    y, c = cell(x, c0, lengths)
    y_ref, c_ref = cell.loop_steps(x, c0, lengths)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(c, c_ref)
    weights = torch.randn_like(y)
    wrt = [x, c0, *cell.parameters()]
    g = grads((y * weights).sum() + (c**3).sum(), wrt)
    g_ref = grads((y_ref * weights).sum() + (c_ref**3).sum(), wrt)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("sizes", [(5, 5), (3, 5)], ids=["input==hidden", "input!=hidden"])
def test_variable_lengths_equal_unpadded_runs(sizes):
    torch.manual_seed(0)
    cell = SRU(*sizes, use_tanh=True, highway_bias=-1.0).double()
    x = 10 * torch.randn(B, T, sizes[0], dtype=torch.float64)  # large padding must not leak in
    c0 = torch.randn(B, sizes[1], dtype=torch.float64)
    y, c = cell(x, c0, torch.tensor(LENGTHS))
    for b, length in enumerate(LENGTHS):
        assert torch.all(y[b, length:] == 0)
        y_row, c_row = cell(x[b : b + 1, :length], c0[b : b + 1])
        torch.testing.assert_close(y[b : b + 1, :length], y_row)
        torch.testing.assert_close(c[b : b + 1], c_row)
    assert torch.equal(c[3], c0[3])  # length 0: the state is untouched, bit for bit


@pytest.mark.parametrize("highway_scale", [1.0, 1.7])
@pytest.mark.parametrize("use_tanh", [False, True])
@pytest.mark.parametrize("with_mask", [False, True])
def test_gradcheck_recurrence(highway_scale, use_tanh, with_mask):
    """The hand-written backward of SRURecurrence against finite differences (float64)."""
    torch.manual_seed(0)
    H, steps = 3, 5
    f64 = {"dtype": torch.float64, "requires_grad": True}
    u, a_f, a_r, highway = (torch.randn(steps, 2, H, **f64) for _ in range(4))  # time-first
    weight_c = torch.randn(2 * H, **f64)
    c0 = torch.randn(2, H, **f64)
    mask = torch.arange(steps)[:, None] < torch.tensor([[steps, 2]]) if with_mask else None

    def run(*inputs):
        return SRURecurrence.apply(*inputs, mask, highway_scale, use_tanh)

    inputs = (u, a_f, a_r, highway, weight_c, c0)
    assert torch.autograd.gradcheck(run, inputs)


def test_gradients_for_some_inputs_only():
    """needs_input_grad: a frozen cell still passes gradients to its input and state."""
    cell = SRU(5, 5).double().requires_grad_(False)
    x = torch.randn(B, T, 5, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(B, 5, dtype=torch.float64)
    y, c = cell(x, c0)
    (g,) = grads(y.sum() + c.sum(), [x])
    y_ref, c_ref = cell.loop_steps(x, c0)
    torch.testing.assert_close(g, grads(y_ref.sum() + c_ref.sum(), [x])[0])


def test_step_with_gates():
    torch.manual_seed(0)
    cell = SRU(3, 5).double()
    x_t, c = torch.randn(B, 3, dtype=torch.float64), torch.randn(B, 5, dtype=torch.float64)
    h, c_new, gates = cell.step_with_gates(x_t, c)
    assert set(gates) == set(cell.gate_names) == {"f", "r", "c"}
    assert all(g.shape == (B, 5) for g in gates.values())
    torch.testing.assert_close(c_new, gates["c"])
    u = torch.nn.functional.linear(x_t, cell.weight_ih).chunk(4, dim=1)
    torch.testing.assert_close(c_new, gates["f"] * c + (1 - gates["f"]) * u[0])
    torch.testing.assert_close(h, gates["r"] * c_new + (1 - gates["r"]) * u[3])
    y, _, over_time = cell.forward_with_gates(torch.randn(B, T, 3, dtype=torch.float64))
    assert over_time["f"].shape == (B, T, 5)


# --- sizes, cost, options ------------------------------------------------------------------
@pytest.mark.parametrize("sizes", [(5, 5), (3, 5), (7, 2)])
@pytest.mark.parametrize("bias", [True, False])
def test_num_parameters_counts_parameters(sizes, bias):
    cell = SRU(*sizes, bias=bias)
    assert SRU.num_parameters(*sizes, bias=bias) == sum(p.numel() for p in cell.parameters())


def test_flops_per_step():
    assert SRU(5, 5).flops_per_step() == 2 * 3 * 5 * 5 + 12 * 5 + 2 * 5 + 5  # α x: rescale, no projection
    assert SRU(3, 5, bias=False, use_tanh=True).flops_per_step() == 2 * 4 * 5 * 3 + 12 * 5 + 5


def test_rescale_constant():
    assert SRU(5, 5).highway_scale == pytest.approx(math.sqrt(3.0))
    assert SRU(5, 5, highway_bias=-2.0).highway_scale == pytest.approx(math.sqrt(1 + 2 * math.exp(-2.0)))
    assert SRU(5, 5, rescale=False).highway_scale == 1.0
    assert SRU(3, 5).highway_scale == 1.0  # with a projection, α only scales W_h's initial values


@pytest.mark.parametrize(
    "options, key",
    [
        ({"hidden_size": 0}, "cell.hidden_size"),
        ({"bias": "yes"}, "cell.bias"),
        ({"rescale": 1}, "cell.rescale"),
        ({"use_tanh": None}, "cell.use_tanh"),
        ({"highway_bias": "-2"}, "cell.highway_bias"),
        ({"highway_bias": True}, "cell.highway_bias"),
        ({"highway_bias": math.nan}, "cell.highway_bias"),
        ({"highway_bias": 1000.0}, "cell.highway_bias"),
        ({"bias": False, "highway_bias": -2.0}, "cell.highway_bias"),
    ],
)
def test_bad_options_name_the_key(options, key):
    kwargs = {"input_size": 3, "hidden_size": 5, **options}
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        SRU(**kwargs)


def test_preset_matches_constructor_defaults_and_builds():
    config = yaml.safe_load((files("rnnbench.conf") / "cell" / "sru.yaml").read_text())
    assert config["name"] == "sru" and CELLS.get("sru") is SRU
    options = {k: v for k, v in config.items() if k not in ("name", "hidden_size", "num_layers", "bidirectional",
                                                               "dropout")}
    cell = SRU(3, 5)
    assert options == {key: getattr(cell, key) for key in options}
    stack = CellStack(SRU, 3, 5, num_layers=config["num_layers"], bidirectional=config["bidirectional"],
                      dropout=config["dropout"], **options)
    assert stack(torch.randn(B, T, 3))[0].shape == (B, T, 5)
