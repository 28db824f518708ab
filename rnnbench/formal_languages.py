"""Length generalisation on formal languages: the protocol shared by the tasks of
``tasks/chomsky_regular.py``, ``chomsky_dcf.py`` and ``chomsky_cs.py``.

Delétang et al., "Neural Networks and the Chomsky Hierarchy", ICLR 2023
(arXiv:2207.02098); followed from the authors' code, google-deepmind/
neural_networks_chomsky_hierarchy (``experiments/training.py``,
``range_evaluation.py``, ``utils.make_model_with_empty_targets``, ``tasks/task.py``):

- **training**: every batch has one length ``n`` drawn uniformly from ``1..N``
  (``N = seq_len``, paper 40; ``UniformCurriculum``), fresh data every step;
- **layout**: the model reads the ``n`` input symbols (one-hot, ``input_size``
  features), then ``output_length(n)`` steps of one extra "answer now" symbol
  (feature ``input_size``), and is scored at those last steps only; nothing is fed
  back (the authors' non-autoregressive setting, ``is_autoregressive=False``);
- **loss**: cross-entropy at every output step, mean over steps and sequences
  (``mean(sum(-target * log_softmax(output), -1))``; padding steps included);
- **accuracy** (``acc``): argmax == target over the scored steps, pooled over a
  batch, ``sum(mask * correct) / sum(mask)`` (``accuracy_fn`` with
  ``accuracy_mask``: every output step, except ``stack_manipulation``, which stops
  at its termination symbol); for one output step this is the per-sequence
  accuracy. ``seq_acc`` (all scored steps right) is reported too;
- **test** (the paper's score): ``test_size`` sequences at every length
  ``N+1 .. M`` (``M = max_test_len``: paper 500; default 100, as the authors'
  ``example.py``), in batches of 64 (the authors' ``range_test_sub_batch_size``;
  ``example.py`` draws 512 per length); ``acc`` averaged over the lengths, each
  weighted equally, is the run's test ``acc`` (the maintainers, issue #9 of the
  authors' repository: "the average accuracies over lengths [41, 500]").
  ``example.py`` averages from ``N+2`` (its list index ``N+1`` is length ``N+2``);
  we follow the paper's ``N+1``;
- **validation** (ours; the paper has none): ``val_size`` sequences at every
  length ``1 .. N``, in distribution, so that the checkpoint is chosen without
  looking at the test lengths;
- **per length**: ``task.eval_lengths=[...]`` tests at each listed length alone
  (:meth:`FormalLanguageTask.length_variant`; recorded by
  :mod:`rnnbench.evaluation`). The test set at a length is the same whether it is
  drawn for the score or alone (one seeded stream per length).

Baseline (``baseline()["acc"]``): the best predictor that never reads the input
string (it may know the length and the output step), averaged over the test
lengths. At each scored step it predicts the most likely target class; its pooled
accuracy is ``sum_j max_c p_j(c) / sum_j sum_c p_j(c)`` with ``p_j(c)`` = P(target
at step j is c and step j is scored), which each task gives exactly
(:meth:`FormalLanguageTask.target_probabilities`). It is the paper's "random
accuracy" (1/2 for binary outputs) except where the target distribution is
skewed (short cycle walks, arithmetic with zeros, sorted strings, stacks).
"""

from __future__ import annotations

from typing import ClassVar, Optional, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import DataLoader

from .errors import check, is_int
from .models import InputBlind, OneHot, SequenceModel
from .task import TEST_STREAM, VAL_STREAM, SyntheticTask, seeded_generator

EVAL_BATCH = 64  # the authors' range_test_sub_batch_size: the unit over which accuracy is pooled


