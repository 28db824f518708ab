"""Decoding an encoder–decoder: batched greedy search and beam search.

The generator talks to the model through two calls, as fairseq's ``SequenceGenerator``
does (``encoder.forward`` once, ``decoder.forward`` with an incremental state per token):

- ``model.encode(src, src_lengths) -> (encoded, state)``, once per batch;
- ``model.step(tokens, state, encoded) -> (logits (B, V), state, extra)``, once per
  token; ``extra`` is whatever the step reports besides its logits (a translation
  model's attention weights ``(B, S)``, or None).

``encoded`` and ``state`` are tensors, or tuples / lists / dicts of them, whose first
dimension is the batch; the generator only reorders their rows (:func:`select_rows`,
for beam search) and knows nothing else about them (attention included).

Beam search keeps ``beam_size`` hypotheses per sentence ranked by summed log
probability; a hypothesis that emitted ``<eos>`` stays in its slot unchanged (it
continues with ``<pad>`` at no cost); the search stops when every slot has finished
or at the length limit. The final choice divides each score by GNMT's length penalty
``((5 + |Y|) / 6)^alpha`` (Wu et al. 2016, arXiv:1609.08144, eq. 14; ``alpha = 0``
ranks by raw log probability). Beam size 1 is exactly greedy decoding. Neither ever
outputs ``<pad>`` or ``<bos>``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from .errors import check, is_int


def select_rows(tree: Any, index: Tensor) -> Any:
    """``tree`` (a tensor, None, or a (named) tuple / list / dict of them) with the rows
    ``index`` of every tensor (dim 0)."""
    if tree is None:
        return None
    if isinstance(tree, Tensor):
        return tree.index_select(0, index)
    if isinstance(tree, dict):
        return {key: select_rows(value, index) for key, value in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # a NamedTuple
        return type(tree)(*(select_rows(part, index) for part in tree))
    if isinstance(tree, (tuple, list)):
        return type(tree)(select_rows(part, index) for part in tree)
    raise TypeError(f"cannot select rows of a {type(tree).__name__}")


@torch.no_grad()
def greedy(model, src: Tensor, src_lengths: Tensor, max_len: int, bos: int, eos: int,
           pad: int = 0) -> tuple[Tensor, Optional[Tensor]]:
    """Batched greedy decoding: tokens ``(B, L)`` (``<eos>`` included, then ``pad``) and the
    steps' ``extra`` stacked ``(B, L, ...)`` (None when the model reports none)."""
    encoded, state = model.encode(src, src_lengths)
    tokens = torch.full((src.shape[0],), bos, dtype=torch.long, device=src.device)
    finished = torch.zeros_like(tokens, dtype=torch.bool)
    outputs, extras = [], []
    for _ in range(max_len):
        logits, state, extra = model.step(tokens, state, encoded)
        logits[:, [pad, bos]] = float("-inf")  # never produced, only consumed
        tokens = logits.argmax(-1).masked_fill(finished, pad)
        outputs.append(tokens)
        extras.append(extra)
        finished |= tokens == eos
        if bool(finished.all()):
            break
    stacked = None if extras[0] is None else torch.stack(extras, dim=1)
    return torch.stack(outputs, dim=1), stacked


