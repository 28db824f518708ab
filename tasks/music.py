"""Polyphonic music modelling (registry name ``music``): predict the next chord of a
piano roll, 88 keys per step, each an independent Bernoulli output.

The benchmark of Boulanger-Lewandowski, Bengio & Vincent 2012 (ICML), used to
compare tanh RNN, LSTM and GRU by Chung, Gulcehre, Cho & Bengio 2014 ("Empirical
Evaluation of Gated Recurrent Neural Networks on Sequence Modeling",
arXiv:1412.3555) and by Bai, Kolter & Koltun 2018 (TCN, locuslab/TCN
``TCN/poly_music/music_test.py``). Data: :mod:`rnnbench.music_data` (JSB Chorales,
Nottingham, MuseData, Piano-midi.de with their official splits).

Model: ``frames -> cell stack -> linear head``, 88 inputs (the chord at step t) and
88 logits ``a_t``; ``P(key k on at t+1 | chords 0..t) = sigmoid(a_t,k)``.

Metric (``nll``, also the training ``loss``): the negative log-likelihood per frame,
in nats, summed over the 88 keys,

    nll = sum_pieces sum_{t=1}^{L-1} -sum_k [ y_t,k log p_t,k + (1 - y_t,k) log(1 - p_t,k) ]
          / sum_pieces (L - 1)

exactly as music_test.py's ``evaluate`` (inputs ``piece[:-1]``, targets
``piece[1:]``; its total loss over all pieces divided by its total count of
frames): the first step of every piece is given, never scored; every other step
of every piece of the split is scored once; pieces weigh by their number of
scored frames (a long piece counts more), not equally. Padded steps of a batch
count in neither sum (``metric_weight`` is the number of scored frames).

Batching: ``batch_size`` pieces per step, padded to the longest with ``lengths``
(the cells leave the state unchanged on padded steps, and the loss masks them);
training batches group pieces of similar length (shuffled pools, as for
translation), evaluation batches are sorted by length. ``batch_size: 1`` is
music_test.py's one piece per step. The training loss of a batch is the mean over
its scored frames.

Baselines (:func:`rnnbench.music_data.marginal_nll`, ``markov_nll``): the per-key
marginal frequency of the training set and the per-key first-order Markov chain,
scored on the test frames.

The task is causal (the target is the next input): a bidirectional cell is refused.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader

from rnnbench.errors import check, is_int
from rnnbench.fixed_data import EpochStream, EvalBatches
from rnnbench.models import SequenceModel
from rnnbench.music_data import KEYS, MUSIC_SETS, load_rolls, marginal_nll, markov_nll
from rnnbench.parallel_data import bucketed_batches
from rnnbench.registry import register_task
from rnnbench.task import TRAIN_STREAM, Task, seeded_generator


def pad_pieces(pieces: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Pieces ``(L_i, 88)`` -> ``(inputs (B, T, 88), targets (B, T, 88), lengths (B,))``, float,
    zero-padded: inputs are steps ``0 .. L-2``, targets steps ``1 .. L-1``, ``lengths = L - 1``."""
    padded = pad_sequence(pieces, batch_first=True).float()
    lengths = torch.tensor([piece.shape[0] - 1 for piece in pieces], dtype=torch.long)
    return padded[:, :-1], padded[:, 1:], lengths


