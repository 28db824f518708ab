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

from rnnbench.cell import Cell, last_real_outputs, scan
from rnnbench.errors import check
from rnnbench.registry import register_cell


@register_cell("gru")
class GRU(Cell):
    """GRU cell; ``reset_after`` picks the PyTorch/cuDNN (True) or Cho et al. (False) form.

    ``use_fused`` (default True): with ``reset_after=True``, :meth:`forward` runs
    PyTorch's fused GRU kernel on this cell's parameters. Set it to False to use
    the Python loop (one GEMM for all input projections, then one step per time
    step), e.g. to compare the two paths in tests.
    """

    gate_names = ("r", "z", "n")

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, reset_after: bool = True):
        super().__init__(input_size, hidden_size)
        check(isinstance(bias, bool), "cell.bias", bias, "true or false")
        check(isinstance(reset_after, bool), "cell.reset_after", reset_after, "true or false")
        self.bias = bias
        self.reset_after = reset_after
        self.use_fused = True
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
    def _recurrent_weights(self) -> tuple:
        """The recurrent weights as the update uses them (sliced once, outside any loop)."""
        if self.reset_after:
            return self.weight_hh, self.bias_hh
        H = self.hidden_size
        b_rz = None if self.bias_hh is None else self.bias_hh[: 2 * H]
        b_n = None if self.bias_hh is None else self.bias_hh[2 * H :]
        return self.weight_hh[: 2 * H], b_rz, self.weight_hh[2 * H :], b_n

    def _update(self, gi: Tensor, h: Tensor, weights: tuple) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One GRU update from the input projection ``gi = W_ih x + b_ih``; returns h', r, z, n."""
        i_r, i_z, i_n = gi.chunk(3, dim=1)
        if self.reset_after:
            w_hh, b_hh = weights
            h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, dim=1)
            r = torch.sigmoid(i_r + h_r)
            z = torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + r * h_n)
        else:
            w_rz, b_rz, w_n, b_n = weights
            h_r, h_z = F.linear(h, w_rz, b_rz).chunk(2, dim=1)
            r = torch.sigmoid(i_r + h_r)
            z = torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + F.linear(r * h, w_n, b_n))
        h_new = torch.lerp(n, h, z)  # (1 − z) ⊙ n + z ⊙ h
        return h_new, r, z, n

    def step_with_gates(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """:meth:`step`, plus the gates ``{"r", "z", "n"}`` (each ``(B, H)``) for diagnostics."""
        gi = F.linear(x_t, self.weight_ih, self.bias_ih)
        h, r, z, n = self._update(gi, state, self._recurrent_weights())
        return h, h, {"r": r, "z": z, "n": n}

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """Reference semantics: ``(B, I), (B, H) -> y_t = h', h'``."""
        gi = F.linear(x_t, self.weight_ih, self.bias_ih)
        h = self._update(gi, state, self._recurrent_weights())[0]
        return h, h

    # --- whole sequences ------------------------------------------------------------
    def forward(
        self, x: Tensor, state: Optional[Tensor] = None, lengths: Optional[Tensor] = None
    ) -> tuple[Tensor, Tensor]:
        """``(B, T, I) -> (B, T, H)`` and the state after each sequence's last real step."""
        state, mask = self.prepare(x, state, lengths)
        if self.use_fused and self.reset_after and x.shape[1] > 0:
            return self._fused(x, state, mask)
        return self._loop(x, state, mask)

    def _fused(self, x: Tensor, state: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """PyTorch's GRU kernel (what torch.nn.GRU.forward calls) on this cell's parameters.

        Variable lengths are not packed: on CPU, backward through a packed sequence
        measured 4x slower than the whole padded batch. A GRU is causal, so outputs
        at real steps do not depend on the padding after them: run the padded batch,
        zero the padded outputs, and read each final state at its last real step.
        """
        weights = [self.weight_ih, self.weight_hh]
        if self.bias:
            weights += [self.bias_ih, self.bias_hh]
        # _VF.gru(input, hx, weights, has_biases, num_layers, dropout, train, bidirectional, batch_first)
        y, _ = torch._VF.gru(x, state.unsqueeze(0), weights, self.bias, 1, 0.0, self.training, False, True)
        return last_real_outputs(y, state, mask)

    def _loop(self, x: Tensor, state: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """Python loop over time (one GEMM for every input projection first); padding
        masked exactly like :meth:`Cell.loop_steps`."""
        gi_all = F.linear(x, self.weight_ih, self.bias_ih)
        weights = self._recurrent_weights()

        def step(gi: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
            h = self._update(gi, h, weights)[0]
            return h, h

        return scan(step, gi_all, state, mask, self.hidden_size)
