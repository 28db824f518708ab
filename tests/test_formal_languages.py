"""The formal-language tasks (Delétang et al. 2023) against their definitions: the authors'
own examples, independent per-string oracles in plain Python, exact baselines worked out
by hand, and the training / test protocol of rnnbench/formal_languages.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rnnbench.errors import ConfigError
from rnnbench.evaluation import evaluate
from rnnbench.formal_languages import EVAL_BATCH
from rnnbench.registry import get_task
from rnnbench.task import seeded_generator
from rnnbench.tasks.chomsky_dcf import final_stack

FORMAL = ["parity_check", "even_pairs", "cycle_navigation", "modular_arithmetic", "reverse_string",
          "stack_manipulation", "duplicate_string", "bucket_sort"]


def ids(*rows) -> torch.Tensor:
    return torch.tensor([list(r) for r in rows])


def answers(name: str, *strings, **options) -> list:
    """The task's answer to each string (strings of different lengths, one at a time)."""
    task = get_task(name)(**options)
    return [task.targets(ids(string))[0].tolist() for string in strings]


# --- the authors' examples (docstrings of their tasks) ----------------------------------------
def test_regular_examples():
    assert answers("parity_check", [1, 0, 1, 0, 1, 0, 0], [0, 1, 1, 1, 1]) == [[1], [0]]
    assert answers("even_pairs", [0, 0, 1, 1, 1, 0], [0, 1, 0, 1, 0, 0, 1]) == [[0], [1]]
    # Moves +1 -1 0 -1 -1 (symbols 2 0 1 0 0) end at -2 = state 3; +1 +1 +1 -1 at 2.
    assert answers("cycle_navigation", [2, 0, 1, 0, 0]) == [[3]]
    assert answers("cycle_navigation", [2, 2, 2, 0]) == [[2]]


PLUS, MINUS, TIMES = 5, 6, 7  # with modulus 5: digits 0..4, then + - * _


def test_modular_arithmetic_examples():
    # 1 + 2 * 3 = 7 = 2;  1 - 1 - 1 = -1 = 4;  0 * 1 + 4 * 3 - 2 = 10 = 0 (mod 5)
    assert answers("modular_arithmetic", [1, PLUS, 2, TIMES, 3]) == [[2]]
    assert answers("modular_arithmetic", [1, MINUS, 1, MINUS, 1]) == [[4]]
    assert answers("modular_arithmetic", [0, TIMES, 1, PLUS, 4, TIMES, 3, MINUS, 2]) == [[0]]
    assert answers("modular_arithmetic", [3]) == [[3]]


def test_modular_arithmetic_agrees_with_python_on_random_expressions():
    task = get_task("modular_arithmetic")()
    symbols, targets = task.sample(300, 21, seeded_generator(1))
    text = {PLUS: "+", MINUS: "-", TIMES: "*"}
    for row, target in zip(symbols.tolist(), targets[:, 0].tolist()):
        expression = "".join(text.get(s, str(s)) if i % 2 else str(s) for i, s in enumerate(row))
        assert eval(expression) % 5 == target, expression  # Python's own precedence and modulo


def test_even_lengths_are_cut_to_odd_ones():
    task = get_task("modular_arithmetic")()
    assert task.sample(4, 10, seeded_generator(0))[0].shape == (4, 9)
    assert task.input_length(2) == 1 and task.input_length(7) == 7


def test_string_examples():
    assert answers("reverse_string", [0, 1, 1, 0, 1, 0]) == [[0, 1, 0, 1, 1, 0]]
    assert answers("duplicate_string", [1, 0, 1]) == [[1, 0, 1, 1, 0, 1]]
    assert answers("bucket_sort", [1, 0, 2, 0, 4, 1, 1, 2]) == [[0, 0, 1, 1, 1, 2, 2, 4]]
    assert answers("bucket_sort", [1, 1, 1, 0, 0, 0, 1], vocab_size=2) == [[0, 0, 0, 1, 1, 1, 1]]


POP, PUSH_0, PUSH_1 = 2, 3, 4


