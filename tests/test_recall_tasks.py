"""Selective copying (Mamba) and multi-query associative recall (Zoology) against their
definitions: layouts rebuilt by hand from what each generated sequence says, sampling
distributions against exact ones (and numpy's sampler, which Zoology uses), metrics on
oracle models, and the causal flag."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from helpers.cli import compose_config
from rnnbench.errors import ConfigError
from rnnbench.registry import get_task
from rnnbench.run import build_experiment
from rnnbench.task import seeded_generator
from rnnbench.tasks.mqar import IGNORE


# --- selective copying -----------------------------------------------------------------------
def test_selective_copy_layout():
    T, M, A = 20, 4, 7
    task = get_task("selective_copy")(seq_len=T, copy_len=M, n_tokens=A)
    inputs, targets = task.make_batch(500, seeded_generator(0))
    assert inputs.shape == (500, T) and targets.shape == (500, M)
    assert bool((inputs[:, T - M:] == A - 1).all())  # M markers at the end
    head = inputs[:, : T - M]
    data = head != 0
    assert bool((data.sum(dim=1) == M).all())  # exactly M data tokens among the noise
    assert torch.equal(head[data].view(500, M), targets)  # the targets are the data tokens, in order
    assert int(targets.min()) == 1 and int(targets.max()) == A - 2  # data tokens 1..A-2, never noise or marker


def test_selective_copy_positions_are_uniform():
    T, M = 24, 3
    task = get_task("selective_copy")(seq_len=T, copy_len=M, n_tokens=6)
    inputs, _ = task.make_batch(20000, seeded_generator(1))
    frequency = (inputs[:, : T - M] != 0).float().mean(dim=0)  # P(step holds a data token) = M / (T - M)
    assert torch.allclose(frequency, torch.full_like(frequency, M / (T - M)), atol=0.01)


def test_selective_copy_oracle_and_events():
    task = get_task("selective_copy")(seq_len=16, copy_len=3, n_tokens=6)
    inputs, targets = task.make_batch(64, seeded_generator(2))

    class Oracle(nn.Module):
        def forward(self, x):
            logits = torch.zeros(x.shape[0], x.shape[1], 6)
            logits[:, -3:] = nn.functional.one_hot(targets, 6).float()
            return logits

    _, metrics = task.loss_and_metrics(Oracle(), (inputs, targets))
    assert metrics["acc"] == 1.0 and metrics["seq_acc"] == 1.0
    first = task.event_positions((inputs, targets))
    assert bool((inputs[torch.arange(64), first] != 0).all())
    assert all(bool((inputs[i, : int(first[i])] == 0).all()) for i in range(64))


def test_selective_copy_bad_values():
    with pytest.raises(ConfigError, match="task.seq_len"):
        get_task("selective_copy")(seq_len=7, copy_len=4)
    with pytest.raises(ConfigError, match="task.n_tokens"):
        get_task("selective_copy")(n_tokens=3)
    with pytest.raises(ConfigError, match="task.eval_lengths"):  # refused before training, not after it
        get_task("selective_copy")(copy_len=4, eval_lengths=[200, 6])


# --- MQAR -------------------------------------------------------------------------------------
def parts(task, inputs, labels):
    """What one generated batch says: keys, values, and the step of each key's query."""
    D = task.num_kv_pairs
    keys, values = inputs[:, 0:2 * D:2], inputs[:, 1:2 * D:2]
    query = torch.stack([(inputs[:, 2 * D:] == keys[:, [i]]).int().argmax(dim=1) + 2 * D for i in range(D)], 1)
    return keys, values, query


def zoology_layout(keys, values, query, T) -> tuple[torch.Tensor, torch.Tensor]:
    """The sequence the Zoology definition gives for these keys, values and query steps,
    written out one sequence at a time (no noise: random_non_queries=false)."""
    inputs = torch.zeros(len(keys), T, dtype=torch.long)
    labels = torch.full((len(keys), T), IGNORE)
    for b in range(len(keys)):
        for i, (k, v, q) in enumerate(zip(keys[b].tolist(), values[b].tolist(), query[b].tolist())):
            inputs[b, 2 * i], inputs[b, 2 * i + 1], inputs[b, q], labels[b, q] = k, v, k, v
    return inputs, labels


