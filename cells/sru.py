"""Simple Recurrent Unit (SRU).

Lei, Zhang, Wang, Dai & Artzi 2018, "Simple Recurrent Units for Highly
Parallelizable Recurrence", EMNLP, arXiv:1709.02755. Reference implementation:
the ``sru`` package (github.com/asappresearch/sru), ``sru.SRUCell``, version 2.6;
this cell computes the same function, with the same options and initialisation.

``σ`` is the logistic sigmoid and ``⊙`` the elementwise product. The recurrence
has no matrix product: the hidden-to-hidden connections are the vectors
``v_f, v_r`` (elementwise), so every matmul depends on the inputs only::

    f_t = σ(W_f x_t + v_f ⊙ c_{t-1} + b_f)           forget gate
    r_t = σ(W_r x_t + v_r ⊙ c_{t-1} + b_r)           reset (highway) gate
    c_t = f_t ⊙ c_{t-1} + (1 − f_t) ⊙ (W x_t)
    h_t = r_t ⊙ g(c_t) + (1 − r_t) ⊙ x'_t            highway connection

- ``g`` is the identity (``use_tanh=False``, the EMNLP paper and the package's
  default) or ``tanh`` (``use_tanh=True``, the first arXiv version).
- ``x'_t`` is the highway (skip) input. When ``input_size == hidden_size`` it is
  ``α x_t``; otherwise the input is projected by a fourth learned matrix,
  ``x'_t = W_h x_t``, as the package does (``num_matrices = 4``).
- ``α = sqrt(1 + 2 exp(highway_bias))`` with ``rescale=True``, else 1 (the
  package's ``scale_x``, fixed at construction, not trained): the paper's
  scaling correction, which keeps the variance of ``h`` near that of ``x`` at
  initialisation, whatever the highway gate's initial bias. With a
  projection the package multiplies ``W_h``'s initial values by ``α`` instead,
  and so does this cell.
- ``highway_bias`` is the initial value of ``b_r`` (``b_f`` starts at 0). Negative
  values make the highway (skip) path dominant at the start of training.

The state is ``c`` ``(B, H)``; the output is ``y_t = h_t``. Padded steps (beyond
``lengths``) leave ``c`` unchanged and output 0, as the package's ``mask_pad``.

Parameters (batch-first, PyTorch's ``(out, in)`` weight layout, gate-major):
``weight_ih = [W; W_f; W_r]`` ``(3H, I)``, or ``[W; W_f; W_r; W_h]`` ``(4H, I)``
when ``I != H``; ``weight_c = [v_f; v_r]`` ``(2H,)``; ``bias_fr = [b_f; b_r]``
``(2H,)`` (absent with ``bias=False``). The package stores ``weight`` as
``(I, k·H)`` with the ``k`` matrices interleaved per hidden unit (column
``j·k + m`` for unit ``j``, matrix ``m``); ``weight_ih = weight.view(I, H, k)
.permute(2, 1, 0).reshape(k·H, I)`` converts it. ``weight_c`` and ``bias_fr`` are
laid out as its ``weight_c`` and ``bias``. ``bias=False`` (no ``b_f, b_r``) is
this cell's addition; the package always has the biases.

Initialisation, as the package: ``weight_ih ~ U(±sqrt(3/I))`` (variance ``1/I``),
with the ``W_f, W_r`` rows scaled by ``sqrt(1/2)`` and ``W_h`` by ``α``;
``weight_c ~ U(±sqrt(3/2))`` (variance 1/2); ``b_f = 0``, ``b_r = highway_bias``.

Not reproduced from the package: ``n_proj`` (factorised weight), ``layer_norm``,
``has_skip_term=False``, ``custom_m``, its deprecated ``v1`` / ``rnn_dropout``,
and its per-layer ``dropout`` (the stack wrapper's inter-layer dropout replaces
it). ``bidirectional`` comes from the stack wrapper.

Fast path (:meth:`SRU.forward`): the input projections ``W x_t, W_f x_t + b_f,
W_r x_t + b_r (, W_h x_t)`` for all T steps first (one GEMM per ``(H, I)`` block,
no matmul inside the loop); then :class:`SRURecurrence`, an autograd Function
whose forward loop builds no graph and whose backward is written by hand.
Measured on this project's 2-core CPU box (T=200, B=64, I=64, H=256, forward +
backward): 2.5-4x faster than ``torch.nn.LSTM`` of the same width, 4.5-6.5x
faster than the ``sru`` package's CPU path, 1.2-1.3x faster than the same
computation as a Python loop under autograd; ``torch.compile`` was slower (the
unrolled T=200 loop took minutes to compile, a compiled step function per time
step costs more in calls than it saves).
"""