def test_stack_manipulation_examples():
    # 0 1 1 0 PUSH1 POP POP -> stack 0 1 1 -> 1 1 0, end, padding (authors' example)
    assert final_stack(ids([0, 1, 1, 0, PUSH_1, POP, POP])).tolist() == [[1, 1, 0, 2, 0, 0, 0, 0]]
    assert final_stack(ids([1, 1, 0, POP, POP, POP])).tolist() == [[2, 0, 0, 0, 0, 0, 0]]
    # Pops on the empty stack do nothing; later pushes still count.
    assert final_stack(ids([1, POP, POP, PUSH_0, PUSH_1])).tolist() == [[1, 0, 2, 0, 0, 0]]
    assert final_stack(ids([1])).tolist() == [[1, 2]]


def python_stack(symbols: list) -> list:
    stack = []
    for s in symbols:
        if s == POP:
            if stack:
                stack.pop()
        else:
            stack.append(s - PUSH_0 if s >= PUSH_0 else s)
    out = stack[::-1] + [2]
    return out + [0] * (len(symbols) + 1 - len(out))


@pytest.mark.parametrize("length", [1, 2, 3, 9, 40])
def test_stack_manipulation_agrees_with_a_python_stack(length):
    task = get_task("stack_manipulation")()
    symbols, targets = task.sample(500, length, seeded_generator(length))
    assert all(python_stack(s) == t for s, t in zip(symbols.tolist(), targets.tolist()))
    stack_len = (symbols >= POP).int().argmax(dim=1)  # the first action (0 if none)
    assert bool((symbols[:, 0] <= 1).all())  # at least one stack bit
    if length > 2:  # the stack length is uniform in 1..n-1: every value occurs
        assert set(stack_len[stack_len > 0].tolist()) == set(range(1, length))


# --- exact baselines, worked out by hand -------------------------------------------------------
def test_baselines_by_hand():
    # One move: states -1, 0, +1 with 1/3 each.
    assert get_task("cycle_navigation")().target_probabilities(1).max() == pytest.approx(1 / 3)
    # One symbol: no pair, class 0 always.
    assert get_task("even_pairs")().target_probabilities(1).tolist() == [[1.0, 0.0]]
    # d1 op d2: + and - give a uniform value; * gives 0 with probability 9/25, else 4/25 each.
    p = get_task("modular_arithmetic")().target_probabilities(3)[0]
    assert p.tolist() == pytest.approx([19 / 75] + [14 / 75] * 4)
    # min and max of two symbols of 5: P(min = 0) = P(max = 4) = 1 - (4/5)^2 = 0.36.
    p = get_task("bucket_sort")().target_probabilities(2)
    assert p[0, 0] == pytest.approx(0.36) and p[1, 4] == pytest.approx(0.36) and p[0, 1] == pytest.approx(0.28)
    # Length 2: a one-bit stack, then PUSH (2/3: height 2) or POP (1/3: height 0). Steps 0, 1, 2
    # score max(P(H=j), P(H>j)/2) = 1/3, 1/3, 2/3 of E[H] + 1 = 7/3 scored steps: 4/7.
    task = get_task("stack_manipulation")(seq_len=1, max_test_len=2)
    assert task.baseline()["acc"] == pytest.approx(4 / 7)


def test_bucket_sort_blind_baseline_is_far_above_chance():
    baseline = get_task("bucket_sort")(max_test_len=500).baseline()
    assert baseline["acc_uniform"] == 0.2 and baseline["acc"] == pytest.approx(0.901, abs=0.001)


# --- protocol ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FORMAL)
def test_training_lengths_are_uniform_up_to_n(name):
    task = get_task(name)(seq_len=6, max_test_len=8)
    lengths = []
    for step in range(300):
        inputs, targets = task.make_batch(3, seeded_generator(0, step))
        n = inputs.shape[1] - targets.shape[1]
        assert targets.shape[1] == task.output_length(n)
        assert bool((inputs[:, n:] == task.input_size).all()) and bool((inputs[:, :n] < task.input_size).all())
        lengths.append(n)
    expected = {task.input_length(n) for n in range(1, 7)}
    assert set(lengths) == expected  # every training length, none longer than N


