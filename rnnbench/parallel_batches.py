"""Batches of parallel text: one split as id lists (:class:`EncodedSplit`), padded
tensors, and length-bucketed batches for training (:class:`BucketedStream`, endless,
disjoint across ranks, resumable) and evaluation (sorted by length).
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import torch
from torch import Tensor
from torch.utils.data import IterableDataset

from .errors import ConfigError


class EncodedSplit:
    """One split as id lists: ``src[i]`` (ending in ``<eos>``), ``tgt[i]`` (``<bos> ... <eos>``),
    and ``references[i]``, the raw target text BLEU compares against."""

    def __init__(self, src: list[list[int]], tgt: list[list[int]], references: list[str], sources: list[str]):
        self.src, self.tgt, self.references, self.sources = src, tgt, references, sources

    def __len__(self) -> int:
        return len(self.src)

    def batch(self, indices: Sequence[int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(src (B, S), src_lengths (B,), tgt (B, T), index (B,))``, padded with 0."""
        src = [self.src[i] for i in indices]
        tgt = [self.tgt[i] for i in indices]
        src_lengths = torch.tensor([len(s) for s in src])
        src_t = torch.zeros(len(src), int(src_lengths.max()), dtype=torch.long)
        tgt_t = torch.zeros(len(tgt), max(len(t) for t in tgt), dtype=torch.long)
        for row, (s, t) in enumerate(zip(src, tgt)):
            src_t[row, :len(s)] = torch.tensor(s)
            tgt_t[row, :len(t)] = torch.tensor(t)
        return src_t, src_lengths, tgt_t, torch.tensor(list(indices))


def bucketed_batches(lengths: Sequence[int], batch_size: int, generator: Optional[torch.Generator]) -> list[list[int]]:
    """Batches of similar source length: with a generator, shuffle, sort within pools of
    50 batches by length, cut into batches and shuffle the batches (little padding, still
    random); without one, sort the whole split (evaluation order, least padding)."""
    if generator is None:
        order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    order = torch.randperm(len(lengths), generator=generator).tolist()
    pool = 50 * batch_size
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start:start + pool], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    permutation = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in permutation]


class BucketedStream(IterableDataset):
    """Endless training batches for ``rank`` of ``world_size``, epoch after epoch.

    Epoch ``e`` is ordered by ``seeded_generator(data_seed, stream, e)``; global batch
    ``k`` of an epoch goes to rank ``k % world_size``, so ranks never share a batch and a
    resumed run (``start_step``) sees the same batches as an uninterrupted one.
    """

    def __init__(self, data: EncodedSplit, batch_size: int, make_generator, rank: int, world_size: int,
                 start_step: int = 0, num_batches: Optional[int] = None):
        self.data, self.batch_size, self.make_generator = data, batch_size, make_generator
        self.rank, self.world_size, self.start_step, self.num_batches = rank, world_size, start_step, num_batches
        self.lengths = [len(s) for s in data.src]

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("an endless BucketedStream has no length")
        return self.num_batches

    def __iter__(self) -> Iterator:
        step, epoch, produced = 0, 0, 0
        while self.num_batches is None or produced < self.num_batches:
            batches = bucketed_batches(self.lengths, self.batch_size, self.make_generator(epoch))
            mine = batches[self.rank::self.world_size]
            if not mine:
                raise ConfigError(f"task.batch_size={self.batch_size} leaves no training batch for rank "
                                  f"{self.rank} of {self.world_size}: the training set has {len(self.data)} pairs.")
            for indices in mine:
                if step >= self.start_step:
                    yield self.data.batch(indices)
                    produced += 1
                    if self.num_batches is not None and produced >= self.num_batches:
                        return
                step += 1
            epoch += 1