from __future__ import annotations

import math
import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnbench.cell import Cell, Reference
from rnnbench.errors import check, is_number
from rnnbench.registry import register_cell

HIGHWAY_BIAS_LIMIT = 30.0  # |b| beyond this saturates σ even in float64 (σ(-30) ≈ 1e-13)


def _rescale_factor(highway_bias: float) -> float:
    """``α = sqrt(1 + 2 exp(highway_bias))``, the package's ``scale_x``."""
    return math.sqrt(1.0 + 2.0 * math.exp(highway_bias))


class SRURecurrence(torch.autograd.Function):
    """The elementwise part of SRU for a whole sequence, given its input projections.

    ``apply(u, a_f, a_r, highway, weight_c, c0, mask, highway_scale, use_tanh) -> (y, c_T)``,
    time-first, like the ``sru`` package:

    - ``u = W x``, ``a_f = W_f x + b_f``, ``a_r = W_r x + b_r``: ``(T, B, H)`` each;
    - ``highway`` ``(T, B, H)``: ``W_h x`` or ``x``; the highway term is
      ``x' = highway_scale · highway``;
    - ``weight_c = [v_f; v_r]`` ``(2H,)``, ``c0`` ``(B, H)``;
    - ``mask`` ``(T, B)`` bool, True on real steps, or None;
    - ``y`` ``(T, B, H)``, zero at padded steps; ``c_T`` ``(B, H)``.

    Time-first, each step's ``(B, H)`` slice is one contiguous block, which the
    loops below read and write faster than the ``B`` scattered rows of a
    batch-first slice.

    Forward: only ``c`` is sequential, and it is elementwise, so the loop over time
    is three elementwise ops per step and builds no autograd graph; ``r`` and ``h``
    then follow for all steps at once from the stored states. Padded steps get
    ``f_t = σ(+inf) = 1`` exactly, so ``c_t = c_{t-1}``.

    Backward (hand-written; first derivatives only): ``G_t``, the gradient reaching
    ``c_t``, is ``E_t + D_{t+1} ⊙ G_{t+1}``, where ``E_t`` is what reaches ``c_t``
    directly (from ``h_t`` through ``g``, and from ``r_{t+1}`` through ``v_r``) and
    ``D_t = ∂c_t/∂c_{t-1} = f_t + σ'(a_t) (c_{t-1} − W x_t) v_f``. ``E`` and ``D``
    are vectorised over all steps (they need no ``G``), so the loop is one fused
    multiply-add per step; every other gradient is then vectorised too. At padded
    steps ``f = 1`` and ``dy = 0``: ``σ' = 0`` and ``D = 1``, so their inputs get
    zero gradients and ``G`` passes through unchanged.
    """

    @staticmethod
    def forward(ctx, u, a_f, a_r, highway, weight_c, c0, mask, highway_scale: float, use_tanh: bool):
        seq_len, batch_size, H = u.shape
        v_f, v_r = weight_c[:H], weight_c[H:]
        if mask is not None:
            a_f = a_f.masked_fill(~mask.unsqueeze(-1), math.inf)  # σ(+inf) = 1: c_t = c_{t-1} exactly
        # C[0] = c0 and C[t + 1] = c_t: c_{t-1} and c_t are both views, no concatenation.
        C = u.new_empty(seq_len + 1, batch_size, H)
        C[0] = c0
        Fg = torch.empty_like(u)
        for u_t, a_t, f_t, c_prev, c_t in zip(u, a_f, Fg, C[:-1], C[1:]):
            torch.addcmul(a_t, v_f, c_prev, out=f_t).sigmoid_()
            torch.lerp(u_t, c_prev, f_t, out=c_t)  # W x + f (c − W x); exactly c_{t-1} where f = 1
        R = torch.addcmul(a_r, v_r, C[:-1]).sigmoid_()
        x_hw = highway * highway_scale if highway_scale != 1.0 else highway
        y = torch.lerp(x_hw, torch.tanh(C[1:]) if use_tanh else C[1:], R)  # x' + r (g(c) − x')
        if mask is not None:
            y.mul_(mask.unsqueeze(-1))
        ctx.save_for_backward(u, highway, weight_c, C, Fg, R, mask)
        ctx.highway_scale, ctx.use_tanh = highway_scale, use_tanh
        return y, C[-1].clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, dc_last):
        u, highway, weight_c, C, Fg, R, mask = ctx.saved_tensors
        H = u.shape[-1]
        v_f, v_r = weight_c[:H], weight_c[H:]
        scale = ctx.highway_scale
        if mask is not None:
            dy = dy * mask.unsqueeze(-1)
        C_prev, C_now = C[:-1], C[1:]
        g = torch.tanh(C_now) if ctx.use_tanh else C_now
        # h = x' + r (g − x'): ∂h/∂g = r, ∂h/∂x' = 1 − r, ∂h/∂(r's pre-activation) = (g − x') r (1 − r)
        # (R first: results take R's contiguous time-first layout even if dy is a batch-first view)
        G = R * dy  # E_t, what reaches c_t directly; G_t after the loop below
        d_highway = torch.rsub(G, dy)  # dy − dy r
        da_r = torch.sub(g, highway, alpha=scale).mul_(d_highway).mul_(R)
        if ctx.use_tanh:
            G.mul_(1 - g * g)
        G[:-1].addcmul_(da_r[1:], v_r)  # r_{t+1} reads c_t through v_r
        G[-1].add_(dc_last)
        # c_t = W x_t + f_t (c_{t-1} − W x_t), f_t = σ(a_t + v_f c_{t-1})
        dc_da = (C_prev - u).mul_(torch.addcmul(Fg, Fg, Fg, value=-1))  # ∂c_t/∂a_t = (c_{t-1} − W x_t) σ'
        D = torch.addcmul(Fg, dc_da, v_f)  # ∂c_t/∂c_{t-1}
        # The only sequential part: G_t = E_t + D_{t+1} G_{t+1}, in place, last step first.
        G_steps, D_steps = G.unbind(0), D.unbind(0)
        for t in range(len(G_steps) - 2, -1, -1):
            G_steps[t].addcmul_(D_steps[t + 1], G_steps[t + 1])
        du = torch.addcmul(G, G, Fg, value=-1)  # G (1 − f)
        da_f = dc_da.mul_(G)
        dc0 = torch.addcmul(D[0] * G[0], da_r[0], v_r)
        if scale != 1.0:
            d_highway.mul_(scale)
        d_weight_c = None
        if ctx.needs_input_grad[4]:
            d_weight_c = torch.cat([(da_f * C_prev).sum(dim=(0, 1)), (da_r * C_prev).sum(dim=(0, 1))])
        return du, da_f, da_r, d_highway, d_weight_c, dc0, None, None, None