@pytest.mark.parametrize("name", ["parity_check", "duplicate_string"])
def test_validation_reads_lengths_1_to_n_and_the_test_n_plus_1_to_m(name):
    task = get_task(name)(seq_len=5, max_test_len=9, val_size=70, test_size=70)

    def lengths(loader):
        counts = {}
        for inputs, targets in loader:
            assert len(inputs) <= EVAL_BATCH
            n = inputs.shape[1] - targets.shape[1]
            counts[n] = counts.get(n, 0) + len(inputs)
        return counts

    assert lengths(task.val_dataloader(0)) == {n: 70 for n in range(1, 6)}
    assert lengths(task.test_dataloader(0)) == {n: 70 for n in range(6, 10)}


def test_a_length_variant_tests_that_length_alone_with_the_same_sequences():
    task = get_task("reverse_string")(seq_len=5, max_test_len=9, test_size=70)
    variant = task.length_variant(7, {"seq_len": 5, "max_test_len": 9, "test_size": 70})
    full = [b for b in task.test_dataloader(3) if b[0].shape[1] == 14]
    alone = list(variant.test_dataloader(3))
    assert len(alone) == len(full) == 2 and all(torch.equal(a[0], b[0]) for a, b in zip(alone, full))
    assert variant.seq_len == 5  # the training lengths are unchanged
    assert variant.baseline()["acc"] == 0.5


class ParityUpTo(nn.Module):
    """Answers parity correctly for strings of at most ``longest`` symbols, wrongly beyond."""

    def __init__(self, longest: int):
        super().__init__()
        self.longest = longest
        self.anchor = nn.Parameter(torch.zeros(0))

    def forward(self, inputs):
        n = inputs.shape[1] - 1
        answer = inputs[:, :n].sum(dim=1) % 2
        answer = answer if n <= self.longest else 1 - answer
        logits = torch.zeros(inputs.shape[0], inputs.shape[1], 2)
        logits[:, -1] = nn.functional.one_hot(answer, 2).float()
        return logits


def test_the_score_weighs_every_test_length_equally():
    task = get_task("parity_check")(seq_len=4, max_test_len=12, test_size=100)  # lengths 5..12
    assert evaluate(task, ParityUpTo(6), task.test_dataloader(0))["acc"] == pytest.approx(2 / 8)
    assert evaluate(task, ParityUpTo(12), task.test_dataloader(0))["acc"] == pytest.approx(1.0)


def test_stack_accuracy_ignores_steps_after_the_termination():
    task = get_task("stack_manipulation")()
    inputs, targets = task.batch_at(64, 12, seeded_generator(0))
    wrong_after_end = torch.where(task.scored(targets), targets, (targets + 1) % 3)

    class Echo(nn.Module):
        def forward(self, x):
            logits = torch.zeros(x.shape[0], x.shape[1], 3)
            logits[:, -targets.shape[1]:] = nn.functional.one_hot(wrong_after_end, 3).float()
            return logits

    _, metrics = task.loss_and_metrics(Echo(), (inputs, targets))
    assert metrics["acc"] == 1.0 and metrics["seq_acc"] == 1.0


@pytest.mark.parametrize("kwargs, key", [({"seq_len": 0}, "task.seq_len"), ({"max_test_len": 40}, "task.max_test_len"),
                                         ({"modulus": 1}, "task.modulus")])
def test_bad_values_are_refused(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        get_task("modular_arithmetic")(**kwargs)


def test_bad_alphabet_is_refused():
    with pytest.raises(ConfigError, match="task.vocab_size"):
        get_task("bucket_sort")(vocab_size=1)


LEVELS = {"parity_check": "regular", "even_pairs": "regular", "cycle_navigation": "regular",
          "modular_arithmetic": "regular", "reverse_string": "dcf", "stack_manipulation": "dcf",
          "duplicate_string": "cs", "bucket_sort": "cs"}  # the paper's Table 2 (the authors' constants.TASK_LEVELS)


@pytest.mark.parametrize("name", FORMAL)
def test_level_is_recorded(name):
    assert get_task(name)().key_parameters()["level"] == LEVELS[name]