class FormalLanguageTask(SyntheticTask):
    """Base class: a subclass sets ``input_size`` and ``output_size`` and writes
    :meth:`sample`, :meth:`target_probabilities` and, where they differ from the
    defaults, :meth:`output_length` and :meth:`scored`."""

    # A transduction read in full before any output: a bidirectional stack sees no answer
    # it could not compute causally (the paper's Transformer encoder is bidirectional too).
    causal = False
    metric = "acc"
    metric_mode = "max"
    input_size: ClassVar[int] = 2   # symbols of the input alphabet
    output_size: ClassVar[int] = 2  # target classes
    level: ClassVar[str] = ""       # the paper's class of the language: "regular", "dcf" or "cs"

    def __init__(self, *, seq_len: int = 40, max_test_len: int = 100, batch_size: int = 128, val_size: int = 64,
                 test_size: int = 128, solved_threshold: Optional[float] = 0.9,
                 eval_lengths: Optional[Sequence[int]] = None):
        super().__init__(batch_size=batch_size, val_size=val_size, test_size=test_size, train_size=None,
                         solved_threshold=solved_threshold, eval_lengths=eval_lengths)
        check(is_int(seq_len) and seq_len >= 1, "task.seq_len", seq_len,
              "an integer >= 1 (N: training lengths are drawn from 1..N)")
        check(is_int(max_test_len) and max_test_len > seq_len, "task.max_test_len", max_test_len,
              f"an integer > task.seq_len ({seq_len}): the test lengths are seq_len+1 .. max_test_len")
        self.seq_len = seq_len
        self.max_test_len = max_test_len
        self.test_range = (seq_len + 1, max_test_len)  # first and last test length (one length in a variant)

    # --- what a subclass defines ------------------------------------------------------------
    def targets(self, symbols: Tensor) -> Tensor:
        """The answers ``(B, output_length(n))`` to input strings ``symbols`` ``(B, n)``."""
        raise NotImplementedError

    def draw(self, count: int, length: int, generator: torch.Generator) -> Tensor:
        """``count`` random input strings ``(count, input_length(length))``: by default every
        symbol independent and uniform over the alphabet."""
        return uniform_symbols(count, length, self.input_size, generator)

    def sample(self, count: int, length: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``count`` random strings drawn at ``length`` and their answers."""
        symbols = self.draw(count, length, generator)
        return symbols, self.targets(symbols)

    def target_probabilities(self, n: int) -> Tensor:
        """``(output_length(n), output_size)``: P(the target at output step j is class c and step j
        is scored), for a random input of ``n`` symbols (float64)."""
        raise NotImplementedError

    def output_length(self, n: int) -> int:
        return 1

    def scored(self, targets: Tensor) -> Tensor:
        """Which output steps count for the accuracy (the authors' ``accuracy_mask``): all."""
        return torch.ones_like(targets, dtype=torch.bool)

    # --- reference points -------------------------------------------------------------------
    def key_parameters(self) -> dict:
        """``level`` lets a report group the tasks as the paper's tables do."""
        return {"seq_len": self.seq_len, "max_test_len": self.max_test_len, "level": self.level}

    @property
    def sequence_length(self) -> int:
        """The longest training sequence: ``N`` symbols, then ``output_length(N)`` answer steps."""
        return self.seq_len + self.output_length(self.seq_len)

    def baseline(self) -> dict[str, float]:
        """``acc`` of the best input-blind predictor, averaged over the test lengths (module
        docstring), and ``acc_uniform``, a uniform guess among the classes (the paper's chance)."""
        first, last = self.test_range
        accs = [self._blind_accuracy(n) for n in range(first, last + 1)]
        return {"acc": sum(accs) / len(accs), "acc_uniform": 1.0 / self.output_size}

    def _blind_accuracy(self, length: int) -> float:
        p = self.target_probabilities(self.input_length(length))
        return float(p.max(dim=1).values.sum() / p.sum())

    def input_length(self, length: int) -> int:
        """Input symbols of a string drawn at ``length`` (``sample`` may shorten it): ``length``."""
        return length

    def memoryless_model(self) -> InputBlind:
        """The input-blind predictor of :meth:`baseline`: log-probabilities of the targets at
        every output step, from the number of steps alone."""
        return InputBlind(self._blind_logits)

    def _blind_logits(self, steps: int) -> Tensor:
        n = next(n for n in range(steps) if n + self.output_length(n) == steps)
        p = self.target_probabilities(n)
        logits = torch.zeros(steps, self.output_size)
        logits[n:] = p.clamp_min(1e-30).log().float()
        return logits

    # --- data -------------------------------------------------------------------------------
    def batch_at(self, count: int, length: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Model inputs ``(count, n + output_length(n))`` (the symbols, then the answer-now
        symbol ``input_size``) and targets ``(count, output_length(n))``."""
        symbols, targets = self.sample(count, length, generator)
        answer_now = torch.full((count, targets.shape[1]), self.input_size, dtype=torch.long)
        return torch.cat([symbols, answer_now], dim=1), targets

    def make_batch(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """A training batch: one length drawn uniformly from ``1..N`` for the whole batch."""
        length = int(torch.randint(1, self.seq_len + 1, (), generator=generator))
        return self.batch_at(n, length, generator)

    def _length_loader(self, lengths: range, per_length: int, data_seed: int, stream: int) -> DataLoader:
        """``per_length`` sequences at every length, in batches of at most ``EVAL_BATCH`` (one
        length per batch); each length has its own seeded stream."""
        batches = []
        for length in lengths:
            inputs, targets = self.batch_at(per_length, length, seeded_generator(data_seed, stream, length))
            batches += list(zip(inputs.split(EVAL_BATCH), targets.split(EVAL_BATCH)))
        return DataLoader(batches, batch_size=None)

    def val_dataloader(self, data_seed: int):
        return self._length_loader(range(1, self.seq_len + 1), self.val_size, data_seed, VAL_STREAM)

    def test_dataloader(self, data_seed: int):
        first, last = self.test_range
        return self._length_loader(range(first, last + 1), self.test_size, data_seed, TEST_STREAM)

    def length_variant(self, seq_len: int, options: dict) -> "FormalLanguageTask":
        """The same task (same training lengths) whose test set has exactly ``seq_len`` symbols."""
        variant = type(self)(**options)
        variant.test_range = (seq_len, seq_len)
        return variant

    def event_positions(self, batch) -> Tensor:
        """The first answer step (the same for every sequence of a batch): the gate diagnostics
        align on the switch from reading to answering."""
        inputs, targets = batch
        return torch.full((inputs.shape[0],), inputs.shape[1] - targets.shape[1], dtype=torch.long)

    # --- model, loss, metrics ---------------------------------------------------------------
    def build_model(self, make_stack) -> SequenceModel:
        n_inputs = self.input_size + 1  # the symbols and the answer-now symbol
        return SequenceModel(make_stack, n_inputs, self.output_size, readout="all", encoder=OneHot(n_inputs))

    def loss_and_metrics(self, model, batch) -> tuple[Tensor, dict[str, Tensor]]:
        inputs, targets = batch
        logits = model(inputs)[:, -targets.shape[1]:]  # the answer steps (B, out, C)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        correct = logits.argmax(-1) == targets
        mask = self.scored(targets)
        metrics = {
            "loss": loss.detach(),
            "acc": (correct & mask).sum() / mask.sum(),
            "seq_acc": (correct | ~mask).all(dim=1).float().mean(),
        }
        return loss, metrics


def uniform_symbols(count: int, length: int, vocab_size: int, generator: torch.Generator) -> Tensor:
    """``(count, length)`` symbols drawn independently and uniformly from ``0..vocab_size-1``."""
    return torch.randint(0, vocab_size, (count, length), generator=generator)


class StringTask(FormalLanguageTask):
    """A task over strings of ``vocab_size`` symbols whose targets are symbols too (reverse,
    duplicate, sort): ``vocab_size`` null means the paper's alphabet, ``paper_vocab_size``."""

    paper_vocab_size: ClassVar[int] = 2

    def __init__(self, *, vocab_size: Optional[int] = None, seq_len: int = 40, max_test_len: int = 100,
                 batch_size: int = 128, val_size: int = 64, test_size: int = 128,
                 solved_threshold: Optional[float] = 0.9, eval_lengths: Optional[Sequence[int]] = None):
        super().__init__(seq_len=seq_len, max_test_len=max_test_len, batch_size=batch_size, val_size=val_size,
                         test_size=test_size, solved_threshold=solved_threshold, eval_lengths=eval_lengths)
        vocab_size = self.paper_vocab_size if vocab_size is None else vocab_size
        check(is_int(vocab_size) and vocab_size >= 2, "task.vocab_size", vocab_size,
              f"an integer >= 2, or null for the paper's {self.paper_vocab_size}")
        self.vocab_size = self.input_size = self.output_size = vocab_size

    def key_parameters(self) -> dict:
        return {**super().key_parameters(), "vocab_size": self.vocab_size}

    def target_probabilities(self, n: int) -> Tensor:
        """Every output symbol is uniform over the alphabet, whatever the step."""
        return torch.full((self.output_length(n), self.vocab_size), 1.0 / self.vocab_size, dtype=torch.float64)