def test_mqar_layout_is_zoologys():
    V, T, D = 40, 24, 4
    task = get_task("mqar")(seq_len=T, num_kv_pairs=D, vocab_size=V, random_non_queries=False)
    inputs, labels = task.make_batch(300, seeded_generator(0))
    keys, values, query = parts(task, inputs, labels)
    assert bool(((keys >= 1) & (keys < V // 2)).all()) and bool(((values >= V // 2) & (values < V)).all())
    assert all(len(set(row)) == D for row in keys.tolist()) and all(len(set(row)) == D for row in values.tolist())
    assert bool(((query - 2 * D) % 2 == 0).all())  # queries at the first step of a two-step slot
    assert all(len(set(row)) == D for row in query.tolist())  # every key queried once
    expected_inputs, expected_labels = zoology_layout(keys, values, query, T)
    assert torch.equal(inputs, expected_inputs) and torch.equal(labels, expected_labels)
    assert bool((inputs[labels != IGNORE] < V // 2).all())  # the input at a query is its key ...
    assert not bool((inputs[:, 1:][labels[:, :-1] != IGNORE] >= V // 2).any())  # ... and never the value after it


def test_mqar_noise_is_uniform_over_the_vocabulary():
    V, T = 20, 16
    task = get_task("mqar")(seq_len=T, num_kv_pairs=2, vocab_size=V, random_non_queries=True)
    inputs, labels = task.make_batch(4000, seeded_generator(1))
    clean, _ = get_task("mqar")(seq_len=T, num_kv_pairs=2, vocab_size=V, random_non_queries=False).make_batch(
        4000, seeded_generator(1))
    noise = inputs[clean == 0]
    counts = torch.bincount(noise, minlength=V).float() / noise.numel()
    assert torch.allclose(counts, torch.full((V,), 1 / V), atol=0.01)  # keys and values too: noise can look like them


def test_mqar_query_delays_follow_the_power_law():
    """The slot of the first key's query has exactly P(g) ∝ (g+1)^(a-1); the later ones follow
    draws without replacement, compared here with numpy's choice(replace=False, p=...), the
    sampler Zoology uses."""
    task = get_task("mqar")(seq_len=32, num_kv_pairs=3, vocab_size=64, power_a=0.3, random_non_queries=False)
    inputs, labels = task.make_batch(20000, seeded_generator(2))
    _, _, query = parts(task, inputs, labels)
    slots = (query - 2 * task.num_kv_pairs) // 2
    p = task.slot_probabilities()
    first = torch.bincount(slots[:, 0], minlength=task.slots).double() / len(slots)
    assert torch.allclose(first, p, atol=0.01)
    rng = np.random.default_rng(0)
    reference = np.stack([rng.choice(task.slots, size=3, replace=False, p=p.numpy()) for _ in range(20000)])
    for draw in (1, 2):
        ours = torch.bincount(slots[:, draw], minlength=task.slots).double() / len(slots)
        numpy = torch.tensor(np.bincount(reference[:, draw], minlength=task.slots) / len(reference))
        assert torch.allclose(ours, numpy, atol=0.015)


def test_mqar_oracle_scores_one_and_events_are_first_queries():
    task = get_task("mqar")(seq_len=16, num_kv_pairs=2, vocab_size=20)
    inputs, labels = task.make_batch(32, seeded_generator(3))

    class Oracle(nn.Module):
        def forward(self, x):
            return nn.functional.one_hot(labels.clamp(min=0), 20).float()

    _, metrics = task.loss_and_metrics(Oracle(), (inputs, labels))
    assert metrics["acc"] == 1.0
    events = task.event_positions((inputs, labels))
    assert bool((labels[torch.arange(32), events] != IGNORE).all())
    assert bool((events >= 4).all())


def test_mqar_refuses_a_bidirectional_cell():
    config = compose_config(["task=mqar", "cell=bigru", "cell.hidden_size=8"])
    with pytest.raises(ConfigError, match="causal"):
        build_experiment(config)


@pytest.mark.parametrize("kwargs, key", [({"seq_len": 15}, "task.seq_len"), ({"num_kv_pairs": 17}, "task.seq_len"),
                                         ({"vocab_size": 64}, "task.vocab_size"), ({"power_a": 0}, "task.power_a"),
                                         ({"eval_lengths": [128, 99]}, "task.eval_lengths"),
                                         ({"eval_lengths": [256]}, "task.eval_lengths")])
def test_mqar_bad_values(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        get_task("mqar")(**kwargs)