@torch.no_grad()
def beam_search(model, src: Tensor, src_lengths: Tensor, max_len: int, bos: int, eos: int, *,
                beam_size: int, length_penalty: float = 0.0, pad: int = 0) -> Tensor:
    """Batched beam search; returns the best hypothesis per sentence, ``(B, L)`` padded with ``pad``."""
    batch, device = src.shape[0], src.device
    encoded, state = model.encode(src, src_lengths)
    expand = torch.arange(batch, device=device).repeat_interleave(beam_size)  # (B*K,)
    encoded, state = select_rows(encoded, expand), select_rows(state, expand)
    scores = torch.full((batch, beam_size), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: keep one, or top-k would pick K copies
    tokens = torch.full((batch * beam_size,), bos, dtype=torch.long, device=device)
    finished = torch.zeros(batch * beam_size, dtype=torch.bool, device=device)
    lengths = torch.zeros(batch * beam_size, dtype=torch.long, device=device)
    history = torch.empty(batch * beam_size, 0, dtype=torch.long, device=device)
    for _ in range(max_len):
        logits, state, _ = model.step(tokens, state, encoded)
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        log_probs[:, [pad, bos]] = float("-inf")  # never produced, only consumed
        # A finished hypothesis continues with `pad` at no cost, and with nothing else.
        log_probs[finished] = float("-inf")
        log_probs[finished, pad] = 0.0
        vocab = log_probs.shape[-1]
        candidates = (scores.view(-1, 1) + log_probs).view(batch, beam_size * vocab)
        scores, flat = candidates.topk(beam_size, dim=-1)
        origin = (flat // vocab + torch.arange(batch, device=device)[:, None] * beam_size).view(-1)
        tokens = (flat % vocab).view(-1)
        state = select_rows(state, origin)
        history = torch.cat([history.index_select(0, origin), tokens[:, None]], dim=1)
        lengths = lengths.index_select(0, origin) + (~finished.index_select(0, origin)).long()
        finished = finished.index_select(0, origin) | (tokens == eos)
        if bool(finished.all()):
            break
    penalty = ((5.0 + lengths.float()) / 6.0) ** length_penalty
    best = (scores.view(-1) / penalty).view(batch, beam_size).argmax(-1)
    chosen = best + torch.arange(batch, device=device) * beam_size
    return history.index_select(0, chosen)


@dataclass(frozen=True)
class SearchSettings:
    """How a task decodes (its ``task.*`` keys): ``beam_size`` (1 = greedy), GNMT's length
    penalty ``alpha``, and the length limit ``max_len_a * S + max_len_b`` tokens for a batch
    whose longest source has ``S`` tokens (fairseq's ``max_len_a`` / ``max_len_b``)."""

    beam_size: int = 5
    length_penalty: float = 0.6
    max_len_a: float = 1.5
    max_len_b: int = 10

    def __post_init__(self):
        check(is_int(self.beam_size) and self.beam_size >= 1, "task.beam_size", self.beam_size,
              "an integer >= 1 (1 = greedy)")
        check(isinstance(self.length_penalty, (int, float)) and self.length_penalty >= 0, "task.length_penalty",
              self.length_penalty, "a number >= 0 (GNMT's alpha; 0 = none)")
        check(isinstance(self.max_len_a, (int, float)) and self.max_len_a >= 0, "task.max_len_a", self.max_len_a,
              "a number >= 0")
        check(is_int(self.max_len_b) and self.max_len_b >= 0, "task.max_len_b", self.max_len_b, "an integer >= 0")
        check(self.max_len_a > 0 or self.max_len_b > 0, "task.max_len_b", self.max_len_b,
              "> 0 when task.max_len_a is 0")

    def max_len(self, src_lengths: Tensor) -> int:
        return max(1, int(math.ceil(self.max_len_a * int(src_lengths.max()) + self.max_len_b)))

    def search(self, model, src: Tensor, src_lengths: Tensor, bos: int, eos: int,
               beam_size: Optional[int] = None) -> tuple[Tensor, Optional[Tensor]]:
        """Tokens ``(B, L)`` and, when greedy (``beam_size`` 1; None: the configured one), the
        steps' stacked ``extra`` (None otherwise)."""
        beam_size = self.beam_size if beam_size is None else beam_size
        limits = dict(max_len=self.max_len(src_lengths), bos=bos, eos=eos)
        if beam_size == 1:
            return greedy(model, src, src_lengths, **limits)
        return beam_search(model, src, src_lengths, **limits, beam_size=beam_size,
                           length_penalty=float(self.length_penalty)), None
