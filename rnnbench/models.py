"""Generic model topology around a cell stack: ``encoder -> stack -> linear head``.

Tasks build their model with :class:`SequenceModel`; the cell (and its depth and
direction) is whatever the stack factory makes, so every cell meets exactly the
same model around it.

- ``encoder`` (optional) turns the raw inputs of a batch into per-step features of
  size ``input_size`` (e.g. :class:`OneHot` for token ids); without it the inputs
  are fed to the stack as they are.
- ``readout="all"``: the head is applied at every step, output ``(B, T, C)``
  (sequence labelling, e.g. the copy task).
- ``readout="last"``: the head is applied to each direction's output after it has
  read the whole sequence (``CellStack.final_output``: the forward direction at the
  last real step, the backward direction at position 0), output ``(B, C)``
  (sequence regression/classification, e.g. the adding problem).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

READOUTS = ("all", "last")


class OneHot(nn.Module):
    """Token ids ``(B, T)`` -> one-hot vectors ``(B, T, num_classes)``.

    The identity matrix is a (non-persistent) buffer, so the one-hot vectors
    follow the model's device and dtype (``model.to(...)``, ``model.double()``).
    """

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.register_buffer("eye", torch.eye(num_classes), persistent=False)

    def forward(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.eye)


class SequenceModel(nn.Module):
    """``encoder (optional) -> stack -> linear head``.

    Args:
      make_stack:  the stack factory, ``input_size -> stack`` with
                   ``stack(x, state=None, lengths=None) -> (y, state)``, batch-first,
                   and an ``output_size`` attribute.
      input_size:  features per step entering the stack (after the encoder).
      output_size: outputs of the head (classes, or 1 for a scalar regression).
      readout:     ``"all"`` (every step) or ``"last"`` (last real step only).
      encoder:     optional module applied to the inputs before the stack.
    """

    def __init__(
        self,
        make_stack: Callable[[int], nn.Module],
        input_size: int,
        output_size: int,
        *,
        readout: str = "all",
        encoder: Optional[nn.Module] = None,
    ):
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"readout={readout!r} is invalid: expected one of {READOUTS}.")
        self.readout = readout
        self.encoder = encoder
        self.stack = make_stack(input_size)
        self.head = nn.Linear(self.stack.output_size, output_size)

    def forward(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        if self.encoder is not None:
            x = self.encoder(x)
        y, _ = self.stack(x, lengths=lengths)  # (B, T, stack.output_size)
        if self.readout == "last":
            y = self.stack.final_output(y, lengths)  # each direction after the whole sequence
        return self.head(y)


class InputBlind(nn.Module):
    """A predictor that never reads its input's content: ``outputs(T)`` gives its output
    for a sequence of ``T`` steps (one per step, or one for the sequence), the same for
    every sequence of the batch. The tasks' memoryless baselines
    (:meth:`rnnbench.task.Task.memoryless_model`) are such predictors.

    It has one parameter of size 0, so that code asking a model for its device
    (``next(model.parameters())``) works with it as with a trained model.
    """

    def __init__(self, outputs: Callable[[int], Tensor]):
        super().__init__()
        self.outputs = outputs
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    def forward(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        out = self.outputs(x.shape[1]).to(self.anchor.device)
        return out.expand(x.shape[0], *out.shape)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (shared parameters counted once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
