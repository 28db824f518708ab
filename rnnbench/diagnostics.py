"""Gradient and gate diagnostics (``diagnostics=true``): why a cell remembers or forgets.

At the end of training, on one fixed batch (the first ``DIAGNOSTIC_BATCH``
sequences of the test set, so every cell of a comparison sees the same data), with
the weights the test was scored with and the model in eval mode (no dropout):

- **Gradient through time.** ``grad_norm[t]`` = ``‖∂ℓ/∂s_t‖``, the norm of the
  gradient of one sequence's loss ``ℓ`` with respect to the recurrent state
  ``s_t`` of layer 0 (forward direction) after step ``t``, averaged over the batch.
  ``s_t`` is the whole state the cell carries: ``h_t`` for GRU, RNN and IndRNN;
  ``(h_t, c_t)`` for LSTM (both concatenated); ``c_t`` for SRU. The gradient is the
  total derivative through every later use of ``s_t`` (later steps, the layers
  above, the head), taken by autograd on the per-step state tensors of the cell's
  reference loop (``forward_with_gates``). ``ℓ`` is the batch-mean loss times the
  batch size (each sequence's loss depends only on its own states). Vanishing
  gradients show as ``grad_norm`` decaying towards early ``t`` (Bengio, Simard &
  Frasconi 1994; Pascanu, Mikolov & Bengio 2013; the uRNN paper, Arjovsky et al.
  2016, plots the same quantity).
- **Gates.** Every intermediate the cells expose through
  ``CellStack.forward_with_gates`` (``l{layer}.{fwd|bwd}.{name}``: GRU ``r``, ``z``,
  ``n``; LSTM ``i``, ``f``, ``g``, ``o``, ``c``; SRU ``f``, ``r``, ``c``; RNN and
  IndRNN the pre-activation ``a``), as the mean over batch and units at each step.
  For a pre-activation ``a`` also its saturation: ``a.abs_gt_2``, the fraction of
  units with ``|a| > 2`` (tanh'(2) = 0.07: a saturated tanh passes almost no
  gradient), and ``a.nonpositive``, the fraction with ``a <= 0`` (a ReLU unit that
  is off passes none).
- **Aligned on events** (tasks that mark positions, e.g. the adding problem's
  ``marker_positions``): every gate's unit-mean aligned on the first marked
  position, ``offsets`` -5 .. T-1 steps from it, averaged over the sequences where
  that step exists. The GRU update gate (PyTorch form ``h' = (1 − z) ⊙ n + z ⊙ h``)
  holds the state when ``z`` is near 1: after the marked value has been read,
  ``z`` rises and stays high across the delay (the mechanism of Cho et al. 2014,
  Chung et al. 2014).

Written to ``diagnostics.json`` beside ``summary.json``, whose ``diagnostics``
field names the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import records
from .stack import CellStack
from .task import Task

DIAGNOSTICS_FILE = "diagnostics.json"
DIAGNOSTIC_BATCH = 256  # sequences: enough for smooth per-step means, cheap at any T
ALIGN_BEFORE = 5  # steps shown before the aligned event


def collect(task: Task, model: nn.Module, batch) -> dict[str, Any]:
    """Gradient norms through time and gate statistics of ``model`` on ``batch``."""
    stack = next((m for m in model.modules() if isinstance(m, CellStack)), None)
    if stack is None:
        raise ValueError("diagnostics need a model with a CellStack")
    cell = stack.layers[0][0]
    states: list[tuple[Tensor, ...]] = []
    gates: dict[str, Tensor] = {}
    reference_step = cell.step_with_gates

    def recording_step(x_t, state):
        y_t, state, step_gates = reference_step(x_t, state)
        states.append(state if isinstance(state, tuple) else (state,))
        return y_t, state, step_gates

    def forward_with_gates(x, state=None, lengths=None):
        y, final, all_gates = CellStack.forward_with_gates(stack, x, state, lengths)
        gates.update(all_gates)
        return y, final

    device = next(model.parameters()).device
    batch = tuple(part.to(device) for part in batch)
    was_training = model.training
    model.eval()
    cell.step_with_gates = recording_step  # instance attributes shadow the methods for this one call
    stack.forward = forward_with_gates
    try:
        with torch.enable_grad():
            loss, _ = task.loss_and_metrics(model, batch)
            flat = [t for state in states for t in state]
            grads = torch.autograd.grad(loss, flat, allow_unused=True)
    finally:
        del cell.step_with_gates, stack.forward
        model.train(was_training)

    batch_size = len(batch[0])
    per_step = len(states[0]) if states else 0
    grad_norm = []
    for t in range(len(states)):
        squares = sum((g.detach().flatten(1).pow(2).sum(1) if g is not None else 0.0)
                      for g in grads[t * per_step:(t + 1) * per_step])
        grad_norm.append(float((batch_size * torch.as_tensor(squares).sqrt()).mean()))

    result: dict[str, Any] = {
        "batch_size": batch_size,
        "seq_len": len(states),
        "loss": float(loss.detach()),
        "state": "recurrent state of layer 0 (forward) after each step",
        "grad_norm": grad_norm,
        "gates": {},
    }
    for name, g in gates.items():
        g = g.detach().float()
        result["gates"][name] = _per_step_mean(g).tolist()
        if name.endswith(".a"):
            result["gates"][name + ".abs_gt_2"] = _per_step_mean((g.abs() > 2).float()).tolist()
            result["gates"][name + ".nonpositive"] = _per_step_mean((g <= 0).float()).tolist()
    events = task.event_positions(batch)
    if events is not None:
        result["aligned_first_marker"] = _aligned(gates, events)
    return result


def write(run_dir: Path, task: Task, model: nn.Module, data_seed: int) -> str:
    """Collect on ``task.diagnostic_batch`` (default: the first test batch) and write
    ``run_dir/diagnostics.json``; returns the file name."""
    data = collect(task, model, task.diagnostic_batch(data_seed, DIAGNOSTIC_BATCH))
    records.write_json_atomic(Path(run_dir) / DIAGNOSTICS_FILE, data)
    return DIAGNOSTICS_FILE


def _per_step_mean(g: Tensor) -> Tensor:
    """``(B, T, ...)`` -> ``(T,)``: the mean over batch and units at each step."""
    return g.transpose(0, 1).flatten(1).mean(1)


def _aligned(gates: dict[str, Tensor], position: Tensor) -> dict[str, list]:
    """Unit-mean of every gate at ``position + k`` for k = -ALIGN_BEFORE .. T-1, averaged over
    the sequences where that step exists (``None`` where none does)."""
    any_gate = next(iter(gates.values()), None)
    if any_gate is None:
        return {}
    seq_len = any_gate.shape[1]
    offsets = torch.arange(-ALIGN_BEFORE, seq_len)
    index = position.cpu()[:, None] + offsets[None, :]  # (B, K)
    valid = (index >= 0) & (index < seq_len)
    count = valid.sum(0)
    result: dict[str, list] = {"offsets": offsets.tolist()}
    for name, g in gates.items():
        unit_mean = g.detach().float().flatten(2).mean(2).cpu()  # (B, T)
        values = unit_mean.gather(1, index.clamp(0, seq_len - 1)) * valid
        mean = values.sum(0) / count.clamp(min=1)
        result[name] = [float(m) if c > 0 else None for m, c in zip(mean, count)]
    return result
