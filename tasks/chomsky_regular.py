"""The regular-language tasks of Delétang et al., "Neural Networks and the Chomsky
Hierarchy", ICLR 2023 (arXiv:2207.02098): ``parity_check``, ``even_pairs``,
``cycle_navigation``, ``modular_arithmetic``.

Each follows the generator of the same name in the authors' repository
(google-deepmind/neural_networks_chomsky_hierarchy, ``tasks/regular/``); the
training and test protocol (lengths 1..N for training, N+1..M for the score, the
answer step after the input) is :mod:`rnnbench.formal_languages`. Every task here
answers with one class after the whole string; a finite automaton solves it, so a
recurrent cell that generalises must have learnt one.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from rnnbench.errors import check, is_int
from rnnbench.formal_languages import FormalLanguageTask, uniform_symbols
from rnnbench.registry import register_task


def _half_half() -> Tensor:
    return torch.full((1, 2), 0.5, dtype=torch.float64)


@register_task("parity_check")
class ParityCheck(FormalLanguageTask):
    """Is the number of 1s in a binary string odd? Class ``sum(s) mod 2``.

    Examples (authors'): ``1010100 -> 1`` (three 1s), ``01111 -> 0`` (four).
    Input-blind baseline: the parity of ``n >= 1`` fair bits is 0 or 1 with
    probability 1/2 each, so ``acc = 1/2``.
    """

    level = "regular"
    input_size = 2
    output_size = 2

    def targets(self, symbols):
        return symbols.sum(dim=1, keepdim=True) % 2

    def target_probabilities(self, n):
        return _half_half()


@register_task("even_pairs")
class EvenPairs(FormalLanguageTask):
    """Is the number of unequal neighbours (``01`` and ``10``) in a binary string odd?

    Class ``sum_i (s_i xor s_{i+1}) mod 2``, which equals ``s_1 xor s_n``. Examples
    (authors'): ``001110 -> 0`` (one 10, one 01), ``0101001 -> 1`` (five pairs).
    Input-blind baseline: for ``n = 1`` the class is always 0 (accuracy 1); for
    ``n >= 2``, ``s_1 xor s_n`` is a fair bit (accuracy 1/2).
    """

    level = "regular"
    input_size = 2
    output_size = 2

    def targets(self, symbols):
        return (symbols[:, 1:] != symbols[:, :-1]).sum(dim=1, keepdim=True) % 2

    def target_probabilities(self, n):
        return torch.tensor([[1.0, 0.0]], dtype=torch.float64) if n == 1 else _half_half()


@register_task("cycle_navigation")
class CycleNavigation(FormalLanguageTask):
    """Where does a walk on a cycle of 5 states end? Start at state 0; each symbol is a move,
    ``0`` one state left, ``1`` stay, ``2`` one state right; class = final state.

    Class ``sum(a - 1) mod 5`` (authors' ``_cycle_length = 5``). Example: moves
    ``+1 -1 0 -1 -1`` (symbols ``2 0 1 0 0``) end at ``-2``: class 3.
    Input-blind baseline: the final state's distribution is the 5-state walk's after
    ``n`` uniform moves (exact, by matrix power); the blind predictor names its most
    likely state: 1/3 at ``n = 1``, tending to the paper's chance 1/5 for long walks.
    """

    level = "regular"
    input_size = 3
    output_size = 5

    def targets(self, symbols):
        return (symbols - 1).sum(dim=1, keepdim=True) % self.output_size

    def target_probabilities(self, n):
        states = self.output_size
        step = torch.zeros(states, states, dtype=torch.float64)
        for state in range(states):
            for move in (-1, 0, 1):
                step[state, (state + move) % states] += 1 / 3
        start = torch.zeros(states, dtype=torch.float64)
        start[0] = 1.0
        return (start @ torch.linalg.matrix_power(step, n))[None]


PLUS, MINUS, TIMES, BLANK = 0, 1, 2, 3  # operator offsets after the digits (authors' OP_BY_CHARACTER)


@register_task("modular_arithmetic")
class ModularArithmetic(FormalLanguageTask):
    """Reduce an arithmetic expression modulo ``m`` (paper: 5), e.g. ``1 + 2 * 3 = 2``.

    An expression of odd length ``n`` alternates digits ``0..m-1`` (uniform) and
    operators ``+ - *`` (uniform), digit first; it is evaluated with the usual
    precedence (products first, ``a - b`` as ``a + (-b)``), as the authors'
    ``_evaluate_expression``. Symbols: digits ``0..m-1``, then ``+ - * _`` as
    ``m .. m+3`` (the blank ``_`` is in the authors' alphabet but never drawn). An
    even length is cut to the odd length below it, as the authors' ``sample_batch``
    does (so length 2 reads one digit). Examples (authors', m = 5): ``1 - 1 - 1 = 4``,
    ``0 * 1 + 4 * 3 - 2 = 0``.

    Input-blind baseline: the value's exact distribution by dynamic programming over
    (sum of finished products, current product) mod m; products with a zero make 0
    the most likely value, above the paper's chance 1/m.
    """

    level = "regular"
    output_size = 5

    def __init__(self, *, modulus: int = 5, seq_len: int = 40, max_test_len: int = 100, batch_size: int = 128,
                 val_size: int = 64, test_size: int = 128, solved_threshold: Optional[float] = 0.9,
                 eval_lengths: Optional[Sequence[int]] = None):
        super().__init__(seq_len=seq_len, max_test_len=max_test_len, batch_size=batch_size, val_size=val_size,
                         test_size=test_size, solved_threshold=solved_threshold, eval_lengths=eval_lengths)
        check(is_int(modulus) and modulus >= 2, "task.modulus", modulus, "an integer >= 2 (the paper uses 5)")
        self.modulus = modulus
        self.input_size = modulus + 4  # digits, + - * _
        self.output_size = modulus

    def key_parameters(self) -> dict:
        return {**super().key_parameters(), "modulus": self.modulus}

    def input_length(self, length: int) -> int:
        return length if length % 2 == 1 else length - 1

    def draw(self, count, length, generator):
        length = self.input_length(length)
        symbols = torch.empty(count, length, dtype=torch.long)
        symbols[:, 0::2] = uniform_symbols(count, length // 2 + 1, self.modulus, generator)
        operators = torch.tensor([PLUS, TIMES, MINUS])[uniform_symbols(count, length // 2, 3, generator)]
        symbols[:, 1::2] = self.modulus + operators
        return symbols

    def targets(self, symbols):
        """Left to right over the operators, the batch at once: ``total`` holds the sum of the
        finished products, ``term`` the product being built (a ``-`` starts it negated)."""
        m = self.modulus
        total, term = torch.zeros(len(symbols), dtype=torch.long), symbols[:, 0]
        for k in range(1, symbols.shape[1], 2):
            op, digit = symbols[:, k] - m, symbols[:, k + 1]
            times = op == TIMES
            total = torch.where(times, total, (total + term) % m)
            term = torch.where(times, term * digit, torch.where(op == MINUS, -digit, digit)) % m
        return ((total + term) % m)[:, None]

    def target_probabilities(self, n):
        m = self.modulus
        # State (s, t): s = sum of the finished products, t = the product being built, mod m.
        step = torch.zeros(m * m, m * m, dtype=torch.float64)
        for s in range(m):
            for t in range(m):
                for d in range(m):
                    for s_next, t_next in (((s + t) % m, d), ((s + t) % m, (-d) % m), (s, (t * d) % m)):
                        step[s * m + t, s_next * m + t_next] += 1 / (3 * m)
        start = torch.zeros(m * m, dtype=torch.float64)
        start[:m] = 1 / m  # s = 0, t = the first digit
        state = start @ torch.linalg.matrix_power(step, (n - 1) // 2)
        values = torch.zeros(m, dtype=torch.float64)
        for s in range(m):
            for t in range(m):
                values[(s + t) % m] += state[s * m + t]
        return values[None]
