"""Truncated backpropagation through time over a token stream: parallel streams and windows.

As pytorch/examples' word_language_model and Zaremba et al. 2014 (arXiv:1409.2329):
the stream of a split is cut into ``num_streams`` contiguous parallel streams, one per
row (:func:`batchify`; the tail that does not fill a row is dropped). Windows of
``bptt`` steps are read left to right: the inputs are tokens ``i .. i+L-1`` of every
row, the targets tokens ``i+1 .. i+L`` (:func:`fixed_windows`; the last window is
shorter, or left out with ``full_only``, as Zaremba et al.'s ``main.lua``, whose epoch
is ``floor(N / bptt)`` full windows). :func:`variable_windows` draws AWD-LSTM's window
lengths (Merity, Keskar & Socher 2017, "Regularizing and Optimizing LSTM Language
Models"): ``max(5, round_down(N(b, 5)))`` with ``b = bptt`` with probability 0.95, else
``bptt / 2``. :class:`Windows` yields the windows of one epoch per iteration, with a
flag at the first window of a pass, where the carried state is reset.
"""

from __future__ import annotations

import functools
from typing import Callable, Iterator

import torch
from torch import Tensor
from torch.utils.data import IterableDataset

Window = tuple[int, int]  # (start, steps)


def batchify(stream: Tensor, num_streams: int) -> Tensor:
    """``(N,)`` -> ``(num_streams, N // num_streams)``: contiguous parallel streams, one
    per row (batch-first; the tail that does not fill a row is dropped)."""
    length = stream.numel() // num_streams
    return stream[: num_streams * length].view(num_streams, length)


def fixed_windows(length: int, bptt: int, full_only: bool = False) -> list[Window]:
    """``(start, steps)`` of the windows over rows of ``length`` tokens: every target once
    (the last window may be shorter), or with ``full_only`` the ``(length - 1) // bptt``
    windows of exactly ``bptt`` steps."""
    windows = [(i, min(bptt, length - 1 - i)) for i in range(0, length - 1, bptt)]
    return [w for w in windows if w[1] == bptt] if full_only else windows


def variable_windows(length: int, bptt: int, generator: torch.Generator, full_only: bool = False) -> list[Window]:
    """AWD-LSTM's windows: ``bptt`` (p = 0.95) or ``bptt/2`` as the mean of N(mean, 5), at
    least 5 steps; with ``full_only`` a last window cut short by the end of the rows is left out."""
    windows, i = [], 0
    while i < length - 1:
        mean = bptt if float(torch.rand((), generator=generator)) < 0.95 else bptt / 2
        drawn = max(5, int(mean + 5 * float(torch.randn((), generator=generator))))
        steps = min(drawn, length - 1 - i)
        if full_only and steps < drawn:
            break
        windows.append((i, steps))
        i += steps
    return windows


def training_schedule(length: int, bptt: int, variable: bool, full_only: bool,
                      epoch_generator: Callable[[int], torch.Generator]) -> Callable[[int], list[Window]]:
    """``epoch -> windows`` of a training pass over rows of ``length`` tokens: the same fixed
    windows every epoch, or (``variable``) AWD-LSTM's, drawn with ``epoch_generator(epoch)``."""
    if variable:
        @functools.lru_cache(maxsize=2)
        def schedule(epoch: int) -> list[Window]:
            return variable_windows(length, bptt, epoch_generator(epoch), full_only=full_only)
        return schedule
    windows = fixed_windows(length, bptt, full_only=full_only)
    return lambda epoch: windows


class Windows(IterableDataset):
    """BPTT windows ``(inputs, targets, first)`` over the rows of ``data`` ``(B, N)``;
    ``first`` is True at the first window of a pass (the carried state is reset there).

    Each iteration is one epoch; ``schedule(epoch)`` gives its windows, so a run's
    batches are a function of the epoch (and the data seed), and ``start_step`` resumes
    in the middle of any epoch.
    """

    def __init__(self, data: Tensor, schedule: Callable[[int], list[Window]], start_step: int = 0,
                 fixed_length: bool = True):
        self.data = data
        self.schedule = schedule
        self.fixed_length = fixed_length
        self.epoch, self.offset = 0, start_step
        while self.offset and self.offset >= len(schedule(self.epoch)):
            self.offset -= len(schedule(self.epoch))
            self.epoch += 1

    def __len__(self) -> int:
        if not self.fixed_length:
            raise TypeError("windows of variable length have no fixed count per epoch")
        return len(self.schedule(0))

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, bool]]:
        epoch, offset = self.epoch, self.offset
        self.epoch, self.offset = epoch + 1, 0
        windows = self.schedule(epoch)
        for k in range(offset, len(windows)):
            start, steps = windows[k]
            yield self.data[:, start:start + steps], self.data[:, start + 1:start + 1 + steps], k == 0
