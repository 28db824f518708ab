"""Multi-query associative recall, MQAR (registry name ``mqar``).

Arora, Eyuboglu et al., "Zoology: Measuring and Improving Recall in Efficient
Language Models", ICLR 2024 (arXiv:2312.04927), Section 3; the generator followed
is the authors' ``multiquery_ar`` (HazyResearch/zoology,
``zoology/data/multiquery_ar.py``, with ``num_passes=1``; the same code as
``_mqar`` in ``zoology/data/associative_recall.py`` of the paper's time).

With vocabulary ``V = vocab_size``, ``T = seq_len`` steps and ``D = num_kv_pairs``:

- keys are drawn from ``1 .. V/2-1`` and values from ``V/2 .. V-1``, ``D`` distinct
  of each per sequence (uniformly, in random order); key ``k_i`` is paired with value
  ``v_i``;
- steps ``0 .. 2D-1`` hold ``k_1 v_1 k_2 v_2 ... k_D v_D``;
- the rest (``T - 2D`` steps) is cut into ``(T - 2D)/2`` slots of two steps; every
  key is queried once, ``k_i`` at the first step of slot ``g_i``, where the slots
  ``g_1, g_2, ...`` are drawn one after the other without replacement with
  ``P(g) ∝ (g + 1)^(a - 1)``, ``a = power_a`` (Zoology's power law: small ``a``
  puts queries soon after the pairs; ``a = 1`` is uniform);
- the label of the step holding query ``k_i`` is ``v_i``; every other step has no
  label (Zoology's ``-100``) and counts neither for the loss nor the metrics;
- every other step holds ``0``, or, with ``random_non_queries`` (Zoology's default),
  a token drawn uniformly from ``0 .. V-1``: noise that may look like a key.

The step after a query holds noise (or 0), not its value: the input never shows
the answer. Zoology's asserts are kept: ``T`` even, ``V > T``, ``4D <= T``.

The model embeds the tokens (``nn.Embedding(V, embedding_size)``, Zoology's learnt
word embeddings), runs the cell stack, and predicts one of ``V`` tokens at every
step. Loss: cross-entropy over the labelled steps. Metric ``acc``: accuracy over
the queries (Zoology's ``valid/accuracy``: per sequence, then the mean over
sequences; every sequence has ``D`` queries, so it is the mean over queries).

Memoryless baseline: a query's value is uniform over the ``V - V/2`` value tokens
and independent of the key, so a model that sees only the current token gets
``acc = 1/(V - V/2)`` and ``loss = ln(V - V/2)`` at best. A second reference,
``acc_values_only = 1/D``: a model that remembers which ``D`` values occurred but
not which key each belongs to, and guesses among them (small models often stall
there: measured, GRU and LSTM at T = 64, D = 4 after 1500 steps scored 0.25).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rnnbench.errors import check, is_int
from rnnbench.models import InputBlind, SequenceModel
from rnnbench.registry import register_task
from rnnbench.task import SyntheticTask

IGNORE = -100  # Zoology's label of the steps that are not queries (F.cross_entropy's ignore_index)
CHUNK = 4096  # rows of noise ranked at once when drawing distinct keys (memory: CHUNK x V/2 floats)


def distinct_uniform(count: int, population: int, size: int, generator: torch.Generator) -> Tensor:
    """``(count, size)``: per row, ``size`` distinct integers of ``0 .. population-1``, uniformly at
    random and in random order (numpy's ``choice(replace=False)``): the ranks of the ``size``
    largest of ``population`` independent uniform values."""
    rows = [torch.rand(min(CHUNK, count - start), population, generator=generator).topk(size, dim=1).indices
            for start in range(0, count, CHUNK)]
    return torch.cat(rows)


@register_task("mqar")
class MQARTask(SyntheticTask):
    # Zoology's models are causal language models, and a bidirectional stack changes the task:
    # its backward half reads the queries before the pairs (a second layer then knows, at each
    # pair, when its key will be asked: recall in a known order, a copy, not a lookup). The
    # answer itself is not in the input (see the module docstring).
    causal = True
    metric = "acc"
    metric_mode = "max"

    def __init__(self, *, seq_len: int = 64, num_kv_pairs: int = 4, vocab_size: int = 256, power_a: float = 0.01,
                 random_non_queries: bool = True, embedding_size: int = 64, batch_size: int = 64,
                 val_size: int = 1000, test_size: int = 1000, train_size: Optional[int] = None,
                 solved_threshold: Optional[float] = 0.99, eval_lengths: Optional[Sequence[int]] = None):
        super().__init__(batch_size=batch_size, val_size=val_size, test_size=test_size, train_size=train_size,
                         solved_threshold=solved_threshold, eval_lengths=eval_lengths)
        check(is_int(num_kv_pairs) and num_kv_pairs >= 1, "task.num_kv_pairs", num_kv_pairs, "an integer >= 1")
        check(is_int(seq_len) and seq_len % 2 == 0 and seq_len >= 4 * num_kv_pairs, "task.seq_len", seq_len,
              f"an even integer >= 4 * task.num_kv_pairs ({4 * num_kv_pairs}): the pairs, then a slot of two "
              f"steps per query (Zoology's asserts)")
        check(is_int(vocab_size) and vocab_size > seq_len, "task.vocab_size", vocab_size,
              f"an integer > task.seq_len ({seq_len}) (Zoology's assert)")
        check(isinstance(power_a, (int, float)) and 0 < power_a <= 1, "task.power_a", power_a,
              "a number in (0, 1]: 1 spreads the queries uniformly, Zoology uses 0.01")
        check(isinstance(random_non_queries, bool), "task.random_non_queries", random_non_queries, "true or false")
        check(is_int(embedding_size) and embedding_size >= 1, "task.embedding_size", embedding_size,
              "an integer >= 1")
        check(all(T % 2 == 0 and 4 * num_kv_pairs <= T < vocab_size for T in self.eval_lengths), "task.eval_lengths",
              eval_lengths, f"even lengths from {4 * num_kv_pairs} (4 x num_kv_pairs) to below vocab_size ({vocab_size})")
        self.seq_len = seq_len
        self.num_kv_pairs = num_kv_pairs
        self.vocab_size = vocab_size
        self.power_a = float(power_a)
        self.random_non_queries = random_non_queries
        self.embedding_size = embedding_size
        self.first_value = vocab_size // 2  # keys 1 .. V/2-1, values V/2 .. V-1
        self.slots = (seq_len - 2 * num_kv_pairs) // 2

    # --- reference points -----------------------------------------------------------
    def key_parameters(self) -> dict:
        return {"seq_len": self.seq_len, "num_kv_pairs": self.num_kv_pairs, "vocab_size": self.vocab_size,
                "power_a": self.power_a, "random_non_queries": self.random_non_queries}

    @property
    def sequence_length(self) -> int:
        return self.seq_len

    def baseline(self) -> dict[str, float]:
        values = self.vocab_size - self.first_value
        return {"acc": 1.0 / values, "loss": math.log(values), "acc_values_only": 1.0 / self.num_kv_pairs}

    def memoryless_model(self) -> InputBlind:
        """Uniform over the value tokens at every step, whatever the input."""
        logits = torch.full((self.vocab_size,), -1e4)
        logits[self.first_value:] = 0.0
        return InputBlind(lambda steps: logits.expand(steps, -1))

    def slot_probabilities(self) -> Tensor:
        """Zoology's power law over the query slots: ``P(g) ∝ (g + 1)^(a - 1)``, g = 0 .. slots-1."""
        weights = torch.arange(1, self.slots + 1, dtype=torch.float64) ** (self.power_a - 1)
        return weights / weights.sum()

    # --- data --------------------------------------------------------------------------
    def make_batch(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` sequences: token ids ``(n, T)`` and labels ``(n, T)`` (``-100`` off the queries)."""
        D, V = self.num_kv_pairs, self.vocab_size
        keys = 1 + distinct_uniform(n, self.first_value - 1, D, generator)
        values = self.first_value + distinct_uniform(n, V - self.first_value, D, generator)
        slots = torch.multinomial(self.slot_probabilities().float().expand(n, -1), D, replacement=False,
                                  generator=generator)
        queries = 2 * D + 2 * slots  # the step of each key's query
        inputs = torch.zeros(n, self.seq_len, dtype=torch.long)
        inputs[:, 0:2 * D:2], inputs[:, 1:2 * D:2] = keys, values
        inputs.scatter_(1, queries, keys)
        labels = torch.full((n, self.seq_len), IGNORE, dtype=torch.long).scatter_(1, queries, values)
        if self.random_non_queries:
            noise = torch.randint(0, V, inputs.shape, generator=generator)
            inputs = torch.where(inputs == 0, noise, inputs)
        return inputs, labels

    def event_positions(self, batch) -> Tensor:
        """The first query of each sequence: the gate diagnostics align on it."""
        return (batch[1] != IGNORE).int().argmax(dim=1)

    # --- model, loss, metrics ------------------------------------------------------------
    def build_model(self, make_stack) -> SequenceModel:
        return SequenceModel(make_stack, self.embedding_size, self.vocab_size, readout="all",
                             encoder=nn.Embedding(self.vocab_size, self.embedding_size))

    def loss_and_metrics(self, model, batch) -> tuple[Tensor, dict[str, Tensor]]:
        inputs, labels = batch
        queried = labels != IGNORE
        logits = model(inputs)[queried]  # (queries, V)
        targets = labels[queried]
        loss = F.cross_entropy(logits, targets)
        acc = (logits.argmax(-1) == targets).float().mean()
        return loss, {"loss": loss.detach(), "acc": acc}
