"""The Task protocol: data, model topology around the cell, loss, metrics, and
reference points (baseline and ``solved`` criterion).

A task is configured from ``conf/task/<name>.yaml``; every key of that file except
``name`` is a keyword argument of the task's constructor, which validates it and
raises :class:`~rnnbench.errors.ConfigError` before any training starts.

Synthetic tasks subclass :class:`SyntheticTask` and only write ``make_batch``:
training data are fresh every step (batch ``k`` of rank ``r`` is a pure function
of ``(data_seed, r, k)``, so a resumed run sees the same data), while validation
and test sets are fixed by the data seed. ``train_size`` switches to a fixed
training set of that many sequences, reshuffled every epoch (as in the TCN paper).
``eval_lengths`` lists further sequence lengths at which a trained model is also
tested (length generalisation: train at T, test at 2T, 4T ..., as in Delétang et
al. 2023, "Neural Networks and the Chomsky Hierarchy", ICLR); a task that takes it
also takes ``seq_len``, and :func:`rnnbench.evaluation.length_generalisation`
rebuilds it at each length.
"""

from __future__ import annotations

import hashlib
from typing import Callable, ClassVar, Iterator, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from .errors import check, is_int


StackFactory = Callable[..., nn.Module]  # (input_size, bidirectional=None) -> CellStack; None: from the cell config


