"""The Cell protocol: one recurrent layer, one direction, batch-first.

A cell maps ``x: (B, T, input_size)`` to ``y: (B, T, hidden_size)`` and a final
state. The state is a tensor ``(B, ...)`` or a tuple of such tensors (LSTM-like
cells); framework code never assumes which and goes through :func:`map_state`.

What a cell writes (one of the first two; the rest is optional):

- ``input_projection(x) -> p`` and ``recurrence(p_t, state) -> (y_t, state, gates)``:
  the step split in two. ``input_projection`` holds every matmul that depends on the
  input only, so a sequence's projections are one GEMM before the loop over time;
  ``recurrence`` is what must run step by step. ``gates`` names the intermediates of
  ``gate_names`` (each ``(B, ...)``) for diagnostics;
- or ``step(x_t, state) -> (y_t, state)`` alone (the simplest plugin; no gates);
- ``fused_forward(x, state, mask) -> (y, state)``: a fast path over the whole
  sequence (a fused kernel, a custom autograd function, a parallel scan). It must
  equal the reference loop, values and gradients, padding included.

What the base class derives from that:

- ``step_with_gates(x_t, state)`` = ``recurrence(input_projection(x_t), state)`` (the
  reference semantics: decoding, introspection, the test oracle), and ``step`` from it;
- ``forward(x, state=None, lengths=None)``: ``fused_forward`` when the cell has one
  and ``use_fused`` is True, else ``loop_forward`` (one projection GEMM, then
  ``recurrence`` over ``x.unbind(1)``). Steps at or beyond ``lengths[b]`` are
  padding: they leave the state unchanged and their outputs are zero;
- ``loop_steps``: ``step`` at every time step, literally (the reference of the tests).

What a cell declares for the rest of the framework (class attributes and hooks; no
core module names a cell):

- ``gate_names``; ``retention_gate``, the gate whose value near 1 means "keep the
  state" (GRU ``z``, LSTM ``f``), drawn by the diagnostics and the report;
  ``preactivation_gate`` with :meth:`saturated`, for cells without gates (the
  fraction of units whose nonlinearity passes almost no gradient);
- :meth:`reference_modules`: the best existing implementation of the same function
  (``torch.nn.GRU`` ...), which ``rnnbench-speed`` times the cell against;
- :meth:`resolve_options`: options that depend on the task (IndRNN's bound needs the
  sequence length), resolved when the model is built instead of in YAML;
- ``constrain_`` (after every optimiser step), ``flops_per_step`` and
  ``num_parameters`` (formulas, checked by tests);
- ``option_examples``: option sets (constructor keyword arguments) that take code paths
  the defaults do not (GRU ``reset_after=False``, QRNN ``pooling="ifo"`` ...). The
  contract tests (``tests/test_cell_contract.py``) run every cell with its defaults,
  with each of these, and with every preset of ``conf/cell/``.

Depth and direction are not cells: :class:`rnnbench.stack.CellStack` adds
``num_layers``, inter-layer dropout and ``bidirectional`` to any cell. A cell whose
constructor takes ``layer`` and ``num_layers`` is told its place in the stack (e.g.
IndRNN initialises its last layer for long memory, as its paper does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .errors import check

State = Union[Tensor, Tuple["State", ...]]
Gates = dict[str, Tensor]


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


@dataclass
class Reference:
    """An existing implementation a cell is timed against: ``module`` runs the same
    kind of computation (``time_first``: it takes ``(T, B, I)`` inputs)."""

    label: str
    module: nn.Module
    time_first: bool = False


class Cell(nn.Module):
    """Base class of every recurrent cell (one layer, one direction); see the module docstring."""

    gate_names: ClassVar[Sequence[str]] = ()
    retention_gate: ClassVar[Optional[str]] = None  # a gate near 1 = the state is kept
    preactivation_gate: ClassVar[Optional[str]] = None  # a pre-activation whose saturation is reported
    option_examples: ClassVar[Sequence[dict[str, Any]]] = ()  # option sets for other code paths (tests)
    name: ClassVar[str] = ""  # set by @register_cell

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        check(isinstance(input_size, int) and input_size >= 1, "input_size", input_size, "an integer >= 1")
        check(isinstance(hidden_size, int) and hidden_size >= 1, "cell.hidden_size", hidden_size, "an integer >= 1")
        self.input_size = input_size
        self.hidden_size = hidden_size
        # forward takes fused_forward (when the cell has one) while this is True; False
        # runs the Python loop instead (tests and rnnbench-speed compare the two).
        self.use_fused = True

    @property
    def output_size(self) -> int:
        return self.hidden_size

    @property
    def state_size(self) -> int:
        """Number of floats the recurrent state holds per sequence."""
        return sum(leaf.numel() for leaf in state_leaves(self.initial_state(1, device="meta")))

    def initial_state(self, batch_size: int, device=None, dtype=None) -> State:
        """One zero tensor ``(B, hidden_size)``; cells with other states override this."""
        if device is None or dtype is None:
            ref = next(self.parameters(), None)
            device = device if device is not None else (ref.device if ref is not None else None)
            dtype = dtype if dtype is not None else (ref.dtype if ref is not None else None)
        return torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)

    # --- what a cell writes -----------------------------------------------------------
    def input_projection(self, x: Tensor) -> Tensor:
        """Everything of a step that depends on the input only, for ``(..., I)`` inputs
        (one step or a whole sequence). Default: the input itself."""
        return x

    def recurrence(self, p_t: Tensor, state: State) -> tuple[Tensor, State, Gates]:
        """One step from the projected input ``p_t``: ``(y_t, state, gates)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement recurrence(p_t, state) or step(x_t, state)")

    def fused_forward(self, x: Tensor, state: State, mask: Optional[Tensor]) -> tuple[Tensor, State]:
        """The fast path over a whole sequence (``mask``: ``(B, T)``, True on real steps, or
        None); only called on cells that define it."""
        raise NotImplementedError

    # --- derived: one step ----------------------------------------------------------------
    def step_with_gates(self, x_t: Tensor, state: State) -> tuple[Tensor, State, Gates]:
        """The reference step, with the named intermediates of ``gate_names``."""
        if self._defines("recurrence"):
            return self.recurrence(self.input_projection(x_t), state)
        if self._defines("step"):
            y_t, state = self.step(x_t, state)
            return y_t, state, {}
        raise NotImplementedError(f"{type(self).__name__} must implement recurrence(p_t, state) or step(x_t, state)")

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """Reference semantics of one step: ``(B, I), state -> (y_t, state)``."""
        y_t, state, _ = self.step_with_gates(x_t, state)
        return y_t, state

    # --- derived: whole sequences -----------------------------------------------------------
    @property
    def has_fused_forward(self) -> bool:
        return self._defines("fused_forward")

    def forward(
        self, x: Tensor, state: Optional[State] = None, lengths: Optional[Tensor] = None
    ) -> tuple[Tensor, State]:
        """``(B, T, I) -> (B, T, H)`` and the state after each sequence's last real step."""
        state, mask = self.prepare(x, state, lengths)
        if self.use_fused and self.has_fused_forward and x.shape[1] > 0:
            return self.fused_forward(x, state, mask)
        return self.loop_forward(x, state, mask)

    def loop_forward(self, x: Tensor, state: State, mask: Optional[Tensor]) -> tuple[Tensor, State]:
        """The Python loop: every input projection in one GEMM, then ``recurrence`` per step."""
        if not self._defines("recurrence"):
            return scan(self.step, x, state, mask, self.output_size)

        def step(p_t: Tensor, state: State) -> tuple[Tensor, State]:
            y_t, state, _ = self.recurrence(p_t, state)
            return y_t, state

        return scan(step, self.input_projection(x), state, mask, self.output_size)

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

    def forward_with_gates(
        self, x: Tensor, state: Optional[State] = None, lengths: Optional[Tensor] = None,
        on_step: Optional[Callable[[State], None]] = None,
    ) -> tuple[Tensor, State, Gates]:
        """``forward`` through the reference steps, also returning every exposed
        intermediate over time: ``{name: (B, T, ...)}`` (zeros at padded steps).
        ``on_step(state)`` is called with the state after every step (diagnostics take
        gradients with respect to those tensors). Same values as :meth:`forward`; slower."""
        batch_size, seq_len, _ = x.shape
        state, mask = self.prepare(x, state, lengths)
        gates_over_time: list[Gates] = []

        def step(x_t, state):
            y_t, state, gates = self.step_with_gates(x_t, state)
            gates_over_time.append(gates)
            if on_step is not None:
                on_step(state)
            return y_t, state

        y, state = scan(step, x, state, mask, self.output_size)
        names = gates_over_time[0].keys() if gates_over_time else ()
        gates = {name: torch.stack([g[name] for g in gates_over_time], dim=1) for name in names}
        if mask is not None:
            gates = {name: torch.where(mask.view(batch_size, seq_len, *([1] * (g.dim() - 2))), g, 0.0)
                     for name, g in gates.items()}
        return y, state, gates

    # --- declarations for the framework -----------------------------------------------------
    def saturated(self, preactivation: Tensor) -> Optional[Tensor]:
        """Where the nonlinearity after ``preactivation_gate`` passes (almost) no gradient, as
        a boolean tensor; None if the cell does not say."""
        return None

    @classmethod
    def reference_modules(cls, input_size: int, hidden_size: int, num_layers: int, bidirectional: bool,
                          options: dict[str, Any]) -> list[Reference]:
        """Existing implementations of the same layer stack to time this cell against
        (``rnnbench-speed``), built with ``dropout=0`` and ``batch_first=True`` where they
        have those options. Default: none."""
        return []

    @classmethod
    def resolve_options(cls, options: dict[str, Any], task: Any) -> dict[str, Any]:
        """The cell options with those that depend on the task filled in (``task`` may be
        None, e.g. in the speed benchmark). Default: unchanged."""
        return options

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

    @classmethod
    def _defines(cls, method: str) -> bool:
        """True if a subclass overrides ``method`` of :class:`Cell`."""
        return getattr(cls, method) is not getattr(Cell, method)


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


def saturated_units(preactivation: Tensor, nonlinearity: str) -> Tensor:
    """Units whose nonlinearity passes (almost) no gradient: ``a <= 0`` for relu, ``|a| > 2``
    for tanh (tanh'(2) = 0.07)."""
    return preactivation <= 0 if nonlinearity == "relu" else preactivation.abs() > 2


def _expand(mask: Tensor, like: Tensor) -> Tensor:
    """Reshape a ``(B, 1)`` mask to broadcast against a ``(B, ...)`` state leaf."""
    return mask.reshape(mask.shape[0], *([1] * (like.dim() - 1)))
