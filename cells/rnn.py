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

from rnnbench.cell import Cell, Reference, last_real_outputs, saturated_units
from rnnbench.errors import check
from rnnbench.registry import register_cell

NONLINEARITIES = {"tanh": torch.tanh, "relu": torch.relu}


@register_cell("rnn")
class RNN(Cell):
    """Elman RNN cell, ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``, ``act`` tanh or relu.
    Fast path: PyTorch's fused RNN kernel. No gates: the diagnostics report the
    saturation of the pre-activation ``a``."""

    gate_names = ("a",)
    preactivation_gate = "a"
    option_examples = [{"nonlinearity": "relu"}, {"bias": False}]

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh"):
        super().__init__(input_size, hidden_size)
        check(isinstance(bias, bool), "cell.bias", bias, "true or false")
        check(isinstance(nonlinearity, str) and nonlinearity in NONLINEARITIES, "cell.nonlinearity", nonlinearity,
              f"one of {', '.join(NONLINEARITIES)}")
        self.bias = bias
        self.nonlinearity = nonlinearity
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
    def input_projection(self, x: Tensor) -> Tensor:
        """``W_ih x + b_ih``, ``(..., H)``."""
        return F.linear(x, self.weight_ih, self.bias_ih)

    def recurrence(self, gi: Tensor, h: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """``y_t = h' = act(a)`` with the pre-activation ``a = gi + W_hh h + b_hh`` (gate "a")."""
        a = gi + F.linear(h, self.weight_hh, self.bias_hh)
        h_new = NONLINEARITIES[self.nonlinearity](a)
        return h_new, h_new, {"a": a}

    def saturated(self, preactivation: Tensor) -> Tensor:
        """tanh: ``|a| > 2`` (tanh'(2) = 0.07); relu: ``a <= 0`` (no gradient at all)."""
        return saturated_units(preactivation, self.nonlinearity)

    # --- whole sequences ------------------------------------------------------------
    def fused_forward(self, x: Tensor, state: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
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

    @classmethod
    def reference_modules(cls, input_size, hidden_size, num_layers, bidirectional, options) -> list[Reference]:
        """``torch.nn.RNN`` with the same nonlinearity (cuDNN on a GPU): the same function."""
        nonlinearity = options.get("nonlinearity", "tanh")
        return [Reference(f"torch.nn.RNN({nonlinearity})",
                          nn.RNN(input_size, hidden_size, num_layers, nonlinearity=nonlinearity,
                                 bias=options.get("bias", True), batch_first=True, bidirectional=bidirectional))]
