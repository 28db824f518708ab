"""minGRU and minLSTM: GRU and LSTM with gates that read the input only.

Feng, Tung, Ahmed, Bengio & Hajimirsadeghi 2024, "Were RNNs All We Needed?",
arXiv:2410.01201. ``σ`` is the logistic sigmoid, ``⊙`` the elementwise product::

    minGRU   z_t  = σ(W_z x_t + b_z)                          update gate
             h̃_t  = g(W_h x_t + b_h)                          candidate
             h_t  = (1 − z_t) ⊙ h_{t-1} + z_t ⊙ h̃_t

    minLSTM  f_t  = σ(W_f x_t + b_f),  i_t = σ(W_i x_t + b_i)  forget and input gates
             f'_t = f_t / (f_t + i_t),  i'_t = i_t / (f_t + i_t)   normalised: f' + i' = 1
             h̃_t  = g(W_h x_t + b_h)
             h_t  = f'_t ⊙ h_{t-1} + i'_t ⊙ h̃_t

``g(v) = v + 1/2`` for ``v >= 0``, ``σ(v)`` otherwise: the paper's "log-space version"
(appendix B), which keeps every ``h̃ > 0`` so that the recurrence can be scanned in
log space. It is the default (``log_space=True``) and the version the paper trains;
step and scan both apply ``g``. ``log_space=False`` is the paper's plain version
(``h̃_t = W_h x_t + b_h``, section 3), scanned in linear space. The state is ``h``;
no state enters a gate, so given the inputs every step is an affine map of the state.

``expansion`` ``α``: the state has ``D = round(α H)`` units, and with ``α != 1`` the
output is ``y_t = W_o h_t`` (``W_o``: ``(H, D)``, no bias), the expansion factor of the
paper's model blocks (as ``expansion_factor`` in lucidrains/minGRU-pytorch); ``α = 1``
(default): ``y_t = h_t``, the equations above as written.

Parameters: ``linear.weight = [W_z; W_h]`` ``(2D, I)`` (minGRU) or ``[W_f; W_i; W_h]``
``(3D, I)`` (minLSTM), ``linear.bias`` alike (``bias=False``: none), ``out.weight``
``(H, D)`` with ``α != 1``; ``torch.nn.Linear``'s initialisation (the paper's listings
use ``nn.Linear``).

Training path (``fused_forward``): one GEMM for every input projection, then, with
``scan`` (:data:`rnnbench.scans.SCANS`) ``parallel``, or ``auto`` off the CPU, the
paper's log-space scan (its ``parallel_scan_log``: ``log h_t = a*_t +
logcumsumexp(log b − a*)_t``, ``a* = cumsum(log a)``) over ``log a_t = log(1 − z_t)``
(or ``log f'_t``) and ``log b_t = log z_t + log g(·)`` (or ``log i'_t + log g(·)``),
computed from the pre-activations with softplus as the paper does
(:func:`log_coefficients`), in blocks of 16 steps (:class:`LogSpaceMinRNN`, with a
hand-written backward; range and float32 error: :func:`rnnbench.scans.log_space_scan`);
with ``scan`` ``loop``, or ``auto`` on the CPU, the gates through autograd and the
recurrence by the fused loop (:class:`rnnbench.scans.LinearRecurrence`; why the CPU
default differs: :mod:`rnnbench.scans`). The plain version scans linearly: the
associative scan (``parallel``) or the fused loop.
One difference from the
paper's listing, which feeds the initial state through ``log g`` (so a zero state
starts the scan at ``g(0) = 1/2``, unlike the sequential form): here the state is
the state, it enters the scan linearly and may have any sign, so the scan equals
the step loop, and a run continued from a returned state is exact.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from rnnbench.cell import Cell, Reference
from rnnbench.errors import check, is_number
from rnnbench.registry import register_cell
from rnnbench.scans import (adjoint, checked_scan, linear_scan, log_space_scan, scan_blocks, times_previous_states,
                            use_parallel_scan)


def g(v: Tensor) -> Tensor:
    """The paper's candidate activation: ``v + 1/2`` for ``v >= 0``, ``σ(v)`` below (positive,
    continuous), written ``relu(v) + σ(min(v, 0))``: the same values, and about twice as fast
    forward and backward on CPU as ``torch.where`` (which is not vectorised there)."""
    return torch.relu(v) + torch.sigmoid(v.clamp(max=0.0))


def log_g(v: Tensor) -> Tensor:
    """``log g(v)``, stable: ``log(v + 1/2)`` for ``v >= 0``, ``log σ(v) = −softplus(−v)`` below;
    written ``log(relu(v) + 1/2) − softplus(−min(v, 0)) + log 2`` (each term is 0 on the
    other side: ``log(1/2) + log 2``, ``−softplus(0) + log 2``), without ``torch.where``."""
    return torch.log(torch.relu(v).add_(0.5)).sub_(F.softplus(v.clamp(max=0.0).neg_())).add_(math.log(2.0))


def log_g_derivative(v: Tensor) -> Tensor:
    """``(log g)'(v)``: ``1/(v + 1/2)`` for ``v >= 0``, ``σ(−v)`` below."""
    above = (v >= 0).to(v.dtype)
    return torch.lerp(torch.sigmoid(-v), torch.relu(v).add_(0.5).reciprocal_(), above)


