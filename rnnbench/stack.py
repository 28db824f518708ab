"""Depth and direction for any cell: ``CellStack`` builds layers of cells.

A stack of ``num_layers`` layers, each with one cell per direction. Layer 0 reads
the input; layer ``l > 0`` reads the previous layer's outputs, both directions
concatenated (``hidden_size × num_directions`` features), after inter-layer
dropout in training mode. The backward direction reverses each sequence within
its own length (padding stays at the end), runs its cell, and reverses back, so
its final state is the state after reading position 0, as with PyTorch's packed
sequences.

The state is a tuple with one cell state per (layer, direction), ordered like
PyTorch's ``h_n``: layer 0 forward, layer 0 backward, layer 1 forward, ...
"""

from __future__ import annotations

import inspect
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cell import State, length_mask
from .errors import check, is_int, is_number

# Keys of a cell config that belong to the stack wrapper; every other key is an
# option of the cell class itself.
STACK_KEYS = ("name", "hidden_size", "num_layers", "bidirectional", "dropout")
# Constructor arguments the stack fills in for cells that take them (never set in a config).
POSITION_KEYS = ("layer", "num_layers")


@dataclass
class Recording:
    """What :meth:`CellStack.recording` collects during one forward pass: every cell's gates
    (``"l{layer}.{fwd|bwd}.{name}"``, each ``(B, T, ...)``) and the state of the first cell
    (layer 0, forward) after every step, as the tensors of the autograd graph."""

    gates: dict[str, Tensor] = field(default_factory=dict)
    states: list[State] = field(default_factory=list)