@register_task("music")
class MusicTask(Task):
    causal = True  # the target at step t is the input at step t+1: a backward direction would read it
    metric = "nll"
    metric_mode = "min"

    def __init__(
        self,
        *,
        dataset: str = "jsb",
        data_dir: Optional[str] = None,
        path: Optional[str] = None,
        batch_size: int = 8,
        eval_batch_size: int = 64,
        solved_threshold: Optional[float] = None,
    ):
        super().__init__(batch_size=batch_size, solved_threshold=solved_threshold)
        check(dataset in MUSIC_SETS, "task.dataset", dataset, f"one of {', '.join(MUSIC_SETS)}")
        check(data_dir is None or isinstance(data_dir, str), "task.data_dir", data_dir,
              "null (RNNBENCH_DATA_DIR, then the cache, then a download) or a folder path")
        check(path is None or (isinstance(path, str) and path.endswith((".mat", ".pickle", ".pkl"))), "task.path",
              path, "null (the set's .mat file) or the path of a .mat, .pickle or .pkl file")
        check(is_int(eval_batch_size) and eval_batch_size >= 1, "task.eval_batch_size", eval_batch_size,
              "an integer >= 1")
        self.dataset = dataset
        self.data_dir = data_dir
        self.path = path
        self.eval_batch_size = eval_batch_size

    # --- data ---------------------------------------------------------------------------
    @functools.cached_property
    def rolls(self) -> dict[str, list[Tensor]]:
        return load_rolls(self.dataset, self.data_dir, self.path)

    def _make_batch(self, split: str):
        pieces = self.rolls[split]
        return lambda indices: pad_pieces([pieces[i] for i in indices])

    def train_dataloader(self, data_seed: int, rank: int = 0, world_size: int = 1, start_step: int = 0,
                         num_batches: Optional[int] = None):
        lengths = [piece.shape[0] for piece in self.rolls["train"]]

        def epoch_batches(epoch: int) -> list[list[int]]:
            return bucketed_batches(lengths, self.batch_size, seeded_generator(data_seed, TRAIN_STREAM, epoch))

        stream = EpochStream(epoch_batches, self._make_batch("train"), rank, world_size, start_step, num_batches)
        return DataLoader(stream, batch_size=None)

    def _eval_loader(self, split: str) -> DataLoader:
        lengths = [piece.shape[0] for piece in self.rolls[split]]
        batches = bucketed_batches(lengths, self.eval_batch_size, None)  # sorted by length: least padding
        return DataLoader(EvalBatches(batches, self._make_batch(split)), batch_size=None)

    def val_dataloader(self, data_seed: int):
        return self._eval_loader("valid")

    def test_dataloader(self, data_seed: int):
        return self._eval_loader("test")

    def diagnostic_batch(self, data_seed: int, size: int):
        """The first ``size`` test pieces (file order), all cut to the length of the shortest
        of them, so that every step of the batch is real (no padding in per-step means)."""
        pieces = self.rolls["test"][:size]
        shortest = min(piece.shape[0] for piece in pieces)
        return pad_pieces([piece[:shortest] for piece in pieces])

    # --- record -------------------------------------------------------------------------
    def key_parameters(self) -> dict:
        frames = {f"{split}_frames": sum(p.shape[0] - 1 for p in self.rolls[split]) for split in ("valid", "test")}
        pieces = {f"{split}_pieces": len(self.rolls[split]) for split in ("train", "valid", "test")}
        return {"dataset": self.dataset, "batch_size": self.batch_size, **pieces, **frames}

    @functools.cached_property
    def _baselines(self) -> dict[str, float]:
        marginal = marginal_nll(self.rolls["train"], self.rolls["test"])
        return {"nll": marginal, "loss": marginal, "markov_nll": markov_nll(self.rolls["train"], self.rolls["test"])}

    def baseline(self) -> dict[str, float]:
        """On the test frames: ``nll`` of the per-key marginal model, ``markov_nll`` of the per-key Markov chain."""
        return dict(self._baselines)

    # --- model, loss, metrics -------------------------------------------------------------
    def build_model(self, make_stack) -> SequenceModel:
        return SequenceModel(make_stack, KEYS, KEYS, readout="all")

    def loss_and_metrics(self, model: nn.Module, batch) -> tuple[Tensor, dict[str, Tensor]]:
        inputs, targets, lengths = batch
        logits = model(inputs, lengths)  # (B, T, 88)
        per_frame = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(-1)  # (B, T)
        real = torch.arange(inputs.shape[1], device=lengths.device)[None, :] < lengths[:, None]
        nll = torch.where(real, per_frame, 0.0).sum() / lengths.sum()
        return nll, {"loss": nll.detach(), "nll": nll.detach()}

    def count_tokens(self, batch) -> int:
        return int(batch[2].sum())  # real (unpadded) steps read

    def metric_weight(self, batch) -> int:
        return int(batch[2].sum())  # scored frames: the epoch mean is the mean over every frame of the split