def log_coefficients(p: Tensor, num_gates: int) -> tuple[Tensor, Tensor, Tensor]:
    """``log a``, ``log b`` of ``h_t = a_t h_{t-1} + b_t`` from the pre-activations ``p``
    (``(..., G·D)``), by softplus as the paper's listings, and ``d = log(b / (a g(v)))``.

    minGRU: ``d = k`` (``log z − log(1 − z) = k``), ``log(1 − z) = −softplus(k)``;
    minLSTM: ``d = softplus(−k_f) − softplus(−k_i) = log(i / f)``, ``log f' = −softplus(d)``;
    both: ``log b = log a + d + log g(v)`` (``log z`` or ``log i'``, plus ``log g``).
    """
    D = p.shape[-1] // num_gates
    if num_gates == 2:
        d = p[..., :D]
    else:
        d = F.softplus(-p[..., :D]).sub_(F.softplus(-p[..., D : 2 * D]))
    log_a = F.softplus(d).neg_()
    return log_a, log_g(p[..., -D:]).add_(log_a).add_(d), d


class LogSpaceMinRNN(torch.autograd.Function):
    """``apply(p, real, h0, num_gates) -> h``: minGRU (``num_gates=2``) or minLSTM (3) over
    the time-first pre-activations ``p: (T, B, G·D)`` by the log-space scan
    (:func:`rnnbench.scans.log_space_scan`); ``real`` ``(T, B, 1)`` True on real steps,
    or None; ``h: (T, B, D)``. Padded steps get ``log a = 0, log b = −inf``.

    Backward, written out (first derivatives): the adjoint recurrence
    (:func:`rnnbench.scans.adjoint`) gives ``λ``, then ``∂L/∂log a = λ a h_{t-1}``,
    ``∂L/∂log b = λ b``, and through :func:`log_coefficients`
    ``∂L/∂d = b̄ a + ā (a − 1)`` (``ā, b̄``: those two; ``a − 1 = expm1(log a)``, accurate),
    ``∂L/∂v = b̄ (log g)'(v)``, and for minLSTM ``∂L/∂k_f = −∂L/∂d σ(−k_f)``,
    ``∂L/∂k_i = ∂L/∂d σ(−k_i)``. One Function per block of 16 steps keeps it in cache.
    """

    @staticmethod
    def forward(ctx, p: Tensor, real: Optional[Tensor], h0: Tensor, num_gates: int) -> Tensor:
        log_a, log_b, _ = log_coefficients(p, num_gates)
        if real is not None:
            log_a.masked_fill_(~real, 0.0)
            log_b.masked_fill_(~real, -math.inf)
        h = log_space_scan(log_a, log_b, h0)
        ctx.save_for_backward(p, real, h0, h, log_a, log_b)
        ctx.num_gates = num_gates
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h: Tensor):
        p, real, h0, h, log_a, log_b = ctx.saved_tensors
        a = torch.exp(log_a)
        lam = adjoint(grad_h, a)
        grad_log_a = times_previous_states(lam * a, h, h0)
        grad_log_b = torch.exp(log_b).mul_(lam)  # exp(−inf) = 0 on padded steps
        if real is not None:
            grad_log_a.masked_fill_(~real, 0.0)
        grad_d = torch.expm1(log_a).mul_(grad_log_a).addcmul_(grad_log_b, a)
        D = p.shape[-1] // ctx.num_gates
        v = p[..., -D:]
        grad_v = log_g_derivative(v).mul_(grad_log_b)
        if ctx.num_gates == 2:
            grad_p = torch.cat([grad_d, grad_v], dim=-1)
        else:
            grad_k_f = torch.sigmoid(-p[..., :D]).mul_(grad_d).neg_()
            grad_p = torch.cat([grad_k_f, torch.sigmoid(-p[..., D : 2 * D]).mul_(grad_d), grad_v], dim=-1)
        return grad_p, None, lam[0] * a[0], None


