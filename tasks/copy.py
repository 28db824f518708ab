"""The copy memory task (registry name ``copy``).

Form of Arjovsky, Shah & Bengio, "Unitary Evolution Recurrent Neural Networks",
ICML 2016 (arXiv:1511.06464), Section 4.1, with ``K = copy_len`` (paper: 10) and
``N = n_symbols`` (paper: 8). Token ids: ``0`` blank, ``1..N`` symbols, ``N+1``
delimiter. With ``T = seq_len``, a sequence has ``L = T + 2K`` steps:

    position   0 .. K-1     K .. T+K-2   T+K-1       T+K .. T+2K-1
    input      s_1 .. s_K   blank (T-1)  delimiter   blank (K)
    target     blank (T+K) ............................  s_1 .. s_K

where ``s_i`` are drawn independently and uniformly from ``1..N``. The model sees
the inputs one-hot (``N+2`` features per step, done by the model's encoder; the
batches hold token ids) and predicts one of ``N+1`` classes (blank or a symbol;
the delimiter is never a target) at every step; ``n_classes`` may add classes that
are never targets (the TCN repository's scripts predict 10 digits).

Loss: cross-entropy averaged over all ``L`` steps (as in the paper). Metrics:
``recall_acc``, the accuracy on the ``K`` recalled symbols only (the primary
metric by default: a memoryless model gets every other step right); ``acc`` over
all steps. ``metric`` picks the headline metric (the TCN paper reports ``loss``).

Memoryless baseline (paper): predict blank for the first ``T+K`` steps and a
uniform guess over the ``N`` symbols for the last ``K``; its cross-entropy is
``K·ln(N) / (T + 2K)`` (``10·ln 8 / (T + 20)`` with the paper's values) and its
recall accuracy ``1/N``.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from rnnbench.errors import check, is_int
from rnnbench.models import InputBlind, OneHot, SequenceModel
from rnnbench.registry import register_task
from rnnbench.task import SyntheticTask

BLANK = 0
METRICS = {"recall_acc": "max", "acc": "max", "loss": "min"}  # a headline metric and its better direction


@register_task("copy")
class CopyTask(SyntheticTask):
    # Not causal in the sense of Task.causal: every target is read only after the
    # inputs that determine it, so a bidirectional stack gains nothing it could not
    # also get causally. Bidirectional models are legitimate baselines here, as in
    # many papers; refusing them is reserved for tasks like language modelling.
    causal = False
    metric = "recall_acc"
    metric_mode = "max"

    def __init__(
        self,
        *,
        seq_len: int = 100,
        copy_len: int = 10,
        n_symbols: int = 8,
        n_classes: Optional[int] = None,
        metric: str = "recall_acc",
        batch_size: int = 64,
        val_size: int = 1000,
        test_size: int = 1000,
        train_size: Optional[int] = None,
        train_order: str = "shuffled",
        solved_threshold: Optional[float] = 0.99,
        eval_lengths: Optional[Sequence[int]] = None,
    ):
        super().__init__(
            batch_size=batch_size, val_size=val_size, test_size=test_size,
            train_size=train_size, train_order=train_order, solved_threshold=solved_threshold,
            eval_lengths=eval_lengths,
        )
        check(is_int(seq_len) and seq_len >= 1, "task.seq_len", seq_len, "an integer >= 1")
        check(is_int(copy_len) and copy_len >= 1, "task.copy_len", copy_len, "an integer >= 1")
        # One symbol would make the task trivial: a memoryless model recalls it.
        check(is_int(n_symbols) and n_symbols >= 2, "task.n_symbols", n_symbols, "an integer >= 2")
        check(n_classes is None or (is_int(n_classes) and n_classes >= n_symbols + 1), "task.n_classes", n_classes,
              f"null (blank and the {n_symbols} symbols: {n_symbols + 1}) or an integer >= {n_symbols + 1}")
        check(metric in METRICS, "task.metric", metric, f"one of {', '.join(METRICS)}")
        self.seq_len = seq_len
        self.copy_len = copy_len
        self.n_symbols = n_symbols
        self.n_classes = n_symbols + 1 if n_classes is None else n_classes
        self.metric = metric
        self.metric_mode = METRICS[metric]
        self.delimiter = n_symbols + 1
        self.total_len = seq_len + 2 * copy_len  # L = T + 2K

    # --- reference points -----------------------------------------------------------
    def key_parameters(self) -> dict:
        return {"seq_len": self.seq_len, "copy_len": self.copy_len, "n_symbols": self.n_symbols}

    @property
    def sequence_length(self) -> int:
        return self.total_len  # T + 2K steps: K symbols, the gap, the delimiter, K outputs

    def baseline(self) -> dict[str, float]:
        T, K, N = self.seq_len, self.copy_len, self.n_symbols
        return {
            "loss": K * math.log(N) / (T + 2 * K),
            "recall_acc": 1.0 / N,
            # Blanks right on the first T+K steps, a 1/N guess on the last K.
            "acc": (T + K + K / N) / (T + 2 * K),
        }

    def memoryless_model(self) -> InputBlind:
        """The paper's memoryless strategy, which reads no input (the step alone decides):
        blank for the first ``T+K`` steps, a uniform guess over the ``N`` symbols for the last ``K``."""
        logits = torch.full((self.total_len, self.n_symbols + 1), -1e4)
        logits[: self.seq_len + self.copy_len, BLANK] = 0.0
        logits[self.seq_len + self.copy_len:, 1:] = 0.0
        return InputBlind(lambda steps: logits)

    # --- data --------------------------------------------------------------------------
    def make_batch(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` sequences: token ids ``(n, L)`` for inputs and for targets."""
        T, K = self.seq_len, self.copy_len
        symbols = torch.randint(1, self.n_symbols + 1, (n, K), generator=generator)
        inputs = torch.full((n, self.total_len), BLANK, dtype=torch.long)
        inputs[:, :K] = symbols
        inputs[:, T + K - 1] = self.delimiter
        targets = torch.full((n, self.total_len), BLANK, dtype=torch.long)
        targets[:, T + K:] = symbols
        return inputs, targets

    # --- model, loss, metrics ------------------------------------------------------------
    def build_model(self, make_stack) -> SequenceModel:
        n_inputs = self.n_symbols + 2   # blank, N symbols, delimiter
        return SequenceModel(make_stack, n_inputs, self.n_classes, readout="all", encoder=OneHot(n_inputs))

    def loss_and_metrics(self, model, batch) -> tuple[Tensor, dict[str, Tensor]]:
        inputs, targets = batch
        logits = model(inputs)  # (B, L, N+1)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        correct = (logits.argmax(-1) == targets).float()
        metrics = {
            "loss": loss.detach(),
            "recall_acc": correct[:, -self.copy_len:].mean(),
            "acc": correct.mean(),
        }
        return loss, metrics
