"""Independently recurrent neural network (IndRNN).

Li, Li, Cook, Zhu & Gao 2018, "Independently Recurrent Neural Network (IndRNN):
Building A Longer and Deeper RNN", CVPR, arXiv:1803.04831.

Each unit has one recurrent weight: the recurrent matrix of an Elman RNN becomes a
vector ``u`` and the recurrent matmul an elementwise product (``⊙``), so units are
independent of each other within a layer (they mix only through the input weights
of the next layer)::

    a  = W x + b + u ⊙ h        (the pre-activation, gate "a")
    h' = act(a)                  act = relu (default, as in the paper) or tanh

The state is ``h`` ``(B, H)``; the output is ``y_t = h_t``. Parameters:
``weight_ih`` (``W``, ``(H, I)``), ``weight_hh`` (``u``, ``(H,)``), ``bias_ih``
(``b``, ``(H,)``; one bias, the recurrence has none of its own).

Unrolled over time, ``∂h_T/∂h_t = Π_k act'(a_k) u`` per unit: with relu, a unit
that stays active keeps a gradient of exactly ``u^(T-t)``. The paper bounds it by
``|u|^T ≤ γ`` and keeps gradients from exploding over a sequence of length T with

    |u| ≤ 2^(1/max_len)          (γ = 2; ``max_len`` = T)

which :meth:`IndRNN.constrain_` enforces by clipping ``u`` into
``[-2^(1/T), 2^(1/T)]`` after every optimiser step (the framework calls it). As
in the paper for relu, only the magnitude of ``u`` is bounded above: its sign is
free, and the lower bound ``|u| ≥ ε^(1/T)`` the paper derives for keeping long
memories is not enforced during training (it only shapes the ``last_layer_long``
initialisation below). The same bound is used with tanh: its derivative is at
most 1, so the bound still prevents explosion, if conservatively (the authors'
adding-problem script loosens it for tanh). ``max_len=None`` leaves ``u`` free.

Recurrent initialisation (the paper's recipes):
- ``recurrent_init="uniform"``: ``u ~ U(0, 1)``, the paper's general choice (the
  authors' code draws ``U(0, 2^(1/T))``, the same up to the bound);
- ``"last_layer_long"``: the authors' adding-problem script
  (Sunnydreamrain/IndRNN_Theano_Lasagne, ``adding/adding.py``): the last layer of the
  stack draws ``u ~ U(2^(-1/T), 2^(1/T))`` (``ε = 1/2, γ = 2``), so that every unit of
  a layer read only at the final step starts with a long memory, and the layers below
  it ``u ~ U(0, 2^(1/T))``; requires ``max_len``. The stack tells each cell its
  ``layer`` and ``num_layers``;
- ``"identity"``: ``u = 1`` (as IRNN's identity recurrent matrix, Le et al. 2015).

``max_len: task`` (the preset's value) takes T from the task when the model is built
(:meth:`IndRNN.resolve_options`): the number of steps its sequences really have, so
the copy task's bound uses ``T + 2K``, not the gap ``T``.

Input weights (``input_init``):
- ``"indrnn_repo"`` (default): the choice of the authors' PyTorch code
  (github.com/Sunnydreamrain/IndRNN_pytorch, ``Indrnn_plainnet.py``,
  ``init_weights``): ``kaiming_uniform_(a=8, mode="fan_in")``, i.e.
  ``W ~ U(-sqrt(6/(65 I)), sqrt(6/(65 I)))``, and ``b = 0``. Measured here on the
  adding problem (2 layers, T=100, Adam 2e-3, 2000 steps, 2 seeds): validation
  MSE about 1e-3 and steadily falling, against 1e-2 to 7e-2 and erratic with
  ``"linear"``;
- ``"normal"``: ``W ~ N(0, input_std²)``, ``b = 0``: the authors' adding-problem script
  (``lasagne.init.Normal(0.001)``, ``input_std: 0.001``);
- ``"linear"``: ``torch.nn.Linear``'s initialisation, ``W, b ~ U(-1/sqrt(I), 1/sqrt(I))``.

Depth: in one IndRNN layer the only nonlinearity is inside the recurrence, so a
unit can hardly pick out a marked value *and* accumulate it; the adding problem
needs ``num_layers >= 2``, as in the paper (2 layers there). Measured here (Adam
2e-3): one layer stalled near MSE 0.09 at T=20 after 600 steps and at the 1/6
baseline at T=100 after 1000; two layers reach 0.004 at T=20 in 400 steps.

Fast path (``use_fused=True``): every input projection in one GEMM, then the
elementwise recurrence in a :class:`torch.autograd.Function` with a hand-written
backward (:class:`_IndRNNRecurrence`), time-first. Measured forward + backward,
T=200, B=64, I=64, H=256, CPU, 2 threads, as a fraction of ``torch.nn.RNN``'s
time (medians over runs on a shared machine): this path 0.29-0.42, the loop
through autograd (``use_fused=False``) 0.37-0.49; it also keeps half the
activations alive (the output doubles as what backward needs). ``torch.compile``
of the whole loop ran at 0.32 but compiled for 66-80 s per (B, T) shape, so it is
not used. The input GEMM (forward and its weight gradient) is over half of the
remaining time.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from rnnbench.cell import Cell, Reference, last_real_outputs, saturated_units
from rnnbench.errors import check, is_int, is_number
from rnnbench.registry import register_cell

NONLINEARITIES = {"relu": torch.relu, "tanh": torch.tanh}
RECURRENT_INITS = ("uniform", "last_layer_long", "identity")
INPUT_INITS = ("indrnn_repo", "linear", "normal")
MAX_LEN_FROM_TASK = "task"


class _IndRNNRecurrence(torch.autograd.Function):
    """``h_t = act(a_t + u ⊙ h_{t-1})`` over ``a: (T, B, H)``, from ``h0: (B, H)``; returns ``h: (T, B, H)``.

    Time-first, so every step reads and writes contiguous ``(B, H)`` slices
    (measured 1.3x faster for forward + backward than batch-first slices, whose
    rows are ``T·H`` apart). Forward runs without an autograd graph and saves only
    the outputs (``act'`` is a function of the output for relu and tanh). Backward,
    with ``g_t = dL/dh_t`` from outside and ``δ_t = dL/da_t``::

        δ_t      = (g_t + u ⊙ δ_{t+1}) ⊙ act'(a_t)       (δ_{T+1} = 0; act' from h_t)
        dL/du    = Σ_t δ_t ⊙ h_{t-1}                      (one reduction after the loop)
        dL/dh_0  = u ⊙ δ_1
    """

    @staticmethod
    def forward(ctx, a: Tensor, u: Tensor, h0: Tensor, nonlinearity: str) -> Tensor:
        y = torch.empty_like(a, memory_format=torch.contiguous_format)
        h = h0
        for a_t, y_t in zip(a.unbind(0), y.unbind(0)):
            h = torch.addcmul(a_t, u, h, out=y_t)
            h = h.relu_() if nonlinearity == "relu" else h.tanh_()
        ctx.nonlinearity = nonlinearity
        ctx.save_for_backward(y, u, h0)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor):
        y, u, h0 = ctx.saved_tensors
        relu = ctx.nonlinearity == "relu"
        grad_a = torch.empty_like(y)
        carry = None  # δ_{t+1}; u ⊙ carry is what step t+1 sends back to h_t
        for g_t, y_t, d_t in zip(reversed(grad_y.unbind(0)), reversed(y.unbind(0)), reversed(grad_a.unbind(0))):
            g = g_t if carry is None else torch.addcmul(g_t, carry, u)
            # act' from the output, in one kernel writing δ_t in place: the ops autograd
            # itself uses for relu (grad where h > 0) and tanh (grad ⊙ (1 - h²)).
            if relu:
                torch.ops.aten.threshold_backward.grad_input(g, y_t, 0, grad_input=d_t)
            else:
                torch.ops.aten.tanh_backward.grad_input(g, y_t, grad_input=d_t)
            carry = d_t
        grad_u = grad_h0 = None
        if ctx.needs_input_grad[1]:
            grad_u = (grad_a[1:] * y[:-1]).sum((0, 1)) + (grad_a[0] * h0).sum(0)
        if ctx.needs_input_grad[2]:
            grad_h0 = grad_a[0] * u
        return grad_a, grad_u, grad_h0, None


@register_cell("indrnn")
class IndRNN(Cell):
    """IndRNN cell, ``h' = act(W x + b + u ⊙ h)`` with a recurrent vector ``u``.

    Options (validated; ``ConfigError`` names the ``cell.<option>`` key):
      ``bias``            add ``b`` (default True);
      ``nonlinearity``    ``"relu"`` (default, the paper's) or ``"tanh"``;
      ``max_len``         T for the constraint ``|u| ≤ 2^(1/T)`` applied by
                          :meth:`constrain_`; None (default): unconstrained; ``"task"``:
                          the task's sequence length (resolved when the model is built);
      ``recurrent_init``  ``"uniform"`` (default), ``"last_layer_long"`` (needs
                          ``max_len``) or ``"identity"``, see the module docstring;
      ``input_init``      ``"indrnn_repo"`` (default), ``"normal"`` (with ``input_std``)
                          or ``"linear"``.

    Fast path: the recurrence as :class:`_IndRNNRecurrence` (hand-written backward).
    No gates: the diagnostics report the saturation of the pre-activation ``a``.
    """

    gate_names = ("a",)
    preactivation_gate = "a"
    # (input_std 0.3: the default 0.001 leaves relu's inputs within gradcheck's step of its kink)
    option_examples = [{"nonlinearity": "tanh"}, {"recurrent_init": "last_layer_long", "max_len": 7},
                       {"input_init": "normal", "input_std": 0.3}, {"input_init": "linear", "bias": False, "max_len": 7}]

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "relu",
        max_len: Optional[Union[int, str]] = None,
        recurrent_init: str = "uniform",
        input_init: str = "indrnn_repo",
        input_std: float = 0.001,
        layer: int = 0,
        num_layers: int = 1,
    ):
        super().__init__(input_size, hidden_size)
        check(isinstance(bias, bool), "cell.bias", bias, "true or false")
        check(isinstance(nonlinearity, str) and nonlinearity in NONLINEARITIES, "cell.nonlinearity", nonlinearity,
              f"one of {', '.join(NONLINEARITIES)}")
        check(max_len is None or (is_int(max_len) and max_len >= 1), "cell.max_len", max_len,
              "null (no constraint on u), 'task' (the task's sequence length) or an integer >= 1, the T of "
              "|u| <= 2^(1/T)")
        check(isinstance(recurrent_init, str) and recurrent_init in RECURRENT_INITS, "cell.recurrent_init",
              recurrent_init, f"one of {', '.join(RECURRENT_INITS)}")
        check(recurrent_init != "last_layer_long" or max_len is not None, "cell.recurrent_init", recurrent_init,
              "'uniform' or 'identity' when cell.max_len is null: 'last_layer_long' draws "
              "u ~ U((1/2)^(1/T), 2^(1/T)) and needs T (set cell.max_len)")
        check(isinstance(input_init, str) and input_init in INPUT_INITS, "cell.input_init", input_init,
              f"one of {', '.join(INPUT_INITS)}")
        check(is_number(input_std) and input_std > 0, "cell.input_std", input_std, "a number > 0")
        self.bias = bias
        self.nonlinearity = nonlinearity
        self.max_len = max_len
        self.recurrent_init = recurrent_init
        self.input_init = input_init
        self.input_std = float(input_std)
        self.is_last_layer = layer == num_layers - 1
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(hidden_size))
        else:
            self.register_parameter("bias_ih", None)
        self.reset_parameters()

    @property
    def recurrent_bound(self) -> Optional[float]:
        """``2^(1/max_len)``, the bound on ``|u|`` kept by :meth:`constrain_`; None without ``max_len``."""
        return None if self.max_len is None else 2.0 ** (1.0 / self.max_len)

    def reset_parameters(self) -> None:
        """``u`` by ``recurrent_init``, ``W`` and ``b`` by ``input_init`` (module docstring)."""
        with torch.no_grad():
            if self.recurrent_init == "uniform":
                self.weight_hh.uniform_(0.0, 1.0)
            elif self.recurrent_init == "last_layer_long":
                low = 0.5 ** (1.0 / self.max_len) if self.is_last_layer else 0.0
                self.weight_hh.uniform_(low, self.recurrent_bound)
            else:
                self.weight_hh.fill_(1.0)
            if self.input_init in ("indrnn_repo", "normal"):
                if self.input_init == "indrnn_repo":
                    nn.init.kaiming_uniform_(self.weight_ih, a=8, mode="fan_in")
                else:
                    self.weight_ih.normal_(0.0, self.input_std)
                if self.bias_ih is not None:
                    self.bias_ih.zero_()
            else:
                bound = 1.0 / math.sqrt(self.input_size)
                self.weight_ih.uniform_(-bound, bound)
                if self.bias_ih is not None:
                    self.bias_ih.uniform_(-bound, bound)

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, bias={self.bias}, nonlinearity={self.nonlinearity!r}, "
                f"max_len={self.max_len}, recurrent_init={self.recurrent_init!r}, input_init={self.input_init!r}, "
                f"last_layer={self.is_last_layer}")

    # --- constraint, size and cost -----------------------------------------------------
    def constrain_(self) -> None:
        """Clip ``u`` into ``[-2^(1/max_len), 2^(1/max_len)]`` (nothing without ``max_len``)."""
        bound = self.recurrent_bound
        if bound is not None:
            with torch.no_grad():
                self.weight_hh.clamp_(-bound, bound)

    @classmethod
    def num_parameters(cls, input_size: int, hidden_size: int, bias: bool = True, **_) -> int:
        """``HI`` input weights, ``H`` recurrent weights, plus ``H`` biases."""
        H, I = hidden_size, input_size
        return H * I + H + (H if bias else 0)

    def flops_per_step(self) -> int:
        """``2HI`` for ``W x`` (multiply-add = 2), then per unit: ``u ⊙ h`` (1), the bias
        add (1) and the add of the recurrent part (1), the nonlinearity (1):
        ``2HI + 4H`` (``2HI + 3H`` without bias)."""
        H, I = self.hidden_size, self.input_size
        return 2 * H * I + (4 * H if self.bias else 3 * H)

    # --- one step -------------------------------------------------------------------
    def input_projection(self, x: Tensor) -> Tensor:
        """``W x + b``, ``(..., H)``."""
        return F.linear(x, self.weight_ih, self.bias_ih)

    def recurrence(self, gi: Tensor, h: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """``y_t = h' = act(a)`` with the pre-activation ``a = gi + u ⊙ h`` (gate "a")."""
        a = torch.addcmul(gi, self.weight_hh, h)
        h_new = NONLINEARITIES[self.nonlinearity](a)
        return h_new, h_new, {"a": a}

    def saturated(self, preactivation: Tensor) -> Tensor:
        """relu: ``a <= 0`` (the unit passes no gradient); tanh: ``|a| > 2``."""
        return saturated_units(preactivation, self.nonlinearity)

    # --- whole sequences ------------------------------------------------------------
    def fused_forward(self, x: Tensor, state: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """One GEMM for every input projection, then :class:`_IndRNNRecurrence`, time-first.

        The output is the batch-first view of a time-first tensor (not contiguous):
        a next IndRNN layer's time-first GEMM then reads it without a copy.
        Padding: the cell is causal and its state is its output, so run the padded
        batch, zero the padded outputs and read each final state at its last real step.
        """
        a = self.input_projection(x.transpose(0, 1))  # (T, B, H)
        y = _IndRNNRecurrence.apply(a, self.weight_hh, state, self.nonlinearity).transpose(0, 1)
        return last_real_outputs(y, state, mask)

    @classmethod
    def reference_modules(cls, input_size, hidden_size, num_layers, bidirectional, options) -> list[Reference]:
        """``torch.nn.RNN(relu)``: the same shape of computation with a full recurrent matrix
        (no library has an IndRNN kernel), so the ratio shows what the vector ``u`` saves."""
        return [Reference("torch.nn.RNN(relu)",
                          nn.RNN(input_size, hidden_size, num_layers, nonlinearity="relu",
                                 bias=options.get("bias", True), batch_first=True, bidirectional=bidirectional))]

    @classmethod
    def resolve_options(cls, options: dict, task) -> dict:
        """``max_len: task`` becomes the number of steps the task's sequences have (the copy
        task: ``T + 2K``), or null (no constraint) without a task or a fixed length."""
        if options.get("max_len") == MAX_LEN_FROM_TASK:
            return {**options, "max_len": getattr(task, "sequence_length", None) if task is not None else None}
        return options
