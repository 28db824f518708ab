"""Vanilla (Elman) recurrent network.

Elman 1990, "Finding Structure in Time", Cognitive Science 14(2).

The parameters are named and laid out like ``torch.nn.RNN``'s layer 0, so weights
can be copied across (``weight_ih (H, I)``, ``weight_hh (H, H)``, ``bias_ih (H,)``,
``bias_hh (H,)``)::

    a  = W_ih x + b_ih + W_hh h + b_hh      (the pre-activation, gate "a")
    h' = act(a)                              act = tanh (default) or relu

The state is ``h`` ``(B, H)``; the output is ``y_t = h_t``. Elman's network uses a
sigmoid; tanh (zero-centred) is the usual modern choice and ``torch.nn.RNN``'s
default. ``relu`` is the activation of IRNN (Le, Jaitly & Hinton 2015), which also
initialises ``W_hh`` to the identity; here both activations use ``torch.nn.RNN``'s
initialisation, U(-1/sqrt(H), 1/sqrt(H)) for every weight and bias.
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

NONLINEARITIES = {"tanh": torch.tanh, "relu": torch.relu}


@register_cell("rnn")
class RNN(Cell):
    """Elman RNN cell, ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``, ``act`` tanh or relu.

    ``use_fused`` (default True): :meth:`forward` runs PyTorch's fused RNN kernel
    on this cell's parameters (with variable ``lengths``: on the padded batch, see
    :meth:`_fused`). Set it to False to use the Python loop (one GEMM for
    all input projections, then one step per time step), e.g. to compare the two
    paths in tests.
    """

    gate_names = ("a",)

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh"):
        super().__init__(input_size, hidden_size)
        check(isinstance(bias, bool), "cell.bias", bias, "true or false")
        check(isinstance(nonlinearity, str) and nonlinearity in NONLINEARITIES, "cell.nonlinearity", nonlinearity,
              f"one of {', '.join(NONLINEARITIES)}")
        self.bias = bias
        self.nonlinearity = nonlinearity
        self.use_fused = True
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(hidden_size))
            self.bias_hh = nn.Parameter(torch.empty(hidden_size))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """U(-1/sqrt(H), 1/sqrt(H)) for every weight and bias, as torch.nn.RNN."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for param in self.parameters():
            nn.init.uniform_(param, -bound, bound)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias}, nonlinearity={self.nonlinearity!r}"

    # --- size and cost ---------------------------------------------------------------
    @classmethod
    def num_parameters(cls, input_size: int, hidden_size: int, bias: bool = True, **_) -> int:
        """``H(I + H)`` weights, plus ``2H`` biases (two, as PyTorch)."""
        H, I = hidden_size, input_size
        return H * (I + H) + (2 * H if bias else 0)

    def flops_per_step(self) -> int:
        """``2HI + 2H²`` for the two matmuls (multiply-add = 2), ``2H`` bias adds,
        ``H`` to add the two parts, ``H`` for the nonlinearity."""
        H, I = self.hidden_size, self.input_size
        return 2 * H * I + 2 * H * H + (2 * H if self.bias else 0) + 2 * H

    # --- one step -------------------------------------------------------------------
    def _update(self, gi: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """One update from the input projection ``gi = W_ih x + b_ih``; returns h', a."""
        a = gi + F.linear(h, self.weight_hh, self.bias_hh)
        return NONLINEARITIES[self.nonlinearity](a), a

    def step_with_gates(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """:meth:`step`, plus the pre-activation ``{"a"}`` (``(B, H)``) for diagnostics."""
        h, a = self._update(F.linear(x_t, self.weight_ih, self.bias_ih), state)
        return h, h, {"a": a}

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """Reference semantics: ``(B, I), (B, H) -> y_t = h', h'``."""
        h = self._update(F.linear(x_t, self.weight_ih, self.bias_ih), state)[0]
        return h, h

    # --- whole sequences ------------------------------------------------------------
    def forward(
        self, x: Tensor, state: Optional[Tensor] = None, lengths: Optional[Tensor] = None
    ) -> tuple[Tensor, Tensor]:
        """``(B, T, I) -> (B, T, H)`` and the state after each sequence's last real step."""
        state, mask = self.prepare(x, state, lengths)
        if self.use_fused and x.shape[1] > 0:
            return self._fused(x, state, mask)
        return self._loop(x, state, mask)

    def _fused(self, x: Tensor, state: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """PyTorch's RNN kernel (what torch.nn.RNN.forward calls) on this cell's parameters.

        Variable lengths are not packed: on CPU, backward through the packed kernel
        slices its input once per time step (each slice's backward fills a full-size
        gradient) and measured 3x slower than the whole padded batch (T=200, B=64,
        H=256). The RNN is causal and its state is its output, so: run the padded
        batch, zero the padded outputs, and read each final state at its last real step.
        """
        weights = [self.weight_ih, self.weight_hh]
        if self.bias:
            weights += [self.bias_ih, self.bias_hh]
        kernel = torch._VF.rnn_tanh if self.nonlinearity == "tanh" else torch._VF.rnn_relu
        # _VF.rnn_*(input, hx, weights, has_biases, num_layers, dropout, train, bidirectional, batch_first)
        y, _ = kernel(x, state.unsqueeze(0), weights, self.bias, 1, 0.0, self.training, False, True)
        return last_real_outputs(y, state, mask)

    def _loop(self, x: Tensor, state: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """Python loop over time (one GEMM for every input projection first); padding
        masked exactly like :meth:`Cell.loop_steps`."""
        gi_all = F.linear(x, self.weight_ih, self.bias_ih)

        def step(gi: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
            h = self._update(gi, h)[0]
            return h, h

        return scan(step, gi_all, state, mask, self.hidden_size)
