"""The adding problem (registry name ``adding``).

Introduced by Hochreiter & Schmidhuber, "Long Short-Term Memory", Neural
Computation 1997 (Experiment 4). The original draws values from [-1, 1] and
rescales the target; this module uses the common modern form (as in Le, Jaitly &
Hinton 2015; Arjovsky, Shah & Bengio 2016, arXiv:1511.06464; Li et al. 2018,
IndRNN, arXiv:1803.04831; Bai, Kolter & Koltun 2018, TCN, locuslab/TCN):

    input  x: (B, T, 2)
           x[:, t, 0] = v_t ~ U[0, 1)               independent values
           x[:, t, 1] = 1 at two positions a != b, 0 elsewhere
    target y = v_a + v_b                               shape (B, 1)

Marker placement (``placement``):
- ``halves``:   ``a`` uniform in ``[0, T//2)``, ``b`` uniform in ``[T//2, T)``
  (uRNN and IndRNN papers): the first marked value must be kept for at least
  ``T - T//2`` steps;
- ``anywhere``: ``{a, b}`` uniform over pairs of distinct positions in ``[0, T)``
  (the TCN repository): the two markers may fall in the same half.

The model reads the stack output at the last step (``readout="last"``) and the
loss is the mean squared error of that one prediction.

Baseline: predicting the mean ``E[y] = 1`` regardless of the input gives an MSE of
``Var(v_a + v_b) = 2 · 1/12 = 1/6 ≈ 0.167``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from rnnbench.errors import check, is_int
from rnnbench.models import InputBlind, SequenceModel
from rnnbench.registry import register_task
from rnnbench.task import SyntheticTask

PLACEMENTS = ("halves", "anywhere")


@register_task("adding")
class AddingTask(SyntheticTask):
    # The prediction is read after the whole sequence: a bidirectional stack sees
    # nothing the task hides from it, so it is a legitimate baseline (not causal).
    causal = False
    metric = "mse"
    metric_mode = "min"

    def __init__(
        self,
        *,
        seq_len: int = 100,
        placement: str = "halves",
        batch_size: int = 64,
        val_size: int = 1000,
        test_size: int = 1000,
        train_size: Optional[int] = None,
        train_order: str = "shuffled",
        solved_threshold: Optional[float] = 0.01,
        eval_lengths: Optional[Sequence[int]] = None,
    ):
        super().__init__(
            batch_size=batch_size, val_size=val_size, test_size=test_size,
            train_size=train_size, train_order=train_order, solved_threshold=solved_threshold,
            eval_lengths=eval_lengths,
        )
        # Two distinct marker positions (one per half for "halves") need T >= 2.
        check(is_int(seq_len) and seq_len >= 2, "task.seq_len", seq_len, "an integer >= 2")
        check(placement in PLACEMENTS, "task.placement", placement, f"one of {', '.join(PLACEMENTS)}")
        self.seq_len = seq_len
        self.placement = placement

    # --- reference points -----------------------------------------------------------
    def key_parameters(self) -> dict:
        return {"seq_len": self.seq_len, "placement": self.placement}

    def baseline(self) -> dict[str, float]:
        # Predict the mean, 1: MSE = Var(U1 + U2) = 1/12 + 1/12.
        return {"mse": 1.0 / 6.0, "loss": 1.0 / 6.0}

    def memoryless_model(self) -> InputBlind:
        """Predicts the mean, 1, whatever the input."""
        return InputBlind(lambda steps: torch.ones(1))

    # --- data --------------------------------------------------------------------------
    def make_batch(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` sequences: inputs ``(n, T, 2)`` and targets ``(n, 1)``."""
        T = self.seq_len
        values = torch.rand(n, T, generator=generator)
        if self.placement == "halves":
            first = torch.randint(0, T // 2, (n,), generator=generator)
            second = torch.randint(T // 2, T, (n,), generator=generator)
        else:
            # a uniform over [0, T), then b = a + d (mod T) with d uniform over
            # [1, T): each ordered pair of distinct positions has probability
            # 1 / (T (T-1)), so the unordered pair is uniform too.
            first = torch.randint(0, T, (n,), generator=generator)
            second = (first + torch.randint(1, T, (n,), generator=generator)) % T
        positions = torch.stack([first, second], dim=1)  # (n, 2)
        markers = torch.zeros(n, T).scatter_(1, positions, 1.0)
        inputs = torch.stack([values, markers], dim=-1)  # (n, T, 2)
        targets = values.gather(1, positions).sum(dim=1, keepdim=True)  # (n, 1)
        return inputs, targets

    @staticmethod
    def marker_positions(inputs: Tensor) -> Tensor:
        """The two marked positions ``(B, 2)`` of a batch of inputs, in time order."""
        return inputs[..., 1].nonzero()[:, 1].view(-1, 2)

    def event_positions(self, batch) -> Tensor:
        """The first marker of each sequence: the diagnostics align the gates on it."""
        return self.marker_positions(batch[0])[:, 0]

    @property
    def sequence_length(self) -> int:
        return self.seq_len

    # --- model, loss, metrics ------------------------------------------------------------
    def build_model(self, make_stack) -> SequenceModel:
        return SequenceModel(make_stack, 2, 1, readout="last")

    def loss_and_metrics(self, model, batch) -> tuple[Tensor, dict[str, Tensor]]:
        inputs, targets = batch
        prediction = model(inputs)  # (B, 1)
        loss = F.mse_loss(prediction, targets)
        return loss, {"loss": loss.detach(), "mse": loss.detach()}
