"""The adaptive memory-horizon search: for one cell configuration and one seed, the longest
sequence length T at which the task is solved, found with few runs.

The search grows T geometrically from ``start`` (``start · growth^k``) while the task is
solved; at the first failure it bisects, on a log scale, between the longest solved and
the shortest failed T until their ratio is at most ``1 + resolution`` (or they are
adjacent integers). It never tries a T above ``max_length`` and stops once the whole
protocol has used ``max_runs`` runs. The horizon is the longest solved T below the
shortest failed one, so it is monotone by construction: a T above a failure is never
counted, even if it was solved by chance.

:class:`HorizonSearch` only decides which T to try next; running the jobs (through any
Hydra launcher) and reusing finished records belong to the sweeper
(:mod:`rnnbench.protocol`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from .errors import ConfigError, check, is_int, is_number


@dataclass(frozen=True)
class HorizonSettings:
    """How far and how finely a search goes (``hydra.sweeper.horizon.*``)."""

    start: int = 10  # the first T: short enough that every cell that can learn at all solves it
    growth: float = 2.0  # T is multiplied by this while solved
    max_length: int = 640  # no T above this (the cap on T)
    resolution: float = 0.25  # bisect until longest solved / shortest failed T are within this ratio
    max_runs: int = 1000  # runs of the whole protocol, every search together

    def __post_init__(self):
        check(is_int(self.start) and self.start >= 1, "horizon.start", self.start, "an integer >= 1")
        check(is_number(self.growth) and self.growth > 1, "horizon.growth", self.growth, "a number > 1")
        check(is_int(self.max_length) and self.max_length >= self.start, "horizon.max_length", self.max_length,
              f"an integer >= horizon.start ({self.start})")
        check(is_number(self.resolution) and self.resolution > 0, "horizon.resolution", self.resolution,
              "a number > 0 (e.g. 0.25: stop when the solved and failed T are within 25%)")
        check(is_int(self.max_runs) and self.max_runs >= 1, "horizon.max_runs", self.max_runs, "an integer >= 1")


@dataclass
class HorizonSearch:
    """One search: the T values tried and whether each was solved."""

    settings: HorizonSettings
    tried: dict[int, bool] = field(default_factory=dict)  # T -> solved

    @property
    def longest_solved(self) -> Optional[int]:
        """The horizon: the longest solved T below every failed T (None: not even ``start``)."""
        failed = self.shortest_failed
        solved = [T for T, ok in self.tried.items() if ok and (failed is None or T < failed)]
        return max(solved) if solved else None

    @property
    def shortest_failed(self) -> Optional[int]:
        failed = [T for T, ok in self.tried.items() if not ok]
        return min(failed) if failed else None

    def next_length(self) -> Optional[int]:
        """The next T to try, or None when the search is over."""
        s = self.settings
        if not self.tried:
            return s.start
        solved, failed = self.longest_solved, self.shortest_failed
        if failed is None:  # still growing
            grown = min(s.max_length, max(solved + 1, math.ceil(solved * s.growth)))
            return None if solved >= s.max_length or grown in self.tried else grown
        if solved is None:  # failed at the start: nothing shorter is tried (the start is the floor)
            return None
        if failed - solved <= 1 or failed / solved <= 1 + s.resolution:
            return None
        middle = round(math.sqrt(solved * failed))  # bisect on a log scale
        middle = min(failed - 1, max(solved + 1, middle))
        return None if middle in self.tried else middle

    def record(self, length: int, solved: bool) -> None:
        if not is_int(length) or length < 1:
            raise ConfigError(f"a horizon search got T={length!r}; expected an integer >= 1")
        self.tried[length] = bool(solved)
