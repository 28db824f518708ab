"""The generator's encode/step interface on a model that is not a translation model: a
bigram table whose encoder output and state are a dict and a named tuple. Greedy and
beam search know nothing else of the model (no attention), and find what exhaustive
enumeration finds."""

from __future__ import annotations

import itertools
from typing import NamedTuple

import pytest
import torch
from torch import Tensor

from rnnbench.decoding import SearchSettings, beam_search, greedy, select_rows
from rnnbench.errors import ConfigError

BOS, EOS, PAD, V = 1, 2, 0, 6


class Source(NamedTuple):
    bias: Tensor  # (B, V): a per-sentence preference added to every step's logits


class Bigram:
    """logits(next | previous) = table[previous] + source bias; the state counts the steps."""

    def __init__(self, seed: int):
        self.table = torch.randn(V, V, generator=torch.Generator().manual_seed(seed), dtype=torch.double)

    def encode(self, src: Tensor, src_lengths: Tensor):
        bias = torch.nn.functional.one_hot(src[:, 0], V).double() * 0.5
        return {"source": Source(bias)}, {"steps": torch.zeros(src.shape[0], dtype=torch.long)}

    def step(self, tokens: Tensor, state, encoded):
        logits = self.table[tokens] + encoded["source"].bias
        return logits, {"steps": state["steps"] + 1}, None

    def log_prob(self, first: int, sequence: list[int]) -> float:
        bias = torch.nn.functional.one_hot(torch.tensor(first), V).double() * 0.5
        total, previous = 0.0, BOS
        for token in sequence:
            total += float(torch.log_softmax(self.table[previous] + bias, -1)[token])
            previous = token
        return total


def test_select_rows_reorders_tensors_in_any_structure():
    tree = {"a": (torch.arange(3), None), "b": Source(torch.arange(6).view(3, 2)), "c": [torch.arange(3) * 10]}
    picked = select_rows(tree, torch.tensor([2, 0]))
    assert picked["a"][0].tolist() == [2, 0] and picked["a"][1] is None
    assert isinstance(picked["b"], Source) and picked["b"].bias.tolist() == [[4, 5], [0, 1]]
    assert picked["c"][0].tolist() == [20, 0]


@pytest.mark.parametrize("seed", range(4))
def test_beam_search_on_any_encode_step_model_finds_the_exhaustive_best(seed):
    model = Bigram(seed)
    src = torch.tensor([[3], [4], [5]])
    max_len, words = 3, [3, 4, 5]  # <unk> and two words; <pad> and <bos> are never produced
    found = beam_search(model, src, torch.ones(3, dtype=torch.long), max_len, BOS, EOS, beam_size=64)
    for row in range(3):
        candidates = [[*p, EOS] for n in range(max_len) for p in itertools.product(words, repeat=n)]
        candidates += [list(p) for p in itertools.product(words, repeat=max_len)]
        best = max(candidates, key=lambda seq: model.log_prob(int(src[row, 0]), seq))
        tokens = found[row].tolist()
        tokens = tokens[:tokens.index(EOS) + 1] if EOS in tokens else tokens
        assert tokens == best
    greedy_tokens, extra = greedy(model, src, torch.ones(3, dtype=torch.long), max_len, BOS, EOS)
    assert extra is None  # the model reports nothing besides its logits
    assert torch.equal(greedy_tokens, beam_search(model, src, torch.ones(3, dtype=torch.long), max_len, BOS, EOS,
                                                  beam_size=1))


def test_search_settings_limit_the_length_and_refuse_bad_values():
    settings = SearchSettings(beam_size=2, length_penalty=0.6, max_len_a=1.5, max_len_b=2)
    assert settings.max_len(torch.tensor([3, 4])) == 8  # ceil(1.5 * 4 + 2)
    tokens, _ = settings.search(Bigram(0), torch.tensor([[3], [4]]), torch.tensor([4, 4]), BOS, EOS)
    assert tokens.shape[0] == 2 and tokens.shape[1] <= 8
    for bad, message in (({"beam_size": 0}, "task.beam_size=0"), ({"max_len_a": 0, "max_len_b": 0}, "task.max_len_b")):
        with pytest.raises(ConfigError, match=message):
            SearchSettings(**bad)