class Task:
    """Base class of every task.

    Class attributes a task sets:
      ``causal``       True if outputs at step t may only depend on inputs <= t
                       (bidirectional cells are then refused);
      ``metric``       name of the primary validation metric (e.g. ``"mse"``);
      ``metric_mode``  ``"min"`` or ``"max"``: which direction is better.
    """

    causal: ClassVar[bool] = False
    metric: ClassVar[str] = "loss"
    metric_mode: ClassVar[str] = "min"
    name: ClassVar[str] = ""  # set by @register_task
    eval_lengths: tuple[int, ...] = ()  # further lengths to test at (SyntheticTask); none by default

    def __init__(self, *, batch_size: int = 64, solved_threshold: Optional[float] = None):
        check(is_int(batch_size) and batch_size >= 1, "task.batch_size", batch_size, "an integer >= 1")
        check(
            solved_threshold is None or isinstance(solved_threshold, (int, float)),
            "task.solved_threshold", solved_threshold, "a number or null",
        )
        self.batch_size = batch_size
        self.solved_threshold = solved_threshold

    # --- what the run record says about the task -------------------------------
    def key_parameters(self) -> dict:
        """Key task parameters for the run record (e.g. ``{"seq_len": 100}``); the length a
        memory-horizon search varies is ``seq_len`` by convention."""
        return {}

    @property
    def sequence_length(self) -> Optional[int]:
        """Time steps the model reads per sequence (the copy task: ``T + 2K``), for cells whose
        options depend on it (e.g. IndRNN's bound ``|u| <= 2^(1/T)``); None when it varies."""
        return None

    def parameter_groups(self, model: nn.Module) -> dict[str, nn.Module]:
        """Named parts of ``model`` whose parameters the run record counts separately
        (e.g. a translation model's encoder, decoder and attention). Default: none."""
        return {}

    def baseline(self) -> dict[str, float]:
        """Metric values of a memoryless / trivial predictor, for reference."""
        return {}

    def memoryless_model(self) -> Optional[nn.Module]:
        """The predictor :meth:`baseline` describes, as a module usable in place of
        :meth:`build_model`'s output (no parameters to train): ``loss_and_metrics`` on it
        scores ``baseline()`` up to sampling noise, which the task contract tests check
        by simulation. None: the task defines none."""
        return None

    def is_solved(self, metrics: dict[str, float]) -> bool:
        """True if ``metrics`` (validation or test) meet the ``solved`` criterion."""
        if self.solved_threshold is None or self.metric not in metrics:
            return False
        value = float(metrics[self.metric])
        return value >= self.solved_threshold if self.metric_mode == "max" else value <= self.solved_threshold

    def length_variant(self, seq_len: int, options: dict) -> "Task":
        """This task to be tested at length ``seq_len`` (length generalisation, see
        :func:`rnnbench.evaluation.length_generalisation`); ``options`` are its constructor
        keyword arguments from the config. Default: the task rebuilt with ``seq_len``
        replaced. A task whose ``seq_len`` is not the test length (the formal languages:
        the longest training length) returns one whose test set has exactly this length."""
        return type(self)(**{**options, "seq_len": seq_len})

    # --- model, loss, metrics -------------------------------------------------
    def build_model(self, make_stack: StackFactory) -> nn.Module:
        raise NotImplementedError

    def loss_and_metrics(self, model: nn.Module, batch) -> tuple[Tensor, dict[str, Tensor]]:
        """Return the training loss and a dict of named metric tensors (scalars)."""
        raise NotImplementedError

    def count_tokens(self, batch) -> int:
        """Time steps processed in ``batch`` (for the throughput figure)."""
        raise NotImplementedError

    def metric_weight(self, batch) -> int:
        """Weight of ``batch`` in the epoch means of validation/test metrics: the
        number of sequences by default; a language model weighs by target tokens, so
        that its epoch loss is the mean over every token of the stream."""
        return len(batch[0])

    # --- diagnostics -------------------------------------------------------------------
    def diagnostic_batch(self, data_seed: int, size: int):
        """One fixed batch for the gradient and gate diagnostics: the first test batch, each
        tensor cut to its first ``size`` sequences (dim 0); other parts are kept as they are."""
        batch = next(iter(self.test_dataloader(data_seed)))
        return tuple(part[:size] if isinstance(part, Tensor) and part.dim() > 0 else part for part in batch)

    def event_positions(self, batch) -> Optional[Tensor]:
        """``(B,)`` positions of an event to align the gate diagnostics on (e.g. the adding
        problem's first marker); None when the task has none."""
        return None

    # --- corpus-level evaluation --------------------------------------------------
    def eval_epoch_start(self, stage: str) -> None:
        """Called before a validation (``stage="val"``) or test (``"test"``) pass, e.g.
        to reset a carried state or clear collected hypotheses. Default: nothing."""

    def eval_epoch_end(self, stage: str, means: dict[str, float]) -> dict[str, float]:
        """Metrics that are not means over batches, from ``means`` (the weighted epoch
        means of what :meth:`loss_and_metrics` returned) or from what the task collected
        during the pass: e.g. perplexity ``exp(mean loss)``, or corpus BLEU. Logged as
        ``{stage}/{name}`` like the others. Default: none."""
        return {}

    def write_artifacts(self, model: nn.Module, run_dir, data_seed: int) -> dict:
        """After testing, write task-specific files into ``run_dir`` (e.g. attention
        maps, generated samples) and return what the run record should say of them
        (the record's ``artifacts``). Only rank 0 calls it. Default: nothing."""
        return {}

    def generate(self, model: nn.Module, prompt: str, length: int, temperature: float,
                 generator: torch.Generator) -> str:
        """Text sampled from a trained model (``rnnbench generate RUN_DIR``); only tasks that
        model text implement it."""
        from .errors import ConfigError

        raise ConfigError(f"task {self.name!r} does not generate text; `rnnbench generate` needs a run of a task "
                          f"that models text (task=lm).")

    def load_artifacts(self, run_dir) -> None:
        """Before a finished run's model is rebuilt (:func:`rnnbench.experiment.load_run`),
        restore what :meth:`write_artifacts` saved that the model depends on (e.g. a
        vocabulary). Default: nothing."""

    # --- data ------------------------------------------------------------------
    def train_dataloader(self, data_seed: int, rank: int = 0, world_size: int = 1, start_step: int = 0,
                         num_batches: Optional[int] = None):
        """Training batches for ``rank`` of ``world_size``, from step ``start_step`` on;
        ``num_batches`` is a hint (the step budget) for streams without a natural length."""
        raise NotImplementedError

    def val_dataloader(self, data_seed: int):
        raise NotImplementedError

    def test_dataloader(self, data_seed: int):
        raise NotImplementedError


