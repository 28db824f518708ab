"""Quasi-recurrent neural network (QRNN).

Bradbury, Merity, Xiong & Socher 2017, "Quasi-Recurrent Neural Networks", ICLR,
arXiv:1611.01576. Authors' code: github.com/salesforce/pytorch-qrnn.

A masked (causal) convolution over time with window ``k`` gives, at every step, a
candidate and gates from the last ``k`` inputs only; ``σ`` is the logistic sigmoid,
``⊙`` the elementwise product::

    z_t = tanh(W_z [x_t; x_{t-1}; ...; x_{t-k+1}] + b_z)      candidate
    f_t = σ(W_f [...] + b_f),  o_t = σ(W_o [...] + b_o),  i_t = σ(W_i [...] + b_i)

then a "pooling" over time, elementwise (no matrix touches the state)::

    f-pooling    c_t = f_t ⊙ c_{t-1} + (1 − f_t) ⊙ z_t,   h_t = c_t
    fo-pooling   c_t = f_t ⊙ c_{t-1} + (1 − f_t) ⊙ z_t,   h_t = o_t ⊙ c_t
    ifo-pooling  c_t = f_t ⊙ c_{t-1} + i_t ⊙ z_t,         h_t = o_t ⊙ c_t

``f`` keeps the state when near 1, as in the paper (the authors' package names
``1 − f`` its forget gate). The output is ``y_t = h_t``. Steps before the first input
read the inputs carried in the state (zeros at the start), as the package's
``save_prev_x``: the state is ``c`` for ``k = 1``, and ``(c, x_prev)`` for ``k > 1``, with
``x_prev = [x_{t-1}; ...; x_{t-k+1}]`` ``(B, (k−1) I)``, so that ``step`` and a run
continued from a returned state are exact.

Zoneout (Krueger et al. 2016), as the paper: ``f = 1 − dropout(1 − σ(W_f ...))``
without dropout's rescaling: in training each unit keeps its state (``f = 1``, and
``i = 0`` with ifo-pooling) with probability ``zoneout`` at each step; in evaluation
``1 − f`` (and ``i``) are scaled by ``1 − zoneout``, the expectation (the package's choice).

Parameters: ``linear.weight`` ``(G·H, k·I)`` with the gates in the order ``z, f, o, i``
(``G`` = 2, 3, 4 for f-, fo-, ifo-pooling) and the input columns in the order
``x_t, x_{t-1}, ...`` (the package's ``cat([X, Xm1])``); ``linear.bias`` ``(G·H,)``;
``torch.nn.Linear``'s initialisation, as the package.

Fast path: one GEMM for all steps and taps, then the pooling in blocks of 16 steps
(:func:`rnnbench.scans.scan_blocks`), gates through autograd, by
:func:`rnnbench.scans.linear_scan` as ``scan`` (:data:`rnnbench.scans.SCANS`) chooses: the
associative scan (``parallel``, and ``auto`` off the CPU) or the fused loop with a
hand-written backward (``loop``, and ``auto`` on the CPU; why: :mod:`rnnbench.scans`).
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnbench.cell import Cell, Reference
from rnnbench.errors import check, is_int, is_number
from rnnbench.registry import register_cell
from rnnbench.scans import checked_scan, linear_scan, scan_blocks, use_parallel_scan

POOLINGS = {"f": ("z", "f"), "fo": ("z", "f", "o"), "ifo": ("z", "f", "o", "i")}
QRNNState = Union[Tensor, tuple[Tensor, Tensor]]  # c, or (c, x_prev) for window > 1


@register_cell("qrnn")
class QRNN(Cell):
    """QRNN layer: a causal convolution of window ``k`` over the inputs, then f-, fo- or
    ifo-pooling. Gates ``z, f, (o), (i)`` and the pooled state ``c``; ``f`` is the retention gate."""

    gate_names = ("z", "f", "o", "i", "c")  # per instance: the pooling's own (see __init__)
    retention_gate = "f"
    option_examples = [{"window": 1}, {"window": 3, "pooling": "ifo"}, {"pooling": "f"}, {"zoneout": 0.25},
                       {"bias": False}, {"scan": "parallel"}, {"scan": "loop"}]

    def __init__(self, input_size: int, hidden_size: int, window: int = 2, pooling: str = "fo",
                 zoneout: float = 0.0, bias: bool = True, scan: str = "auto"):
        super().__init__(input_size, hidden_size)
        check(is_int(window) and window >= 1, "cell.window", window, "an integer >= 1 (1: no look-back; the paper: 2)")
        check(isinstance(pooling, str) and pooling in POOLINGS, "cell.pooling", pooling,
              f"one of {', '.join(POOLINGS)}")
        check(is_number(zoneout) and 0.0 <= zoneout < 1.0, "cell.zoneout", zoneout, "a number in [0, 1)")
        check(isinstance(bias, bool), "cell.bias", bias, "true or false")
        self.window, self.pooling, self.zoneout, self.bias = window, pooling, float(zoneout), bias
        self.scan = checked_scan(scan)
        self.gate_names = (*POOLINGS[pooling], "c")
        self.num_gates = len(POOLINGS[pooling])
        self.linear = nn.Linear(window * input_size, self.num_gates * hidden_size, bias=bias)

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, window={self.window}, pooling={self.pooling!r}, "
                f"zoneout={self.zoneout}, bias={self.bias}, scan={self.scan}")

    def initial_state(self, batch_size: int, device=None, dtype=None) -> QRNNState:
        """``c`` zeros ``(B, H)``, and for ``window > 1`` the previous inputs, zeros ``(B, (k−1) I)``."""
        c = super().initial_state(batch_size, device, dtype)
        if self.window == 1:
            return c
        return c, c.new_zeros(batch_size, (self.window - 1) * self.input_size)

    # --- size and cost ---------------------------------------------------------------
    @classmethod
    def num_parameters(cls, input_size: int, hidden_size: int, window: int = 2, pooling: str = "fo",
                       bias: bool = True, **_) -> int:
        """``G·H·k·I`` weights and ``G·H`` biases (``G`` = 2, 3, 4 for f-, fo-, ifo-pooling)."""
        gates = len(POOLINGS[pooling])
        return gates * hidden_size * (window * input_size + (1 if bias else 0))

    def flops_per_step(self) -> int:
        """``2·G·H·k·I`` for the convolution (multiply-add = 2), ``G·H`` bias adds, ``G·H``
        nonlinearities, and the pooling per unit: 4 (``f c + (1 − f) z``), +1 for
        ``o ⊙ c``; ifo: 3 (``f c + i z``) + 1. Zoneout's scaling in evaluation is not counted."""
        H, G = self.hidden_size, self.num_gates
        pool = {"f": 4, "fo": 5, "ifo": 4}[self.pooling]
        return 2 * G * H * self.window * self.input_size + (G * H if self.bias else 0) + G * H + pool * H

    # --- one step -------------------------------------------------------------------
    def input_projection(self, x: Tensor) -> Tensor:
        """The current input's tap of the convolution, ``W[:, :I] x + b`` with zoneout applied
        in training, ``(..., G·H)``; for ``window > 1`` followed by ``x`` itself (kept in the state)."""
        H, I = self.hidden_size, self.input_size
        current = self._zoneout(F.linear(x, self.linear.weight[:, :I], self.linear.bias))
        return current if self.window == 1 else torch.cat([current, x], dim=-1)

    def recurrence(self, p_t: Tensor, state: QRNNState) -> tuple[Tensor, QRNNState, dict[str, Tensor]]:
        """One QRNN step: the earlier taps from ``x_prev``, the gates, the pooling."""
        GH, I = self.num_gates * self.hidden_size, self.input_size
        if self.window == 1:
            c, pre = state, p_t
        else:
            (c, x_prev), x_t = state, p_t[..., GH:]
            pre = p_t[..., :GH] + F.linear(x_prev, self.linear.weight[:, I:])
            x_prev = torch.cat([x_t, x_prev[..., :-I]], dim=-1)
        gates = self._gates(pre)
        if self.pooling == "ifo":
            c_new = gates["f"] * c + gates["i"] * gates["z"]
        else:
            c_new = gates["f"] * c + (1 - gates["f"]) * gates["z"]
        h = c_new if self.pooling == "f" else gates["o"] * c_new
        gates["c"] = c_new
        return h, (c_new if self.window == 1 else (c_new, x_prev)), gates

    def _gates(self, pre: Tensor) -> dict[str, Tensor]:
        """``z = tanh``, the others ``σ``; in evaluation with zoneout, ``1 − f`` and ``i`` scaled by ``1 − zoneout``."""
        names = POOLINGS[self.pooling]
        gates = {name: torch.tanh(a) if name == "z" else torch.sigmoid(a)
                 for name, a in zip(names, pre.chunk(len(names), dim=-1))}
        if self.zoneout > 0 and not self.training:
            keep = 1.0 - self.zoneout
            gates["f"] = 1 - keep * (1 - gates["f"])
            if "i" in gates:
                gates["i"] = keep * gates["i"]
        return gates

    def _zoneout(self, pre: Tensor) -> Tensor:
        """In training, each unit keeps its state with probability ``zoneout``: its ``f``
        pre-activation becomes ``+inf`` (``σ = 1`` exactly) and its ``i`` one ``−inf``."""
        if self.zoneout == 0 or not self.training:
            return pre
        H = self.hidden_size
        kept = torch.rand(pre.shape[:-1] + (H,), device=pre.device) < self.zoneout
        parts = list(pre.split(H, dim=-1))
        parts[1] = parts[1].masked_fill(kept, math.inf)
        if self.pooling == "ifo":
            parts[3] = parts[3].masked_fill(kept, -math.inf)
        return torch.cat(parts, dim=-1)

    # --- whole sequences ------------------------------------------------------------
    def fused_forward(self, x: Tensor, state: QRNNState, mask: Optional[Tensor]) -> tuple[Tensor, QRNNState]:
        """Every tap of every step in one GEMM (time-first), then the pooling in blocks."""
        x = x.transpose(0, 1)  # (T, B, I)
        c0, x_prev = (state, None) if self.window == 1 else state
        seq = x if x_prev is None else torch.cat([self._past_inputs(x_prev), x])  # (k − 1 + T, B, I)
        T = x.shape[0]
        source = torch.cat([seq[self.window - 1 - j : self.window - 1 - j + T] for j in range(self.window)], dim=-1)
        pre = self._zoneout(self.linear(source))  # (T, B, G·H)
        real = None if mask is None else mask.t().unsqueeze(-1)
        parallel = use_parallel_scan(self.scan, pre.device)
        h, c = scan_blocks(lambda pre_b, real_b, c_b: self._pool_block(pre_b, real_b, c_b, parallel), [pre, real], c0)
        if real is not None:
            h = torch.where(real, h, 0.0)
        if x_prev is None:
            return h.transpose(0, 1), c
        return h.transpose(0, 1), (c, self._last_inputs(seq, mask))

    def _pool_block(self, pre: Tensor, real: Optional[Tensor], c0: Tensor, parallel: bool) -> tuple[Tensor, Tensor]:
        gates = self._gates(pre)
        a = gates["f"]
        b = gates["i"] * gates["z"] if self.pooling == "ifo" else (1 - a) * gates["z"]
        if real is not None:
            a, b = a.masked_fill(~real, 1.0), b.masked_fill(~real, 0.0)
        c = linear_scan(a, b, c0, parallel)
        return (c if self.pooling == "f" else gates["o"] * c), c[-1]

    def _past_inputs(self, x_prev: Tensor) -> Tensor:
        """``x_prev = [x_{-1}; ...; x_{-(k-1)}]`` ``(B, (k−1) I)`` as inputs in time order ``(k − 1, B, I)``."""
        return x_prev.view(x_prev.shape[0], self.window - 1, self.input_size).flip(1).transpose(0, 1)

    def _last_inputs(self, seq: Tensor, mask: Optional[Tensor]) -> Tensor:
        """The new ``x_prev``: each sequence's last ``k − 1`` real inputs, most recent first."""
        batch_size = seq.shape[1]
        lengths = (torch.full((batch_size,), seq.shape[0] - self.window + 1, device=seq.device)
                   if mask is None else mask.sum(dim=1))
        # x_t sits at seq[t + k − 1]; x_{L−1−j} for j = 0 .. k − 2.
        index = lengths[None, :] + self.window - 2 - torch.arange(self.window - 1, device=seq.device)[:, None]
        last = seq.gather(0, index[..., None].expand(-1, -1, self.input_size))  # (k − 1, B, I)
        return last.transpose(0, 1).reshape(batch_size, -1)

    @classmethod
    def reference_modules(cls, input_size, hidden_size, num_layers, bidirectional, options) -> list[Reference]:
        """``torch.nn.LSTM`` of the same width (cuDNN on a GPU), the cell the paper compares with."""
        return [Reference("torch.nn.LSTM", nn.LSTM(input_size, hidden_size, num_layers, batch_first=True,
                                                   bidirectional=bidirectional))]