class CellStack(nn.Module):
    """``num_layers`` layers of ``cell_cls``, optionally bidirectional, batch-first.

    ``CellStack(cell_cls, input_size, hidden_size, num_layers=1, bidirectional=False,
    dropout=0.0, **cell_options)``; ``cell_options`` go to every ``cell_cls(...)``.
    """

    def __init__(
        self,
        cell_cls: type,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        **cell_options,
    ):
        super().__init__()
        check(
            is_int(num_layers) and num_layers >= 1,
            "cell.num_layers", num_layers, "an integer >= 1",
        )
        check(isinstance(bidirectional, bool), "cell.bidirectional", bidirectional, "true or false")
        check(
            is_number(dropout) and 0.0 <= dropout < 1.0,
            "cell.dropout", dropout, "a number in [0, 1)",
        )
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                f"cell.dropout={dropout} has no effect with cell.num_layers=1: dropout is applied "
                "between layers only.",
                stacklevel=2,
            )
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.num_directions = 2 if bidirectional else 1
        self.dropout = float(dropout)
        # layers[l][d]: the cell of layer l, direction d (0 forward, 1 backward). A cell whose
        # constructor takes `layer` and `num_layers` is told its place in the stack.
        told = set(inspect.signature(cell_cls.__init__).parameters) >= set(POSITION_KEYS)
        self.layers = nn.ModuleList()
        for layer in range(num_layers):
            layer_input_size = input_size if layer == 0 else hidden_size * self.num_directions
            position = {"layer": layer, "num_layers": num_layers} if told else {}
            self.layers.append(
                nn.ModuleList(
                    cell_cls(layer_input_size, hidden_size, **cell_options, **position)
                    for _ in range(self.num_directions)
                )
            )
        self._recording: Optional[Recording] = None

    @property
    def cells(self) -> list[nn.Module]:
        """Every cell, in state order (layer 0 forward, layer 0 backward, layer 1 forward, ...)."""
        return [cell for layer in self.layers for cell in layer]

    @property
    def output_size(self) -> int:
        return self.hidden_size * self.num_directions

    @property
    def state_size(self) -> int:
        """Floats of recurrent state per sequence, summed over every cell."""
        return sum(cell.state_size for cell in self.cells)

    def extra_repr(self) -> str:
        return (
            f"num_layers={self.num_layers}, bidirectional={self.bidirectional}, dropout={self.dropout}"
        )

    def initial_state(self, batch_size: int, device=None, dtype=None) -> tuple[State, ...]:
        return tuple(cell.initial_state(batch_size, device, dtype) for cell in self.cells)

    def forward(
        self, x: Tensor, state: Optional[tuple[State, ...]] = None, lengths: Optional[Tensor] = None
    ) -> tuple[Tensor, tuple[State, ...]]:
        """``(B, T, input_size) -> (B, T, output_size)`` and the final states; padded outputs are 0.
        Inside :meth:`recording`, runs every cell's reference steps and records them."""
        if self._recording is not None:
            y, final_states, gates = self._run(x, state, lengths, record=True,
                                               on_first_cell_step=self._recording.states.append)
            self._recording.gates.update(gates)
            return y, final_states
        y, final_states, _ = self._run(x, state, lengths, record=False)
        return y, final_states

    @contextmanager
    def recording(self) -> Iterator[Recording]:
        """``with stack.recording() as rec: model(...)``: the forward passes inside run through
        the reference steps and fill ``rec`` (gates, and the first cell's states per step)."""
        self._recording = Recording()
        try:
            yield self._recording
        finally:
            self._recording = None

    def final_output(self, y: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """``(B, output_size)``: each direction's output after it has read the whole sequence:
        the forward half at the last real step, the backward half at position 0 (after
        reading back to the start). For a bidirectional stack, the last step alone would
        give a backward half that has seen only the last input."""
        if lengths is None:
            forward_half = y[:, -1, : self.hidden_size]
        else:
            last = (torch.as_tensor(lengths, device=y.device).long() - 1).clamp(min=0)
            forward_half = y[torch.arange(y.shape[0], device=y.device), last, : self.hidden_size]
        if not self.bidirectional:
            return forward_half
        return torch.cat([forward_half, y[:, 0, self.hidden_size:]], dim=-1)

    def forward_with_gates(
        self, x: Tensor, state: Optional[tuple[State, ...]] = None, lengths: Optional[Tensor] = None
    ) -> tuple[Tensor, tuple[State, ...], dict[str, Tensor]]:
        """:meth:`forward` through every cell's reference steps, also returning the
        gates each cell exposes, in input time order, keyed ``"l{layer}.{fwd|bwd}.{name}"``
        (e.g. ``"l0.fwd.z"``), each ``(B, T, ...)``."""
        return self._run(x, state, lengths, record=True)

    def flops_per_step(self) -> Optional[int]:
        """Forward FLOPs per sequence per time step, summed over the cells (None if any cell does not say)."""
        flops = [cell.flops_per_step() for cell in self.cells]
        return None if any(f is None for f in flops) else sum(flops)

    def _run(self, x: Tensor, state, lengths, record: bool, on_first_cell_step=None):
        batch_size, seq_len, _ = x.shape
        num_cells = self.num_layers * self.num_directions
        if state is None:
            state = self.initial_state(batch_size, x.device, x.dtype)
        if not isinstance(state, (tuple, list)) or len(state) != num_cells:
            raise ValueError(
                f"CellStack state must be a tuple of {num_cells} cell states "
                f"(one per layer and direction), got {type(state).__name__}"
                + (f" of length {len(state)}" if isinstance(state, (tuple, list)) else "")
            )
        if lengths is not None:
            length_mask(lengths, batch_size, seq_len, x.device)  # validates shape and range
            lengths = torch.as_tensor(lengths, device=x.device)
        reverse_index = _reverse_index(lengths, batch_size, seq_len, x.device) if self.bidirectional else None

        final_states = []
        all_gates: dict[str, Tensor] = {}
        out = x
        for layer, directions in enumerate(self.layers):
            if layer > 0 and self.dropout > 0 and self.training:
                out = F.dropout(out, p=self.dropout, training=True)
            outputs = []
            for direction, cell in enumerate(directions):
                cell_state = state[layer * self.num_directions + direction]
                cell_input = out if direction == 0 else _reverse(out, reverse_index)
                if record:
                    on_step = on_first_cell_step if layer == 0 and direction == 0 else None
                    y, cell_state, gates = cell.forward_with_gates(cell_input, cell_state, lengths, on_step)
                else:
                    y, cell_state = cell(cell_input, cell_state, lengths)
                    gates = {}
                if direction == 1:
                    y = _reverse(y, reverse_index)
                    gates = {name: _reverse(g.flatten(2), reverse_index).view_as(g) for name, g in gates.items()}
                prefix = f"l{layer}.{'fwd' if direction == 0 else 'bwd'}."
                all_gates.update({prefix + name: g for name, g in gates.items()})
                outputs.append(y)
                final_states.append(cell_state)
            out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
        return out, tuple(final_states), all_gates


def _reverse_index(lengths: Optional[Tensor], batch_size: int, seq_len: int, device) -> Optional[Tensor]:
    """``(B, T)`` indices reversing each row within its length (padding stays); None: plain flip."""
    if lengths is None:
        return None
    t = torch.arange(seq_len, device=device).expand(batch_size, seq_len)
    lengths = lengths.to(device=device, dtype=torch.long)[:, None]
    return torch.where(t < lengths, lengths - 1 - t, t)


def _reverse(x: Tensor, index: Optional[Tensor]) -> Tensor:
    """Reverse ``(B, T, F)`` along time, per row by ``index`` (its own inverse)."""
    if index is None:
        return x.flip(1)
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
