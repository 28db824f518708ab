"""Gated recurrent unit (GRU).

Cho et al. 2014, "Learning Phrase Representations using RNN Encoder-Decoder for
Statistical Machine Translation", arXiv:1406.1078.

Gate order is r, z, n (reset, update, candidate), as in ``torch.nn.GRU``; the
parameters are named and laid out like ``torch.nn.GRU``'s layer 0, so weights can
be copied across (``weight_ih = [W_ir; W_iz; W_in]``, ``weight_hh = [W_hr; W_hz; W_hn]``,
``bias_ih = [b_ir; b_iz; b_in]``, ``bias_hh = [b_hr; b_hz; b_hn]``). ``σ`` is the
logistic sigmoid and ``⊙`` the elementwise product.

``reset_after=True`` (default): the PyTorch / cuDNN convention (also Keras'
``reset_after=True``). The reset gate multiplies the *output* of the recurrent
matmul, so the three recurrent matmuls are one GEMM per step::

    r  = σ(W_ir x + b_ir + W_hr h + b_hr)
    z  = σ(W_iz x + b_iz + W_hz h + b_hz)
    n  = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))
    h' = (1 − z) ⊙ n + z ⊙ h

``reset_after=False``: the original form of Cho et al. 2014 (and of Dive into Deep
Learning). r and z as above, but the reset gate multiplies the state *before* the
matmul::

    n  = tanh(W_in x + b_in + W_hn (r ⊙ h) + b_hn)
    h' = (1 − z) ⊙ n + z ⊙ h

These are two different models, not two implementations of one: with the same
weights they compute different functions, and results obtained with one do not
transfer to the other. Only ``reset_after=True`` can use PyTorch's fused kernel.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnbench.cell import Cell, Reference, last_real_outputs
from rnnbench.errors import check
from rnnbench.registry import register_cell


@register_cell("gru")
class GRU(Cell):
    """GRU cell; ``reset_after`` picks the PyTorch/cuDNN (True) or Cho et al. (False) form.

    Fast path: PyTorch's fused GRU kernel (``reset_after=True``). The update gate
    ``z`` keeps the state when near 1 (``h' = (1 − z) ⊙ n + z ⊙ h``).
    """

    gate_names = ("r", "z", "n")
    retention_gate = "z"
    option_examples = [{"reset_after": False}, {"bias": False}, {"reset_after": False, "bias": False}]

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, reset_after: bool = True):
        super().__init__(input_size, hidden_size)
        check(isinstance(bias, bool), "cell.bias", bias, "true or false")
        check(isinstance(reset_after, bool), "cell.reset_after", reset_after, "true or false")
        self.bias = bias
        self.reset_after = reset_after
        self.weight_ih = nn.Parameter(torch.empty(3 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(3 * hidden_size))
            self.bias_hh = nn.Parameter(torch.empty(3 * hidden_size))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """U(-1/sqrt(H), 1/sqrt(H)) for every weight and bias, as torch.nn.GRU."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for param in self.parameters():
            nn.init.uniform_(param, -bound, bound)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias}, reset_after={self.reset_after}"

    # --- size and cost ---------------------------------------------------------------
    @classmethod
    def num_parameters(cls, input_size: int, hidden_size: int, bias: bool = True, **_) -> int:
        """3 gates: ``3H(I + H)`` weights, plus ``6H`` biases (two per gate, as PyTorch)."""
        H, I = hidden_size, input_size
        return 3 * H * (I + H) + (6 * H if bias else 0)

    def flops_per_step(self) -> int:
        """``6HI + 6H²`` for the two matmuls (multiply-add = 2), ``6H`` bias adds,
        ``2H`` to add input and recurrent parts of r and z, ``2H`` sigmoids,
        ``3H`` for n (product with r, add, tanh), ``3H`` for the interpolation."""
        H, I = self.hidden_size, self.input_size
        return 6 * H * I + 6 * H * H + (6 * H if self.bias else 0) + 10 * H

    # --- one step -------------------------------------------------------------------
    def input_projection(self, x: Tensor) -> Tensor:
        """``gi = W_ih x + b_ih``: the three gates' input parts, ``(..., 3H)``."""
        return F.linear(x, self.weight_ih, self.bias_ih)

    def recurrence(self, gi: Tensor, h: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """One GRU update from ``gi``: ``y_t = h' = (1 − z) ⊙ n + z ⊙ h`` and the gates r, z, n."""
        i_r, i_z, i_n = gi.chunk(3, dim=-1)
        H = self.hidden_size
        if self.reset_after:
            h_r, h_z, h_n = F.linear(h, self.weight_hh, self.bias_hh).chunk(3, dim=-1)
            r = torch.sigmoid(i_r + h_r)
            z = torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + r * h_n)
        else:
            b_rz = None if self.bias_hh is None else self.bias_hh[: 2 * H]
            b_n = None if self.bias_hh is None else self.bias_hh[2 * H :]
            h_r, h_z = F.linear(h, self.weight_hh[: 2 * H], b_rz).chunk(2, dim=-1)
            r = torch.sigmoid(i_r + h_r)
            z = torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + F.linear(r * h, self.weight_hh[2 * H :], b_n))
        h_new = torch.lerp(n, h, z)  # (1 − z) ⊙ n + z ⊙ h
        return h_new, h_new, {"r": r, "z": z, "n": n}

    # --- whole sequences ------------------------------------------------------------
    def fused_forward(self, x: Tensor, state: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """PyTorch's GRU kernel (what torch.nn.GRU.forward calls) on this cell's parameters;
        ``reset_after=False`` has no such kernel and takes the loop.

        Variable lengths are not packed: on CPU, backward through a packed sequence
        measured 4x slower than the whole padded batch. A GRU is causal, so outputs
        at real steps do not depend on the padding after them: run the padded batch,
        zero the padded outputs, and read each final state at its last real step.
        """
        if not self.reset_after:
            return self.loop_forward(x, state, mask)
        weights = [self.weight_ih, self.weight_hh]
        if self.bias:
            weights += [self.bias_ih, self.bias_hh]
        # _VF.gru(input, hx, weights, has_biases, num_layers, dropout, train, bidirectional, batch_first)
        y, _ = torch._VF.gru(x, state.unsqueeze(0), weights, self.bias, 1, 0.0, self.training, False, True)
        return last_real_outputs(y, state, mask)

    @classmethod
    def reference_modules(cls, input_size, hidden_size, num_layers, bidirectional, options) -> list[Reference]:
        """``torch.nn.GRU`` (cuDNN on a GPU): the same function with ``reset_after=True``."""
        return [Reference("torch.nn.GRU", nn.GRU(input_size, hidden_size, num_layers, bias=options.get("bias", True),
                                                 batch_first=True, bidirectional=bidirectional))]
