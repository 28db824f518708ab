"""The deterministic context-free tasks of Delétang et al., "Neural Networks and the
Chomsky Hierarchy", ICLR 2023 (arXiv:2207.02098): ``reverse_string``,
``stack_manipulation``.

Each follows the generator of the same name in the authors' repository
(google-deepmind/neural_networks_chomsky_hierarchy, ``tasks/dcf/``); the training
and test protocol is :mod:`rnnbench.formal_languages`. A stack solves them; a
finite memory cannot for unbounded lengths, which is what the test lengths beyond
training probe.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from rnnbench.formal_languages import FormalLanguageTask, StringTask, uniform_symbols
from rnnbench.registry import register_task


@register_task("reverse_string")
class ReverseString(StringTask):
    """Output the input string reversed: ``s_1 .. s_n -> s_n .. s_1``, ``n`` answer steps.

    Examples (authors'): ``011010 -> 010110``, ``123021 -> 120321``. The paper uses
    binary strings (``vocab_size`` 2). Input-blind baseline: every output symbol is
    uniform, so ``acc = 1/vocab_size``.
    """

    level = "dcf"

    def output_length(self, n: int) -> int:
        return n

    def targets(self, symbols):
        return symbols.flip(1)


POP, PUSH_0, PUSH_1 = 2, 3, 4  # action symbols after the two stack symbols 0, 1
END = 2  # the termination class of the output


@register_task("stack_manipulation")
class StackManipulation(FormalLanguageTask):
    """Run push/pop actions on a given stack and output the final stack, top first.

    Input (authors' ``StackManipulation``): a stack of ``s`` bits, bottom to top, with
    ``s`` uniform in ``1..n-1``, then ``n - s`` actions uniform over POP, PUSH 0,
    PUSH 1 (symbols 2, 3, 4; a POP on the empty stack does nothing). Output, ``n + 1``
    steps: the final stack top to bottom, the termination class 2, then 0s. Only the
    steps up to the termination are scored (the authors' ``accuracy_mask``); the loss
    covers all ``n + 1``. A string of one symbol is a one-bit stack and no action.

    Examples (authors'): ``0 1 1 0 PUSH1 POP POP -> 1 1 0 2 0 0 0 0``;
    ``1 1 0 POP POP POP -> 2 0 0 0 0 0 0``.

    Input-blind baseline: the final height ``H`` has an exact distribution (dynamic
    programming over the height while the stack is read, then under the actions:
    push 2/3, pop 1/3); each stack bit is a fair bit independent of ``H``. At output
    step ``j`` the target is 2 with probability ``P(H = j)``, a given bit with
    ``P(H > j)/2``, and unscored otherwise; the blind predictor takes the larger, and
    its pooled accuracy is ``sum_j max(P(H=j), P(H>j)/2) / (E[H] + 1)``.
    """

    level = "dcf"
    input_size = 5
    output_size = 3

    def output_length(self, n: int) -> int:
        return n + 1

    def scored(self, targets: Tensor) -> Tensor:
        """Steps up to and including the (first) termination class."""
        end = (targets == END).int().argmax(dim=1, keepdim=True)
        return torch.arange(targets.shape[1], device=targets.device) <= end

    def targets(self, symbols):
        return final_stack(symbols)

    def draw(self, count, length, generator):
        bits = uniform_symbols(count, length, 2, generator)
        actions = uniform_symbols(count, length, 3, generator) + POP
        stack_len = (torch.randint(1, length, (count, 1), generator=generator) if length > 1
                     else torch.ones(count, 1, dtype=torch.long))
        position = torch.arange(length)
        return torch.where(position < stack_len, bits, actions)

    def target_probabilities(self, n):
        height = final_height_distribution(n)  # P(H = h), h = 0..n
        above = height.flip(0).cumsum(0).flip(0) - height  # P(H > h)
        return torch.stack([above / 2, above / 2, height], dim=1)


def final_stack(symbols: Tensor) -> Tensor:
    """The targets of :class:`StackManipulation` for input ``symbols`` ``(B, n)``, by tensor ops:
    every bit of the initial stack and every PUSH is a push, every POP a pop.

    The height after step t is ``h_t = max(h_{t-1} + d_t, 0)`` (a pop on the empty stack does
    nothing), i.e. ``S_t - min(0, min_{u<=t} S_u)`` with ``S`` the running sum of the ``d``. The
    element pushed at step t survives iff the height never drops below ``h_t`` later; the
    survivors are the final stack, the one pushed at height ``h`` at ``H - h`` from the top.
    """
    count, n = symbols.shape
    pop = symbols == POP
    value = torch.where(symbols >= PUSH_0, symbols - PUSH_0, symbols)  # the bit a push puts on the stack
    running = torch.where(pop, -1, 1).cumsum(dim=1)
    height = running - running.cummin(dim=1).values.clamp(max=0)
    lowest_after = height.flip(1).cummin(dim=1).values.flip(1)
    survives = ~pop & (lowest_after >= height)
    final = height[:, -1:]
    slot = torch.where(survives, final - height, n + 1)  # n + 1: a spare column for the dropped
    out = torch.zeros(count, n + 2, dtype=torch.long).scatter_(1, slot, torch.where(survives, value, 0))
    out.scatter_(1, final, END)
    return out[:, : n + 1]


def final_height_distribution(n: int) -> Tensor:
    """``(n + 1,)``: P(final stack height = h), h = 0..n, for :class:`StackManipulation` strings of
    length ``n`` (a row of :func:`final_height_table`, shared by every length below a power of 2)."""
    return final_height_table(1 << n.bit_length())[n, : n + 1]


@functools.lru_cache(maxsize=4)
def final_height_table(max_n: int) -> Tensor:
    """``(max_n + 1, max_n + 2)``: row ``n`` is P(final height = h) for strings of length ``n``,
    every length at once (row 0 unused).

    Step t of a string of length n is still a stack bit (a push) with probability
    ``P(s >= t | s >= t-1) = (n-t)/(n-t+1)`` (``s`` uniform in ``1..n-1``), else an action: push
    with probability 2/3, pop 1/3 (a pop on the empty stack leaves it empty). Rows of lengths
    below t no longer change.
    """
    n = torch.arange(max_n + 1, dtype=torch.float64)[:, None]
    reading = torch.zeros(max_n + 1, max_n + 2, dtype=torch.float64)
    acting = torch.zeros_like(reading)
    reading[:, 1] = 1.0  # the first symbol is always a stack bit
    for t in range(2, max_n + 1):
        rows, heights = slice(t, None), slice(0, t + 1)  # lengths >= t; heights <= t after step t
        stay = (n[rows] - t) / (n[rows] - t + 1)
        switched = acting[rows, heights] + (1 - stay) * reading[rows, heights]
        acted = torch.zeros_like(switched)
        acted[:, 1:] = switched[:, :-1] * 2 / 3  # push
        acted[:, :-1] += switched[:, 1:] / 3  # pop
        acted[:, 0] += switched[:, 0] / 3  # a pop on the empty stack leaves it empty
        read = torch.zeros_like(switched)
        read[:, 1:] = (reading[rows, heights] * stay)[:, :-1]
        acting[rows, heights], reading[rows, heights] = acted, read
    return reading + acting