def seeded_generator(*seeds: int) -> torch.Generator:
    """A CPU generator seeded by hashing a tuple of integers (stable across runs and
    machines; distinct tuples give unrelated streams)."""
    digest = hashlib.blake2b(repr(tuple(int(s) for s in seeds)).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


# How a fixed training set (train_size) is read each epoch: reshuffled into full batches, or in
# its order with the last partial batch (as the TCN repository's scripts do).
TRAIN_ORDERS = ("shuffled", "in_order")

# Distinct streams so that train, validation and test data never coincide.
TRAIN_STREAM, VAL_STREAM, TEST_STREAM, FIXED_TRAIN_STREAM = 1, 2, 3, 4


class FreshBatches(IterableDataset):
    """A stream of fresh batches; batch ``k`` depends only on (seed, rank, k).

    ``num_batches`` (e.g. the step budget) gives the stream a length, so progress
    bars can show a total; None makes it endless.
    """

    def __init__(self, make_batch, batch_size: int, data_seed: int, rank: int, start_step: int = 0,
                 num_batches: Optional[int] = None):
        self.make_batch = make_batch
        self.batch_size = batch_size
        self.data_seed = data_seed
        self.rank = rank
        self.start_step = start_step
        self.num_batches = num_batches

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("an endless FreshBatches stream has no length")
        return self.num_batches

    def __iter__(self) -> Iterator:
        step = self.start_step
        while self.num_batches is None or step < self.start_step + self.num_batches:
            yield self.make_batch(self.batch_size, seeded_generator(self.data_seed, TRAIN_STREAM, self.rank, step))
            step += 1


class SyntheticTask(Task):
    """A task whose data come from ``make_batch(n, generator)``.

    ``val_size`` / ``test_size`` sequences are generated once from the data seed;
    ``train_size`` null means fresh training data every step; a fixed set is read
    ``train_order`` ``shuffled`` (full batches, reshuffled every epoch) or ``in_order``.
    """

    def __init__(
        self,
        *,
        batch_size: int = 64,
        val_size: int = 1000,
        test_size: int = 1000,
        train_size: Optional[int] = None,
        train_order: str = "shuffled",
        solved_threshold: Optional[float] = None,
        eval_lengths: Optional[Sequence[int]] = None,
    ):
        super().__init__(batch_size=batch_size, solved_threshold=solved_threshold)
        check(is_int(val_size) and val_size >= 1, "task.val_size", val_size, "an integer >= 1")
        check(is_int(test_size) and test_size >= 1, "task.test_size", test_size, "an integer >= 1")
        check(
            train_size is None or (is_int(train_size) and train_size >= batch_size),
            "task.train_size", train_size, f"null (fresh data every step) or an integer >= task.batch_size ({batch_size})",
        )
        check(
            eval_lengths is None or (isinstance(eval_lengths, (list, tuple))
                                     and all(is_int(T) and T >= 2 for T in eval_lengths)),
            "task.eval_lengths", eval_lengths, "null or a list of sequence lengths >= 2, e.g. [200,400]",
        )
        self.val_size = val_size
        self.test_size = test_size
        check(train_order in TRAIN_ORDERS, "task.train_order", train_order, f"one of {', '.join(TRAIN_ORDERS)}")
        self.train_size = train_size
        self.train_order = train_order
        self.eval_lengths = tuple(eval_lengths or ())

    def make_batch(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` sequences ``(inputs, targets)`` drawn with ``generator`` by tensor ops."""
        raise NotImplementedError

    def count_tokens(self, batch) -> int:
        inputs = batch[0]
        return inputs.shape[0] * inputs.shape[1]

    def train_dataloader(self, data_seed: int, rank: int = 0, world_size: int = 1, start_step: int = 0,
                         num_batches: Optional[int] = None):
        if self.train_size is None:
            stream = FreshBatches(self.make_batch, self.batch_size, data_seed, rank, start_step, num_batches)
            return DataLoader(stream, batch_size=None)
        # A fixed training set, the same on every rank; DistributedSampler (added by
        # Lightning under DDP) splits it between ranks.
        inputs, targets = self.make_batch(self.train_size, seeded_generator(data_seed, FIXED_TRAIN_STREAM))
        if self.train_order == "in_order":  # the TCN scripts: the set in order, its last partial batch too
            return DataLoader(TensorDataset(inputs, targets), batch_size=self.batch_size, shuffle=False)
        shuffle = seeded_generator(data_seed, FIXED_TRAIN_STREAM, 1)
        return DataLoader(TensorDataset(inputs, targets), batch_size=self.batch_size, shuffle=True,
                          generator=shuffle, drop_last=True)

    def _fixed_loader(self, size: int, data_seed: int, stream: int) -> DataLoader:
        inputs, targets = self.make_batch(size, seeded_generator(data_seed, stream))
        return DataLoader(TensorDataset(inputs, targets), batch_size=max(self.batch_size, 256))

    def val_dataloader(self, data_seed: int):
        return self._fixed_loader(self.val_size, data_seed, VAL_STREAM)

    def test_dataloader(self, data_seed: int):
        return self._fixed_loader(self.test_size, data_seed, TEST_STREAM)
