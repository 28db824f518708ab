"""Long short-term memory (LSTM).

Hochreiter & Schmidhuber 1997, "Long Short-Term Memory", Neural Computation 9(8).
Forget gate: Gers, Schmidhuber & Cummins 2000, "Learning to Forget: Continual
Prediction with LSTM", Neural Computation 12(10). Forget-gate bias 1.0:
Jozefowicz, Zaremba & Sutskever 2015, "An Empirical Exploration of Recurrent
Network Architectures", ICML.

Gate order is i, f, g, o (input, forget, candidate, output), as in
``torch.nn.LSTM``; the parameters are named and laid out like ``torch.nn.LSTM``'s
layer 0, so weights can be copied across (``weight_ih = [W_ii; W_if; W_ig; W_io]``,
``weight_hh = [W_hi; W_hf; W_hg; W_ho]``, ``bias_ih = [b_ii; b_if; b_ig; b_io]``,
``bias_hh = [b_hi; b_hf; b_hg; b_ho]``). ``σ`` is the logistic sigmoid and ``⊙``
the elementwise product::

    i  = σ(W_ii x + b_ii + W_hi h + b_hi)
    f  = σ(W_if x + b_if + W_hf h + b_hf)
    g  = tanh(W_ig x + b_ig + W_hg h + b_hg)
    o  = σ(W_io x + b_io + W_ho h + b_ho)
    c' = f ⊙ c + i ⊙ g
    h' = o ⊙ tanh(c')

The state is the tuple ``(h, c)``, each ``(B, H)``; the output is ``y_t = h_t``.
This is the PyTorch / cuDNN form: no peephole connections (Gers & Schmidhuber
2000), no projection of h, and two bias vectors whose sum is the effective bias.

``forget_bias`` is added once, at initialisation, to the forget-gate slice
``bias_ih[H:2H]`` (on top of the uniform initialisation); after that it is an
ordinary trainable bias. Jozefowicz et al. 2015 recommend 1.0: the forget gate
then starts mostly open (σ(1) ≈ 0.73), so gradients flow through c from the first
update. It needs ``bias=True``. ``forget_bias=0.0`` gives exactly
``torch.nn.LSTM``'s initialisation.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnbench.cell import Cell, Reference
from rnnbench.errors import check, is_number
from rnnbench.registry import register_cell

LSTMState = tuple[Tensor, Tensor]  # (h, c)


@register_cell("lstm")
class LSTM(Cell):
    """LSTM cell with a forget gate; state ``(h, c)``, output ``h``. Fast path: PyTorch's
    fused LSTM kernel. The forget gate ``f`` keeps the cell state when near 1."""

    gate_names = ("i", "f", "g", "o", "c")
    retention_gate = "f"
    option_examples = [{"forget_bias": 1.0}, {"bias": False}]

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, forget_bias: float = 0.0):
        super().__init__(input_size, hidden_size)
        check(isinstance(bias, bool), "cell.bias", bias, "true or false")
        check(
            is_number(forget_bias) and math.isfinite(forget_bias),
            "cell.forget_bias", forget_bias, "a finite number (e.g. 1.0, Jozefowicz et al. 2015; 0.0 as torch.nn.LSTM)",
        )
        check(bias or forget_bias == 0, "cell.forget_bias", forget_bias,
              "0.0 when cell.bias=false (there is no bias to add it to); set cell.bias=true to use it")
        self.bias = bias
        self.forget_bias = float(forget_bias)
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size))
            self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """U(-1/sqrt(H), 1/sqrt(H)) for every weight and bias, as torch.nn.LSTM;
        then ``forget_bias`` is added to the forget slice ``bias_ih[H:2H]``."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for param in self.parameters():
            nn.init.uniform_(param, -bound, bound)
        if self.bias and self.forget_bias != 0.0:
            H = self.hidden_size
            with torch.no_grad():
                self.bias_ih[H : 2 * H].add_(self.forget_bias)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias}, forget_bias={self.forget_bias}"

    def initial_state(self, batch_size: int, device=None, dtype=None) -> LSTMState:
        """``(h, c)``, both zeros ``(B, H)``."""
        h = super().initial_state(batch_size, device, dtype)
        return h, torch.zeros_like(h)

    # --- size and cost ---------------------------------------------------------------
    @classmethod
    def num_parameters(cls, input_size: int, hidden_size: int, bias: bool = True, **_) -> int:
        """4 gates: ``4H(I + H)`` weights, plus ``8H`` biases (two per gate, as PyTorch)."""
        H, I = hidden_size, input_size
        return 4 * H * (I + H) + (8 * H if bias else 0)

    def flops_per_step(self) -> int:
        """``8HI + 8H²`` for the two matmuls (multiply-add = 2), ``8H`` bias adds,
        ``4H`` to add input and recurrent parts, ``4H`` gate nonlinearities,
        ``3H`` for c' = f ⊙ c + i ⊙ g, ``2H`` for h' = o ⊙ tanh(c')."""
        H, I = self.hidden_size, self.input_size
        return 8 * H * I + 8 * H * H + (8 * H if self.bias else 0) + 13 * H

    # --- one step -------------------------------------------------------------------
    def input_projection(self, x: Tensor) -> Tensor:
        """``W_ih x + b_ih``: the four gates' input parts, ``(..., 4H)``."""
        return F.linear(x, self.weight_ih, self.bias_ih)

    def recurrence(self, gi: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState, dict[str, Tensor]]:
        """One LSTM update from ``gi``: ``y_t = h'``, state ``(h', c')``, gates i, f, g, o and c'."""
        h, c = state
        a_i, a_f, a_g, a_o = (gi + F.linear(h, self.weight_hh, self.bias_hh)).chunk(4, dim=-1)
        i, f, g, o = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.tanh(a_g), torch.sigmoid(a_o)
        c_new = f * c + i * g
        h_new = o * torch.tanh(c_new)
        return h_new, (h_new, c_new), {"i": i, "f": f, "g": g, "o": o, "c": c_new}

    # --- whole sequences ------------------------------------------------------------
    def fused_forward(self, x: Tensor, state: LSTMState, mask: Optional[Tensor]) -> tuple[Tensor, LSTMState]:
        """PyTorch's LSTM kernel on this cell's parameters; with variable lengths, once per
        stretch of time in which no sequence ends (:meth:`_fused_lengths`)."""
        return self._fused(x, state) if mask is None else self._fused_lengths(x, state, mask)

    @classmethod
    def reference_modules(cls, input_size, hidden_size, num_layers, bidirectional, options) -> list[Reference]:
        """``torch.nn.LSTM`` (cuDNN on a GPU): the same function."""
        return [Reference("torch.nn.LSTM", nn.LSTM(input_size, hidden_size, num_layers, bias=options.get("bias", True),
                                                   batch_first=True, bidirectional=bidirectional))]

    def _flat_weights(self) -> list[Tensor]:
        if self.bias:
            return [self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh]
        return [self.weight_ih, self.weight_hh]

    def _fused(self, x: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        """PyTorch's LSTM kernel (what torch.nn.LSTM.forward calls) on this cell's parameters."""
        h, c = state
        # _VF.lstm(input, (h0, c0), weights, has_biases, num_layers, dropout, train, bidirectional, batch_first)
        y, h_n, c_n = torch._VF.lstm(
            x, (h.unsqueeze(0), c.unsqueeze(0)), self._flat_weights(), self.bias, 1, 0.0, self.training, False, True
        )
        return y, (h_n[0], c_n[0])

    def _fused_lengths(self, x: Tensor, state: LSTMState, mask: Tensor) -> tuple[Tensor, LSTMState]:
        """Variable lengths: the fused kernel once per stretch of time in which no sequence ends.

        Sequences are sorted longest first, so the unfinished ones are always the
        first ``live`` rows. From one distinct length to the next, the kernel runs on
        those rows; the sequences ending there leave with their state (the state at
        their last real step), the others carry on. Outputs of finished rows are 0.

        Why not ``pack_padded_sequence`` and the packed kernel, as torch.nn.LSTM does:
        on CPU its backward slices the packed input once per time step, and measured
        16x slower than this (T=200, B=64, H=256, lengths 100-200). Why not the padded
        batch, as the GRU does: ``c`` is not an output, so the cell state at each
        sequence's last real step cannot be read back from ``y``.
        """
        batch_size, seq_len, _ = x.shape
        sorted_lengths, order = mask.sum(dim=1).sort(descending=True, stable=True)
        sorted_list = sorted_lengths.tolist()
        ends = sorted(set(sorted_list) - {0})  # the steps at which some sequences end
        if not ends:  # no real step at all: the loop keeps every parameter in the graph (zero gradients)
            return self.loop_forward(x, state, mask)
        weights = self._flat_weights()
        x = x.index_select(0, order)
        h, c = state[0].index_select(0, order), state[1].index_select(0, order)
        live = sum(n > 0 for n in sorted_list)
        finished = [(h[live:], c[live:])]  # length 0: the initial state; pieces from the last row up
        outputs = []
        starts = [0] + ends[:-1]
        stretches = x.split([end - start for start, end in zip(starts, ends)] + [seq_len - ends[-1]], dim=1)
        for x_part, end in zip(stretches, ends):
            hx = (h[:live].unsqueeze(0), c[:live].unsqueeze(0))
            y, h_n, c_n = torch._VF.lstm(x_part[:live], hx, weights, self.bias, 1, 0.0, self.training, False, True)
            outputs.append(F.pad(y, (0, 0, 0, 0, 0, batch_size - live)))  # finished rows: zeros
            still = sum(n > end for n in sorted_list)
            finished.append((h_n[0, still:], c_n[0, still:]))
            h, c, live = h_n[0], c_n[0], still
        outputs.append(x.new_zeros(batch_size, seq_len - ends[-1], self.hidden_size))  # all finished
        unsort = order.argsort()
        y = torch.cat(outputs, dim=1).index_select(0, unsort)
        h = torch.cat([piece[0] for piece in reversed(finished)]).index_select(0, unsort)
        c = torch.cat([piece[1] for piece in reversed(finished)]).index_select(0, unsort)
        return y, (h, c)
