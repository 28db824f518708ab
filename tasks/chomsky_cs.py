"""The context-sensitive tasks of Delétang et al., "Neural Networks and the Chomsky
Hierarchy", ICLR 2023 (arXiv:2207.02098): ``duplicate_string``, ``bucket_sort``.

Each follows the generator of the same name in the authors' repository
(google-deepmind/neural_networks_chomsky_hierarchy, ``tasks/cs/``); the training and
test protocol is :mod:`rnnbench.formal_languages`. Solving them for every length
needs more than a stack (a tape, or counters for sorting a fixed alphabet).
"""

from __future__ import annotations

import math

import torch

from rnnbench.formal_languages import StringTask
from rnnbench.registry import register_task


@register_task("duplicate_string")
class DuplicateString(StringTask):
    """Output the input string twice: ``s_1 .. s_n -> s_1 .. s_n s_1 .. s_n``, ``2n`` answer steps.

    Examples (authors'): ``101 -> 101101``, ``111111 -> 111111111111``. The paper uses
    binary strings (``vocab_size`` 2). Input-blind baseline: every output symbol is
    uniform, so ``acc = 1/vocab_size``.
    """

    level = "cs"

    def output_length(self, n: int) -> int:
        return 2 * n

    def targets(self, symbols):
        return torch.cat([symbols, symbols], dim=1)


@register_task("bucket_sort")
class BucketSort(StringTask):
    """Sort a string over the alphabet ``0..V-1`` (paper: V = 5): ``n`` answer steps.

    Examples (authors'): ``10204112 -> 00111224`` (V = 5), ``1110001 -> 0001111``.

    Input-blind baseline: the j-th output (1-based) is the j-th order statistic
    ``X_(j)`` of ``n`` uniform symbols, with ``P(X_(j) <= c) = P(Bin(n, (c+1)/V) >= j)``;
    the blind predictor names its most likely value at every step. That is far above
    the paper's chance 1/V (0.90 averaged over n = 41 .. 500 with V = 5): knowing only the
    length, one knows where each symbol's block of the sorted output lies, up to its
    edges, which move by about sqrt(n). A model that only counts steps scores that much.
    """

    level = "cs"
    paper_vocab_size = 5

    def output_length(self, n: int) -> int:
        return n

    def targets(self, symbols):
        return symbols.sort(dim=1).values

    def target_probabilities(self, n):
        V = self.vocab_size
        k = torch.arange(n + 1, dtype=torch.float64)
        log_choose = math.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
        at_most = torch.ones(n, V, dtype=torch.float64)  # P(X_(j) <= c), j = 1..n; c = V-1 is certain
        for c in range(V - 1):
            p = (c + 1) / V
            pmf = (log_choose + k * math.log(p) + (n - k) * math.log(1 - p)).exp()  # Bin(n, p) at k = 0..n
            at_least = pmf.flip(0).cumsum(0).flip(0)  # P(Bin >= k)
            at_most[:, c] = at_least[1:]
        return torch.diff(at_most, dim=1, prepend=torch.zeros(n, 1, dtype=torch.float64))
