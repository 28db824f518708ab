"""The Cell protocol: one recurrent layer, one direction, batch-first.

A cell maps ``x: (B, T, input_size)`` to ``y: (B, T, hidden_size)`` and a final
state. The state is a tensor ``(B, ...)`` or a tuple of such tensors (LSTM-like
cells); framework code never assumes which and goes through :func:`map_state`.

- ``initial_state(batch_size, device, dtype)`` -> the state before step 0;
- ``step(x_t, state) -> (y_t, state)`` is the reference semantics (decoding,
  introspection, and the oracle in tests);
- ``forward(x, state=None, lengths=None) -> (y, state)`` loops ``step`` by
  default; cells override it with fast paths. Steps at or beyond ``lengths[b]``
  are padding: they leave the state unchanged and their outputs are zero.

Depth and direction are not cells: :class:`rnnbench.stack.CellStack` adds
``num_layers``, inter-layer dropout and ``bidirectional`` to any cell.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .errors import check

State = Union[Tensor, Tuple["State", ...]]


def map_state(fn: Callable[..., Tensor], *states: State) -> State:
    """Apply ``fn`` leaf-wise to one or more states of the same structure."""
    first = states[0]
    if isinstance(first, Tensor):
        return fn(*states)
    return tuple(map_state(fn, *leaves) for leaves in zip(*states))


def state_leaves(state: State) -> list[Tensor]:
    """The tensors of a state, in a fixed order."""
    if isinstance(state, Tensor):
        return [state]
    return [leaf for sub in state for leaf in state_leaves(sub)]


def length_mask(lengths: Optional[Tensor], batch_size: int, seq_len: int, device) -> Optional[Tensor]:
    """Boolean ``(B, T)`` mask, True on real steps; None when every step is real."""
    if lengths is None:
        return None
    lengths = torch.as_tensor(lengths, device=device)
    if lengths.shape != (batch_size,):
        raise ValueError(f"lengths must have shape ({batch_size},), got {tuple(lengths.shape)}")
    if bool((lengths < 0).any()) or bool((lengths > seq_len).any()):
        raise ValueError(f"lengths must lie in [0, {seq_len}], got {lengths.tolist()}")
    return torch.arange(seq_len, device=device)[None, :] < lengths[:, None]


class Cell(nn.Module):
    """Base class of every recurrent cell (one layer, one direction).

    Subclasses set ``input_size`` and ``hidden_size`` through ``super().__init__``
    and implement :meth:`step`; they may override :meth:`initial_state` (default:
    one zero tensor ``(B, hidden_size)``) and :meth:`forward` (default: loop
    :meth:`step` over ``x.unbind(1)`` with padding masked).

    ``gate_names`` lists the intermediates a cell can expose for diagnostics.
    """

    gate_names: Sequence[str] = ()

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        check(isinstance(input_size, int) and input_size >= 1, "input_size", input_size, "an integer >= 1")
        check(isinstance(hidden_size, int) and hidden_size >= 1, "cell.hidden_size", hidden_size, "an integer >= 1")
        self.input_size = input_size
        self.hidden_size = hidden_size

    @property
    def output_size(self) -> int:
        return self.hidden_size

    @property
    def state_size(self) -> int:
        """Number of floats the recurrent state holds per sequence."""
        return sum(leaf.numel() for leaf in state_leaves(self.initial_state(1, device="meta")))

    def initial_state(self, batch_size: int, device=None, dtype=None) -> State:
        if device is None or dtype is None:
            ref = next(self.parameters(), None)
            device = device if device is not None else (ref.device if ref is not None else None)
            dtype = dtype if dtype is not None else (ref.dtype if ref is not None else None)
        return torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        raise NotImplementedError(f"{type(self).__name__} must implement step(x_t, state)")

    def forward(
        self, x: Tensor, state: Optional[State] = None, lengths: Optional[Tensor] = None
    ) -> tuple[Tensor, State]:
        return self.loop_steps(x, state, lengths)

    def prepare(
        self, x: Tensor, state: Optional[State] = None, lengths: Optional[Tensor] = None
    ) -> tuple[State, Optional[Tensor]]:
        """What every ``forward`` starts with: the initial state when none is given, and
        the ``(B, T)`` padding mask from ``lengths`` (validated), None when every step is real."""
        batch_size, seq_len, _ = x.shape
        if state is None:
            state = self.initial_state(batch_size, x.device, x.dtype)
        mask = length_mask(lengths, batch_size, seq_len, x.device)
        if mask is not None and bool(mask.all()):
            mask = None
        return state, mask

    def loop_steps(
        self, x: Tensor, state: Optional[State] = None, lengths: Optional[Tensor] = None
    ) -> tuple[Tensor, State]:
        """The reference ``forward``: ``step`` at every time step, padding masked."""
        state, mask = self.prepare(x, state, lengths)
        return scan(self.step, x, state, mask, self.output_size)

    # --- introspection ----------------------------------------------------------------
    def step_with_gates(self, x_t: Tensor, state: State) -> tuple[Tensor, State, dict[str, Tensor]]:
        """:meth:`step` plus the named intermediates of ``gate_names`` (each ``(B, H)``).

        Cells that expose gates override this; the default exposes nothing.
        """
        y_t, state = self.step(x_t, state)
        return y_t, state, {}

    def forward_with_gates(
        self, x: Tensor, state: Optional[State] = None, lengths: Optional[Tensor] = None
    ) -> tuple[Tensor, State, dict[str, Tensor]]:
        """``forward`` through the reference steps, also returning every exposed
        intermediate over time: ``{name: (B, T, ...)}`` (zeros at padded steps).

        Same values as :meth:`forward`; slower, so only used when something is recorded.
        """
        batch_size, seq_len, _ = x.shape
        state, mask = self.prepare(x, state, lengths)
        gates_over_time: list[dict[str, Tensor]] = []

        def step(x_t, state):
            y_t, state, gates = self.step_with_gates(x_t, state)
            gates_over_time.append(gates)
            return y_t, state

        y, state = scan(step, x, state, mask, self.output_size)
        names = gates_over_time[0].keys() if gates_over_time else ()
        gates = {name: torch.stack([g[name] for g in gates_over_time], dim=1) for name in names}
        if mask is not None:
            gates = {name: torch.where(mask.view(batch_size, seq_len, *([1] * (g.dim() - 2))), g, 0.0)
                     for name, g in gates.items()}
        return y, state, gates

    # --- constraints and cost ------------------------------------------------------------
    def constrain_(self) -> None:
        """Project parameters back into their allowed set; called after every
        optimiser step (e.g. IndRNN clips its recurrent weights). Default: nothing."""

    def flops_per_step(self) -> Optional[int]:
        """Forward FLOPs per sequence per time step (a multiply-add counts 2; elementwise
        operations count 1 each), by formula; None if the cell does not say."""
        return None

    @classmethod
    def num_parameters(cls, input_size: int, hidden_size: int, **options) -> Optional[int]:
        """Trainable parameters of one cell, by formula (tests check it against the
        counted parameters); None if the cell does not say."""
        return None


def scan(
    step: Callable[[Tensor, State], tuple[Tensor, State]],
    inputs: Tensor,
    state: State,
    mask: Optional[Tensor],
    output_size: int,
) -> tuple[Tensor, State]:
    """Run ``step(input_t, state) -> (y_t, state)`` over ``inputs.unbind(1)``.

    Padded steps (``mask[b, t]`` False) keep the previous state and output zeros.
    ``inputs`` may be raw inputs or precomputed input projections ``(B, T, ...)``.
    """
    batch_size, seq_len = inputs.shape[:2]
    outputs = []
    steps_mask = mask.unbind(1) if mask is not None else [None] * seq_len
    # unbind, not inputs[:, t]: indexing in a differentiated loop costs O(T^2) in backward.
    for input_t, real in zip(inputs.unbind(1), steps_mask):
        y_t, new_state = step(input_t, state)
        if real is None:
            state = new_state
        else:
            real = real[:, None]
            state = map_state(lambda new, old: torch.where(_expand(real, new), new, old), new_state, state)
            y_t = torch.where(_expand(real, y_t), y_t, 0.0)  # where, not *: inf * 0 would be NaN
        outputs.append(y_t)
    if not outputs:
        return inputs.new_zeros(batch_size, 0, output_size), state
    return torch.stack(outputs, dim=1), state


def last_real_outputs(y: Tensor, initial: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """For a causal cell whose state is its output, run over a padded batch: zero the
    padded outputs and read each sequence's final state at its last real step
    (``initial`` where a sequence is empty). Returns ``(y, final_state)``."""
    if mask is None:
        return y, y[:, -1]
    y = torch.where(mask.unsqueeze(-1), y, 0.0)  # where, not *: inf * 0 would be NaN
    lengths = mask.sum(dim=1)
    last = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, y.shape[-1])
    return y, torch.where((lengths > 0).unsqueeze(1), y.gather(1, last).squeeze(1), initial)


def _expand(mask: Tensor, like: Tensor) -> Tensor:
    """Reshape a ``(B, 1)`` mask to broadcast against a ``(B, ...)`` state leaf."""
    return mask.reshape(mask.shape[0], *([1] * (like.dim() - 1)))