class _MinRNN(Cell):
    """What minGRU and minLSTM share: the projection, the state, the output and the scans.
    A subclass gives ``num_gates``, :attr:`input_gate` and :meth:`gates` (its equations)."""

    num_gates: ClassVar[int]
    ELEMENTWISE_FLOPS: ClassVar[int]  # per state unit and step, after the matmul
    retention_gate = "keep"  # the coefficient of h_{t-1}: 1 − z (minGRU), f' (minLSTM)
    input_gate: ClassVar[str]  # the coefficient of h̃: z (minGRU), i' (minLSTM)
    option_examples = [{"log_space": False}, {"expansion": 2.0}, {"bias": False}, {"scan": "parallel"},
                       {"scan": "loop"}, {"log_space": False, "scan": "parallel"}]

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, expansion: float = 1.0,
                 log_space: bool = True, scan: str = "auto"):
        super().__init__(input_size, hidden_size)
        check(isinstance(bias, bool), "cell.bias", bias, "true or false")
        check(is_number(expansion) and expansion > 0 and round(expansion * hidden_size) >= 1, "cell.expansion",
              expansion, "a number > 0 (the state has round(expansion * hidden_size) >= 1 units; 1.0: no projection)")
        check(isinstance(log_space, bool), "cell.log_space", log_space, "true or false")
        self.bias, self.expansion, self.log_space, self.scan = bias, float(expansion), log_space, checked_scan(scan)
        self.inner_size = round(self.expansion * hidden_size)
        self.linear = nn.Linear(input_size, self.num_gates * self.inner_size, bias=bias)
        self.out = nn.Linear(self.inner_size, hidden_size, bias=False) if self.expansion != 1.0 else None

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, bias={self.bias}, expansion={self.expansion}, "
                f"log_space={self.log_space}, scan={self.scan}")

    def initial_state(self, batch_size: int, device=None, dtype=None) -> Tensor:
        """Zeros ``(B, D)``, ``D = round(expansion · H)``."""
        weight = self.linear.weight
        return torch.zeros(batch_size, self.inner_size, device=weight.device if device is None else device,
                           dtype=weight.dtype if dtype is None else dtype)

    # --- size and cost ---------------------------------------------------------------
    @classmethod
    def num_parameters(cls, input_size: int, hidden_size: int, bias: bool = True, expansion: float = 1.0,
                       **_: Any) -> int:
        """``G·D·I`` weights (``G`` = 2 minGRU, 3 minLSTM; ``D = round(αH)``), ``G·D`` biases,
        and ``H·D`` for the output projection when ``α != 1``."""
        D = round(expansion * hidden_size)
        return cls.num_gates * D * (input_size + (1 if bias else 0)) + (hidden_size * D if expansion != 1.0 else 0)

    def flops_per_step(self) -> int:
        """``2·G·D·I`` for the input matmul (multiply-add = 2), ``G·D`` bias adds, the
        gates' elementwise work per unit (:attr:`ELEMENTWISE_FLOPS`), and ``2HD`` for the
        output projection when ``α != 1``."""
        D, I = self.inner_size, self.input_size
        flops = 2 * self.num_gates * D * I + (self.num_gates * D if self.bias else 0) + self.ELEMENTWISE_FLOPS * D
        return flops + (2 * self.hidden_size * D if self.out is not None else 0)

    # --- one step -------------------------------------------------------------------
    def input_projection(self, x: Tensor) -> Tensor:
        """Every gate's and the candidate's pre-activation, ``(..., G·D)``."""
        return self.linear(x)

    def candidate(self, v: Tensor) -> Tensor:
        """``h̃ = g(v)`` (log-space version) or ``v`` (plain version)."""
        return g(v) if self.log_space else v

    def recurrence(self, p_t: Tensor, h: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """One step of the paper's equations: ``y_t``, the new ``h`` and the gates."""
        gates = self.gates(p_t)
        h_new = self.update(gates, h)
        return self.output(h_new), h_new, gates

    def update(self, gates: dict[str, Tensor], h: Tensor) -> Tensor:
        """``h_t = keep ⊙ h_{t-1} + input ⊙ h̃_t``: both cells' update, with their gates."""
        return gates["keep"] * h + self.input_term(gates)

    def input_term(self, gates: dict[str, Tensor]) -> Tensor:
        """``b_t`` of ``h_t = a_t h_{t-1} + b_t``: ``z ⊙ h̃`` (minGRU) or ``i' ⊙ h̃`` (minLSTM)."""
        return gates[self.input_gate] * gates["h_tilde"]

    def output(self, h: Tensor) -> Tensor:
        return h if self.out is None else self.out(h)

    # --- whole sequences ------------------------------------------------------------
    def fused_forward(self, x: Tensor, state: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """One GEMM for every input projection, then the scan in blocks of 16 steps
        (:func:`rnnbench.scans.scan_blocks`): the log-space scan
        (:func:`rnnbench.scans.log_space_scan`, in :class:`LogSpaceMinRNN`) of
        :func:`log_coefficients`, or the gates through autograd and a linear scan
        (:func:`rnnbench.scans.linear_scan`: associative or the fused loop), as ``scan``
        and ``log_space`` choose (module docstring). Padded steps get ``a = 1, b = 0``;
        time-first inside."""
        p = self.input_projection(x.transpose(0, 1))  # (T, B, G·D), contiguous
        mask_t = None if mask is None else mask.t().unsqueeze(-1)
        parallel = use_parallel_scan(self.scan, p.device)
        h, last = scan_blocks(lambda p_b, real, h0: self._scan_block(p_b, real, h0, parallel), [p, mask_t], state)
        y = self.output(h)
        if mask_t is not None:
            y = torch.where(mask_t, y, 0.0)
        return y.transpose(0, 1), last  # padded steps keep the state: the last is each sequence's own

    def _scan_block(self, p: Tensor, real: Optional[Tensor], h0: Tensor, parallel: bool) -> tuple[Tensor, Tensor]:
        if self.log_space and parallel:
            h = LogSpaceMinRNN.apply(p, real, h0, self.num_gates)
        else:
            gates = self.gates(p)
            a, b = gates["keep"], self.input_term(gates)
            if real is not None:
                a, b = a.masked_fill(~real, 1.0), b.masked_fill(~real, 0.0)
            h = linear_scan(a, b, h0, parallel)
        return h, h[-1]


@register_cell("mingru")
class MinGRU(_MinRNN):
    """minGRU (Feng et al. 2024): ``h_t = (1 − z_t) ⊙ h_{t-1} + z_t ⊙ g(W_h x_t + b_h)``,
    ``z_t = σ(W_z x_t + b_z)``. Gates ``z``, ``keep = 1 − z`` (the retention gate) and ``h_tilde``."""

    num_gates = 2
    input_gate = "z"
    gate_names = ("z", "keep", "h_tilde")
    ELEMENTWISE_FLOPS = 6  # σ, g, 1 − z, two products, one sum

    def gates(self, p: Tensor) -> dict[str, Tensor]:
        k, v = p.chunk(2, dim=-1)
        z = torch.sigmoid(k)
        return {"z": z, "keep": 1 - z, "h_tilde": self.candidate(v)}

    @classmethod
    def reference_modules(cls, input_size, hidden_size, num_layers, bidirectional, options) -> list[Reference]:
        """``torch.nn.GRU`` of the same width (cuDNN on a GPU): the cell minGRU simplifies."""
        return [Reference("torch.nn.GRU", nn.GRU(input_size, hidden_size, num_layers, batch_first=True,
                                                 bidirectional=bidirectional))]


@register_cell("minlstm")
class MinLSTM(_MinRNN):
    """minLSTM (Feng et al. 2024): ``h_t = f'_t ⊙ h_{t-1} + i'_t ⊙ g(W_h x_t + b_h)`` with the
    normalised gates ``f' = f/(f + i)``, ``i' = i/(f + i)``. Gates ``f``, ``i``, ``keep = f'``
    (the retention gate), ``input = i'`` and ``h_tilde``."""

    num_gates = 3
    input_gate = "input"
    gate_names = ("f", "i", "keep", "input", "h_tilde")
    ELEMENTWISE_FLOPS = 10  # two σ, f + i, two divisions, g, two products, one sum

    def gates(self, p: Tensor) -> dict[str, Tensor]:
        k_f, k_i, v = p.chunk(3, dim=-1)
        f, i = torch.sigmoid(k_f), torch.sigmoid(k_i)
        return {"f": f, "i": i, "keep": f / (f + i), "input": i / (f + i), "h_tilde": self.candidate(v)}

    @classmethod
    def reference_modules(cls, input_size, hidden_size, num_layers, bidirectional, options) -> list[Reference]:
        """``torch.nn.GRU`` and ``torch.nn.LSTM`` of the same width (cuDNN on a GPU)."""
        return [Reference(label, module(input_size, hidden_size, num_layers, batch_first=True,
                                        bidirectional=bidirectional))
                for label, module in (("torch.nn.GRU", nn.GRU), ("torch.nn.LSTM", nn.LSTM))]
