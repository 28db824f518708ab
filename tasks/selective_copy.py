"""Selective copying (registry name ``selective_copy``).

Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", 2023
(arXiv:2312.00752), Section 3.1 (Figure 2), 4.1.1 and Appendix E.1: the copy task
with the data tokens at random positions among noise, so that a model must pick
them out by content (a time-invariant filter cannot). The generator followed is the
authors' group's ``torch_copying_data(L, M, A, variable=True)`` in state-spaces/s4
(``src/dataloaders/datasets/copying.py``: "randomly distribute memorization tokens
throughout sequence instead of frontloading them").

Token ids, with ``A = n_tokens`` the whole alphabet: ``0`` noise, ``1..A-2`` data,
``A-1`` marker. With ``T = seq_len`` the whole sequence (the paper: "sequences of
length 4096"), ``M = copy_len`` and ``L = T - 2M`` noise tokens:

    steps 0 .. L+M-1   M data tokens, uniform over 1..A-2, at M distinct positions
                       drawn uniformly (kept in their order); noise (0) elsewhere
    steps L+M .. T-1   M markers (A-1)
    targets            the M data tokens in order, one at each marker step

The model reads one-hot ids and predicts one of ``A`` classes (as s4's
``d_output = n_tokens``); the loss is the cross-entropy over the ``M`` answer steps
(s4: ``l_output = l_memorize``). Metrics: ``acc``, per answer token (the paper's
accuracy; primary), and ``seq_acc``, whole sequences with all ``M`` right.

Memoryless baseline: at the answer steps the input is always the marker, so a
model without memory can only guess; its best guess is uniform over the ``A-2``
data tokens: ``acc = 1/(A-2)``, ``seq_acc = (A-2)^-M``, ``loss = ln(A-2)``.
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

NOISE = 0


@register_task("selective_copy")
class SelectiveCopyTask(SyntheticTask):
    # Not causal in the sense of Task.causal: every target is asked for after the whole
    # input has been read, as in the copy task; a bidirectional stack sees no answer early.
    causal = False
    metric = "acc"
    metric_mode = "max"

    def __init__(self, *, seq_len: int = 128, copy_len: int = 4, n_tokens: int = 10, batch_size: int = 64,
                 val_size: int = 1000, test_size: int = 1000, train_size: Optional[int] = None,
                 solved_threshold: Optional[float] = 0.99, eval_lengths: Optional[Sequence[int]] = None):
        super().__init__(batch_size=batch_size, val_size=val_size, test_size=test_size, train_size=train_size,
                         solved_threshold=solved_threshold, eval_lengths=eval_lengths)
        check(is_int(copy_len) and copy_len >= 1, "task.copy_len", copy_len, "an integer >= 1")
        # Two data tokens at least: with one, a memoryless model copies perfectly.
        check(is_int(n_tokens) and n_tokens >= 4, "task.n_tokens", n_tokens,
              "an integer >= 4 (noise, marker and at least two data tokens)")
        check(is_int(seq_len) and seq_len >= 2 * copy_len, "task.seq_len", seq_len,
              f"an integer >= 2 * task.copy_len ({2 * copy_len}): the data tokens and their markers")
        check(all(T >= 2 * copy_len for T in self.eval_lengths), "task.eval_lengths", eval_lengths,
              f"lengths >= 2 * task.copy_len ({2 * copy_len})")
        self.seq_len = seq_len
        self.copy_len = copy_len
        self.n_tokens = n_tokens
        self.marker = n_tokens - 1
        self.span = seq_len - copy_len  # L + M: the steps that hold the data tokens among noise

    # --- reference points -----------------------------------------------------------
    def key_parameters(self) -> dict:
        return {"seq_len": self.seq_len, "copy_len": self.copy_len, "n_tokens": self.n_tokens}

    @property
    def sequence_length(self) -> int:
        return self.seq_len

    def baseline(self) -> dict[str, float]:
        data = self.n_tokens - 2
        return {"acc": 1.0 / data, "seq_acc": data ** -self.copy_len, "loss": math.log(data)}

    def memoryless_model(self) -> InputBlind:
        """Uniform over the data tokens at every step, whatever the input."""
        logits = torch.full((self.seq_len, self.n_tokens), -1e4)
        logits[:, 1:self.marker] = 0.0
        return InputBlind(lambda steps: logits)

    # --- data --------------------------------------------------------------------------
    def make_batch(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` sequences: token ids ``(n, T)`` and targets ``(n, M)``."""
        M = self.copy_len
        tokens = torch.randint(1, self.marker, (n, M), generator=generator)
        # M distinct positions, uniform over the subsets of the span: the M largest of
        # independent uniform noise values, then sorted.
        positions = torch.rand(n, self.span, generator=generator).topk(M, dim=1).indices.sort(dim=1).values
        inputs = torch.full((n, self.seq_len), NOISE, dtype=torch.long)
        inputs.scatter_(1, positions, tokens)
        inputs[:, self.span:] = self.marker
        return inputs, tokens

    def event_positions(self, batch) -> Tensor:
        """The first data token of each sequence: the gate diagnostics align on it."""
        inputs = batch[0]
        return (inputs[:, : self.span] != NOISE).int().argmax(dim=1)

    # --- model, loss, metrics ------------------------------------------------------------
    def build_model(self, make_stack) -> SequenceModel:
        return SequenceModel(make_stack, self.n_tokens, self.n_tokens, readout="all", encoder=OneHot(self.n_tokens))

    def loss_and_metrics(self, model, batch) -> tuple[Tensor, dict[str, Tensor]]:
        inputs, targets = batch
        logits = model(inputs)[:, -self.copy_len:]  # the answer steps (B, M, A)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        correct = logits.argmax(-1) == targets
        metrics = {"loss": loss.detach(), "acc": correct.float().mean(), "seq_acc": correct.all(dim=1).float().mean()}
        return loss, metrics
