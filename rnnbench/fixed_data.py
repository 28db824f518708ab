"""Batches from a fixed, finite dataset (real corpora: piano rolls, images), for
training and evaluation, on one process or under DDP.

Training (:class:`EpochStream`): epoch ``e`` is ordered by ``epoch_batches(e)``, a
function of the data seed and ``e`` only (e.g. a permutation drawn from
``seeded_generator(data_seed, TRAIN_STREAM, e)``). Under DDP the global batches of
an epoch are dealt round-robin, batch ``k`` to rank ``k % world_size``; each rank
gets the same number, ``len(batches) // world_size`` (the few left over are not
used in that epoch; the next epoch's order differs). So batch ``k`` of rank ``r``
is a pure function of ``(data_seed, r, k)``: a run resumed at step ``k`` sees the
batches an uninterrupted run would have seen, and ranks never share a batch.

Evaluation (:class:`EvalBatches`): a fixed list of batches. Under DDP rank ``r``
takes batches ``r, r + W, ...`` (each batch exactly once; Lightning's own
``DistributedSampler`` would pad the last share with repeated batches), or every
batch when there are fewer batches than ranks. Epoch means weighted by
``Task.metric_weight`` and synced by Lightning (sums and weights are both reduced)
are then exact means over the whole split.
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence

import torch.distributed as dist
from torch.utils.data import IterableDataset

from .errors import ConfigError


def process_rank() -> tuple[int, int]:
    """``(rank, world_size)`` of this process in the default process group, ``(0, 1)`` outside DDP."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class EpochStream(IterableDataset):
    """Training batches for ``rank`` of ``world_size``, epoch after epoch, from ``start_step`` on.

    ``epoch_batches(epoch)`` lists the epoch's batches as index sets; ``make_batch(indices)``
    builds one. ``num_batches`` (the step budget) gives the stream a length; None: endless.
    """

    def __init__(self, epoch_batches: Callable[[int], Sequence], make_batch: Callable, rank: int = 0,
                 world_size: int = 1, start_step: int = 0, num_batches: Optional[int] = None):
        self.epoch_batches, self.make_batch = epoch_batches, make_batch
        self.rank, self.world_size = rank, world_size
        self.start_step, self.num_batches = start_step, num_batches

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("an endless EpochStream has no length")
        return self.num_batches

    def batches_of_rank(self, epoch: int) -> Sequence:
        """This rank's index sets of ``epoch``, in order."""
        batches = self.epoch_batches(epoch)
        per_rank = len(batches) // self.world_size
        if per_rank == 0:
            raise ConfigError(f"an epoch has {len(batches)} training batch(es), fewer than the {self.world_size} "
                              f"processes: lower task.batch_size or use fewer devices.")
        return batches[self.rank:per_rank * self.world_size:self.world_size]

    def __iter__(self) -> Iterator:
        epoch, skip, produced = 0, self.start_step, 0
        while self.num_batches is None or produced < self.num_batches:
            mine = self.batches_of_rank(epoch)
            for indices in mine[skip:]:
                yield self.make_batch(indices)
                produced += 1
                if self.num_batches is not None and produced >= self.num_batches:
                    return
            skip = max(0, skip - len(mine))
            epoch += 1


class EvalBatches(IterableDataset):
    """A fixed list of evaluation batches, built on the fly by ``make_batch(indices)``;
    this process's share of them under DDP (see the module docstring)."""

    def __init__(self, index_batches: Sequence, make_batch: Callable):
        self.index_batches, self.make_batch = list(index_batches), make_batch

    def _mine(self) -> list:
        rank, world_size = process_rank()
        return self.index_batches if len(self.index_batches) < world_size else self.index_batches[rank::world_size]

    def __len__(self) -> int:
        return len(self._mine())

    def __iter__(self) -> Iterator:
        return (self.make_batch(indices) for indices in self._mine())