@register_cell("sru")
class SRU(Cell):
    """SRU cell (Lei et al. 2018), matching ``sru.SRUCell``; state ``c``, output ``h``.
    Fast path: the input projections of all steps first, then :class:`SRURecurrence`.
    The forget gate ``f`` keeps ``c`` when near 1."""

    gate_names = ("f", "r", "c")
    retention_gate = "f"
    # (the unprojected highway, input_size == hidden_size, is a size the contract tests run too)
    option_examples = [{"use_tanh": True}, {"rescale": False, "highway_bias": -2.0}, {"bias": False}]

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        rescale: bool = True,
        highway_bias: float = 0.0,
        use_tanh: bool = False,
    ):
        super().__init__(input_size, hidden_size)
        check(isinstance(bias, bool), "cell.bias", bias, "true or false")
        check(isinstance(rescale, bool), "cell.rescale", rescale, "true or false")
        check(isinstance(use_tanh, bool), "cell.use_tanh", use_tanh, "true or false")
        check(
            is_number(highway_bias)
            and math.isfinite(highway_bias) and abs(highway_bias) <= HIGHWAY_BIAS_LIMIT,
            "cell.highway_bias", highway_bias,
            f"a number in [-{HIGHWAY_BIAS_LIMIT:g}, {HIGHWAY_BIAS_LIMIT:g}] (0.0 as the sru package; "
            "negative values, e.g. -2, favour the highway path at the start)",
        )
        check(bias or highway_bias == 0, "cell.highway_bias", highway_bias,
              "0.0 when cell.bias=false (there is no bias to set); set cell.bias=true to use it")
        self.bias = bias
        self.rescale = rescale
        self.highway_bias = float(highway_bias)
        self.use_tanh = use_tanh
        # A learned highway projection W_h when the input cannot be added to h as it is.
        self.projected_highway = input_size != hidden_size
        self.num_matrices = 4 if self.projected_highway else 3
        alpha = _rescale_factor(self.highway_bias) if rescale else 1.0
        # α multiplies x at every step without a projection; with one, it only scales W_h's init.
        self.highway_scale = 1.0 if self.projected_highway else alpha
        self.weight_ih = nn.Parameter(torch.empty(self.num_matrices * hidden_size, input_size))
        self.weight_c = nn.Parameter(torch.empty(2 * hidden_size))
        if bias:
            self.bias_fr = nn.Parameter(torch.empty(2 * hidden_size))
        else:
            self.register_parameter("bias_fr", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The ``sru`` package's initialisation (see the module docstring)."""
        H, I = self.hidden_size, self.input_size
        with torch.no_grad():
            bound = math.sqrt(3.0 / I)  # variance 1/I: h keeps the scale of x
            self.weight_ih.uniform_(-bound, bound)
            self.weight_ih[H : 3 * H].mul_(math.sqrt(0.5))  # W_f, W_r: the gates also get v ⊙ c
            if self.projected_highway and self.rescale:
                self.weight_ih[3 * H :].mul_(_rescale_factor(self.highway_bias))
            bound = math.sqrt(3.0) * math.sqrt(0.5)  # variance 1/2
            self.weight_c.uniform_(-bound, bound)
            if self.bias_fr is not None:
                self.bias_fr.zero_()
                self.bias_fr[H:].fill_(self.highway_bias)

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, bias={self.bias}, rescale={self.rescale}, "
            f"highway_bias={self.highway_bias}, use_tanh={self.use_tanh}"
        )

    # --- size and cost ---------------------------------------------------------------
    @classmethod
    def num_parameters(cls, input_size: int, hidden_size: int, bias: bool = True, **_) -> int:
        """``kHI`` weights (``k = 3`` matrices, or 4 with the highway projection when
        ``I != H``), ``2H`` for ``v_f, v_r``, and ``2H`` biases ``b_f, b_r``."""
        H, I = hidden_size, input_size
        k = 3 if I == H else 4
        return k * H * I + 2 * H + (2 * H if bias else 0)

    def flops_per_step(self) -> int:
        """``2kHI`` for the input matmul (multiply-add = 2; ``k`` = 3 or 4 matrices),
        ``2H`` bias adds, ``4H`` for ``v ⊙ c`` and its add in two gates, ``2H``
        sigmoids, ``3H`` for ``c`` (f ⊙ (c − Wx) + Wx), ``H`` for tanh when
        ``use_tanh``, ``H`` for ``α x`` when rescaling an unprojected input,
        ``3H`` for ``h`` (x' + r ⊙ (g(c) − x'))."""
        H, I = self.hidden_size, self.input_size
        flops = 2 * self.num_matrices * H * I + 12 * H
        flops += 2 * H if self.bias else 0
        flops += H if self.use_tanh else 0
        flops += H if self.highway_scale != 1.0 else 0
        return flops

    # --- one step -------------------------------------------------------------------
    def input_projection(self, x: Tensor) -> Tensor:
        """``[W x; W_f x; W_r x; x']``, ``(..., 4H)``: with a projection ``x' = W_h x``, else
        ``x' = α x`` (the highway input; needs ``I == H``). The gate biases are added in
        :meth:`recurrence`, as the package does."""
        u = F.linear(x, self.weight_ih)
        return u if self.projected_highway else torch.cat([u, self.highway_scale * x], dim=-1)

    def recurrence(self, p_t: Tensor, c: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """One SRU step: ``y_t = h_t``, state ``c_t``, gates f, r and c."""
        u_c, u_f, u_r, highway = p_t.chunk(4, dim=-1)
        v_f, v_r = self.weight_c.chunk(2)
        b_f, b_r = self.bias_fr.chunk(2) if self.bias_fr is not None else (0.0, 0.0)
        f = torch.sigmoid(u_f + v_f * c + b_f)
        r = torch.sigmoid(u_r + v_r * c + b_r)
        c_new = f * c + (1 - f) * u_c
        h = r * (torch.tanh(c_new) if self.use_tanh else c_new) + (1 - r) * highway
        return h, c_new, {"f": f, "r": r, "c": c_new}

    # --- whole sequences ------------------------------------------------------------
    def fused_forward(self, x: Tensor, state: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """The input projections of all steps first, then :class:`SRURecurrence`."""
        x = x.transpose(0, 1)  # time-first inside, as torch.nn.LSTM(batch_first=True) on CPU
        # All T steps of every input projection at once, one GEMM per (H, I) block: each
        # (T, B, H) result is contiguous for the loops of SRURecurrence, and four of them
        # measured 10-20% faster overall than one (T, B, 4H) GEMM split into views.
        biases = self.bias_fr.chunk(2) if self.bias_fr is not None else (None, None)
        w_c, w_f, w_r, *w_h = self.weight_ih.chunk(self.num_matrices)
        u = F.linear(x, w_c)
        a_f = F.linear(x, w_f, biases[0])
        a_r = F.linear(x, w_r, biases[1])
        highway = F.linear(x, w_h[0]) if self.projected_highway else x
        y, c = SRURecurrence.apply(
            u, a_f, a_r, highway, self.weight_c, state, None if mask is None else mask.t(),
            self.highway_scale, self.use_tanh,
        )
        return y.transpose(0, 1), c

    @classmethod
    def reference_modules(cls, input_size, hidden_size, num_layers, bidirectional, options) -> list[Reference]:
        """The ``sru`` package's ``SRU`` (time-first, its only layout; left out with a warning
        where it does not run) and ``torch.nn.LSTM`` of the same width."""
        references = []
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # its CUDA kernels fail to compile without CUDA: the CPU path works
                from sru import SRU as PackageSRU

                package = PackageSRU(input_size, hidden_size, num_layers=num_layers, bidirectional=bidirectional,
                                     dropout=0.0)
                package(torch.zeros(1, 1, input_size))  # fails here if its kernels do
            references.append(Reference("sru.SRU", package, time_first=True))
        except Exception as exc:  # not installed, or broken here: no ratio against it
            warnings.warn(f"the sru package does not run here ({type(exc).__name__}: {exc}); no sru.SRU reference")
        references.append(Reference("torch.nn.LSTM", nn.LSTM(input_size, hidden_size, num_layers, batch_first=True,
                                                             bidirectional=bidirectional)))
        return references
