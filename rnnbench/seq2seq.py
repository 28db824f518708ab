"""Encoder–decoder with attention over any registered cell, with greedy and beam search.

The encoder is a :class:`~rnnbench.stack.CellStack` made by the task's stack factory
(any cell, any depth, optionally bidirectional) over source embeddings; padding is
handled by ``lengths``, so encoder outputs at real positions do not depend on it. The
decoder is a unidirectional stack of the same cell, stepped one token at a time
through each layer's ``cell.step``.

Attention (``attention=``), with memory ``h_j`` (encoder outputs), query ``s`` and
source padding masked out before the softmax (weights exactly 0 there, summing to 1):

- ``bahdanau``: additive, ``e_j = v^T tanh(W s_{t-1} + U h_j)`` (Bahdanau, Cho &
  Bengio 2015, arXiv:1409.0473, eq. 6 / appendix A.1.2), queried with the decoder's
  previous top-layer output; the context ``c_t`` enters the decoder input
  ``[E y_{t-1}; c_t]`` and the output layer ``W_o [s_t; c_t; E y_{t-1}]``.
- ``luong_dot`` / ``luong_general``: multiplicative, ``e_j = s_t^T h_j`` /
  ``s_t^T W_a h_j`` (Luong, Pham & Manning 2015, arXiv:1508.04025, eq. 8), queried
  with the current top-layer output; the attentional state
  ``h~_t = tanh(W_c [c_t; s_t])`` (eq. 5) feeds the output layer and, with
  ``input_feeding`` (Section 3.3), the next decoder input ``[E y_{t-1}; h~_{t-1}]``.
  ``luong_dot`` projects the memory to the decoder size when the two differ (e.g. a
  bidirectional encoder), which makes it ``general`` with a learned projection.
- ``none``: no attention: one fixed context vector, the encoder's final top-layer
  outputs (forward direction at the last real position, backward at position 0),
  used like Bahdanau's ``c_t`` at every step (Cho et al. 2014, arXiv:1406.1078).

Bridge: decoder layer ``l`` starts from ``tanh(W [s^fwd_l; s^bwd_l])`` of encoder
layer ``l``'s final states, leaf by leaf for tuple states (LSTM's ``(h, c)``) — the
form of Bahdanau's ``s_0 = tanh(W_s h_1)`` generalised to any state structure.
Encoder and decoder therefore have the same number of layers.

Beam search keeps ``beam_size`` hypotheses per sentence ranked by summed log
probability; a hypothesis that emitted ``<eos>`` stays in its slot unchanged; the
search stops when every slot has finished or at the length limit. The final choice
divides each score by GNMT's length penalty ``((5 + |Y|) / 6)^alpha`` (Wu et al.
2016, arXiv:1609.08144, eq. 14; ``alpha = 0`` ranks by raw log probability).
Beam size 1 is exactly greedy decoding. Neither ever outputs ``<pad>`` or ``<bos>``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cell import State, map_state, state_leaves
from .errors import ConfigError, check

ATTENTIONS = ("bahdanau", "luong_dot", "luong_general", "none")


class Attention(nn.Module):
    """Scores of a query ``(B, Q)`` against a memory ``(B, S, M)``; softmax over real positions.

    ``keys(memory)`` precomputes the memory side once per sentence; ``forward(query,
    keys, memory, mask)`` returns ``(context (B, M), weights (B, S))``.
    """

    def __init__(self, kind: str, query_size: int, memory_size: int, attention_size: int):
        super().__init__()
        self.kind = kind
        if kind == "bahdanau":
            self.query_map = nn.Linear(query_size, attention_size, bias=False)
            self.key_map = nn.Linear(memory_size, attention_size)
            self.v = nn.Linear(attention_size, 1, bias=False)
        elif kind == "luong_general" or (kind == "luong_dot" and memory_size != query_size):
            self.key_map = nn.Linear(memory_size, query_size, bias=False)
        else:
            self.key_map = None

    def keys(self, memory: Tensor) -> Tensor:
        return memory if self.key_map is None else self.key_map(memory)

    def forward(self, query: Tensor, keys: Tensor, memory: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        if self.kind == "bahdanau":
            scores = self.v(torch.tanh(self.query_map(query).unsqueeze(1) + keys)).squeeze(-1)
        else:
            scores = torch.bmm(keys, query.unsqueeze(-1)).squeeze(-1)
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        context = torch.bmm(weights.unsqueeze(1), memory).squeeze(1)
        return context, weights


class Seq2Seq(nn.Module):
    """Embeddings -> encoder stack -> bridge -> attentive decoder -> vocabulary logits.

    Args:
      make_stack: the task's stack factory ``(input_size, bidirectional=None) -> CellStack``;
                  called once for the encoder (direction from the cell config) and once
                  with ``bidirectional=False`` for the decoder.
      src_vocab_size, tgt_vocab_size: vocabulary sizes (id 0 is padding in both).
      embedding_size: size of the source and target embeddings.
      attention: one of :data:`ATTENTIONS`.
      attention_size: hidden size of the additive scorer (bahdanau only).
      input_feeding: feed ``h~_{t-1}`` to the decoder input (luong only).
      dropout: on embeddings and before the output layer.
    """

    def __init__(self, make_stack: Callable[..., nn.Module], src_vocab_size: int, tgt_vocab_size: int, *,
                 embedding_size: int, attention: str = "bahdanau", attention_size: Optional[int] = None,
                 input_feeding: bool = True, dropout: float = 0.0):
        super().__init__()
        check(attention in ATTENTIONS, "task.attention", attention, f"one of {', '.join(ATTENTIONS)}")
        self.attention_kind = attention
        self.luong = attention.startswith("luong")
        self.input_feeding = input_feeding and self.luong
        self.src_embedding = nn.Embedding(src_vocab_size, embedding_size, padding_idx=0)
        self.tgt_embedding = nn.Embedding(tgt_vocab_size, embedding_size, padding_idx=0)
        self.dropout = nn.Dropout(dropout)

        self.encoder = make_stack(embedding_size)
        memory_size = self.encoder.output_size
        hidden = self.encoder.hidden_size
        if self.luong:
            decoder_input = embedding_size + (hidden if self.input_feeding else 0)
        else:
            decoder_input = embedding_size + memory_size
        self.decoder = make_stack(decoder_input, bidirectional=False)
        if self.decoder.bidirectional:
            raise ConfigError("the translation decoder must be unidirectional (it generates left to right), but the "
                              "stack factory built a bidirectional one: make_stack(input_size, bidirectional=False) "
                              "must return a one-way stack.")
        if self.decoder.num_layers != self.encoder.num_layers:
            raise ValueError(f"the decoder has {self.decoder.num_layers} layers and the encoder "
                             f"{self.encoder.num_layers}: the bridge maps layer to layer, so they must match")

        # Bridge: one tanh(Linear) per decoder layer and state leaf, from the encoder
        # layer's final state leaves (both directions concatenated).
        encoder_leaves, decoder_leaves = (
            [leaf.shape[1:].numel() for leaf in state_leaves(stack.cells[0].initial_state(1, "meta"))]
            for stack in (self.encoder, self.decoder))
        if len(encoder_leaves) != len(decoder_leaves):
            raise ValueError("encoder and decoder cells must have states of the same structure")
        directions = self.encoder.num_directions
        self.bridge = nn.ModuleList(
            nn.ModuleList(nn.Linear(directions * e, d) for e, d in zip(encoder_leaves, decoder_leaves))
            for _ in range(self.decoder.num_layers)
        )
        self.attention = None if attention == "none" else Attention(
            attention, hidden, memory_size, attention_size or hidden)
        if attention == "bahdanau":
            # The query before step 0 (Bahdanau's s_0), from the encoder summary.
            self.initial_query = nn.Linear(memory_size, hidden)
        if self.luong:
            self.combine = nn.Linear(memory_size + hidden, hidden, bias=False)  # W_c of Luong eq. 5
            self.out = nn.Linear(hidden, tgt_vocab_size)
        else:
            self.out = nn.Linear(hidden + memory_size + embedding_size, tgt_vocab_size)

    # --- encoder and bridge ------------------------------------------------------------
    def encode(self, src: Tensor, src_lengths: Tensor) -> dict:
        """Run the encoder; return what decoding needs (memory, keys, mask, first decoder state)."""
        memory, final_states = self.encoder(self.dropout(self.src_embedding(src)), lengths=src_lengths)
        mask = torch.arange(src.shape[1], device=src.device)[None, :] < src_lengths[:, None]
        summary = self._summary(memory, src_lengths)
        states = []
        directions = self.encoder.num_directions
        for layer, maps in enumerate(self.bridge):
            per_direction = final_states[layer * directions:(layer + 1) * directions]
            leaves = [torch.cat([leaf.flatten(1) for leaf in group], dim=-1)
                      for group in zip(*(state_leaves(s) for s in per_direction))]
            template = self.decoder.cells[layer].initial_state(src.shape[0], src.device, memory.dtype)
            new = iter(torch.tanh(m(leaf)) for m, leaf in zip(maps, leaves))
            states.append(map_state(lambda t: next(new).view_as(t), template))
        if self.attention_kind == "bahdanau":
            feed = torch.tanh(self.initial_query(summary))
        elif self.input_feeding:
            feed = memory.new_zeros(src.shape[0], self.decoder.hidden_size)  # h~_0 = 0, as in OpenNMT
        else:
            feed = memory.new_zeros(src.shape[0], 0)
        keys = self.attention.keys(memory) if self.attention is not None else summary
        return {"memory": memory, "keys": keys, "mask": mask, "state": (tuple(states), feed)}

    def _summary(self, memory: Tensor, lengths: Tensor) -> Tensor:
        """Final top-layer outputs: forward half at the last real step, backward half at step 0."""
        hidden = self.encoder.hidden_size
        last = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, hidden)
        forward = memory[..., :hidden].gather(1, last).squeeze(1)
        if self.encoder.num_directions == 1:
            return forward
        return torch.cat([forward, memory[:, 0, hidden:]], dim=-1)

    # --- one decoder step --------------------------------------------------------------
    def step(self, tokens: Tensor, state, memory: Tensor, keys: Tensor, mask: Tensor):
        """Decode one step: ``tokens (B,)`` -> ``(logits (B, V), state, weights (B, S) or None)``."""
        features, state, weights = self.step_features(tokens, state, memory, keys, mask)
        return self.out(self.dropout(features)), state, weights

    def step_features(self, tokens: Tensor, state, memory: Tensor, keys: Tensor, mask: Tensor):
        """One decoder step up to the output layer: ``(features, state, weights)``.

        ``state`` is ``(cell states per layer, feed)``: ``feed`` is the previous top-layer
        output (bahdanau's query), ``h~_{t-1}`` (luong with input feeding) or empty.
        """
        cell_states, feed = state
        embedded = self.dropout(self.tgt_embedding(tokens))
        weights = None
        if self.luong:
            x = torch.cat([embedded, feed], dim=-1) if self.input_feeding else embedded
        else:
            if self.attention is None:
                context = keys  # the fixed summary
            else:
                context, weights = self.attention(feed, keys, memory, mask)
            x = torch.cat([embedded, context], dim=-1)
        new_states = []
        for layer, cell in enumerate(self.decoder.cells):
            if layer > 0 and self.decoder.dropout > 0 and self.training:
                x = F.dropout(x, p=self.decoder.dropout, training=True)
            x, cell_state = cell.step(x, cell_states[layer])
            new_states.append(cell_state)
        if self.luong:
            context, weights = self.attention(x, keys, memory, mask)
            features = torch.tanh(self.combine(torch.cat([context, x], dim=-1)))  # h~_t
            feed = features if self.input_feeding else feed
        else:
            features = torch.cat([x, context, embedded], dim=-1)
            feed = x
        return features, (tuple(new_states), feed), weights

    # --- training ------------------------------------------------------------------------
    def forward(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor,
                teacher_forcing: float = 1.0) -> tuple[Tensor, Optional[Tensor]]:
        """Logits ``(B, T, V)`` for targets ``tgt_in`` (``<bos> y_1 ... y_{T-1}``) and the
        attention weights ``(B, T, S)`` (None without attention). With probability
        ``1 - teacher_forcing`` (per step, whole batch) a step reads the model's own
        previous prediction instead of the reference token. With full teacher forcing
        the output layer runs once over all steps (one large matmul)."""
        enc = self.encode(src, src_lengths)
        state = enc["state"]
        features, logits, weights = [], [], []
        for gold in tgt_in.unbind(1):
            if logits and float(torch.rand(())) >= teacher_forcing:
                tokens = logits[-1].argmax(-1)
            else:
                tokens = gold
            step_features, state, step_weights = self.step_features(tokens, state, enc["memory"], enc["keys"],
                                                                    enc["mask"])
            if teacher_forcing < 1.0:
                logits.append(self.out(self.dropout(step_features)))
            features.append(step_features)
            weights.append(step_weights)
        attention = None if weights[0] is None else torch.stack(weights, dim=1)
        if teacher_forcing < 1.0:
            return torch.stack(logits, dim=1), attention
        return self.out(self.dropout(torch.stack(features, dim=1))), attention

    # --- decoding --------------------------------------------------------------------------
    @torch.no_grad()
    def greedy(self, src: Tensor, src_lengths: Tensor, max_len: int, bos: int, eos: int,
               pad: int = 0) -> tuple[Tensor, Optional[Tensor]]:
        """Batched greedy decoding: tokens ``(B, L)`` (``<eos>`` included, then ``pad``)
        and attention ``(B, L, S)`` (None without attention)."""
        enc = self.encode(src, src_lengths)
        state = enc["state"]
        tokens = torch.full((src.shape[0],), bos, dtype=torch.long, device=src.device)
        finished = torch.zeros_like(tokens, dtype=torch.bool)
        outputs, weights = [], []
        for _ in range(max_len):
            logits, state, step_weights = self.step(tokens, state, enc["memory"], enc["keys"], enc["mask"])
            logits[:, [pad, bos]] = float("-inf")  # never produced, only consumed
            tokens = logits.argmax(-1).masked_fill(finished, pad)
            outputs.append(tokens)
            weights.append(step_weights)
            finished |= tokens == eos
            if bool(finished.all()):
                break
        attention = None if weights[0] is None else torch.stack(weights, dim=1)
        return torch.stack(outputs, dim=1), attention

    @torch.no_grad()
    def beam_search(self, src: Tensor, src_lengths: Tensor, max_len: int, bos: int, eos: int, *,
                    beam_size: int, length_penalty: float = 0.0, pad: int = 0) -> Tensor:
        """Batched beam search; returns the best hypothesis per sentence, ``(B, L)`` padded with ``pad``."""
        batch = src.shape[0]
        enc = self.encode(src, src_lengths)
        expand = torch.arange(batch, device=src.device).repeat_interleave(beam_size)  # (B*K,)
        memory, keys, mask = (enc[k].index_select(0, expand) for k in ("memory", "keys", "mask"))
        state = map_state(lambda s: s.index_select(0, expand), enc["state"])
        scores = torch.full((batch, beam_size), float("-inf"), device=src.device)
        scores[:, 0] = 0.0  # all beams start identical: keep one, or top-k would pick K copies
        tokens = torch.full((batch * beam_size,), bos, dtype=torch.long, device=src.device)
        finished = torch.zeros(batch * beam_size, dtype=torch.bool, device=src.device)
        lengths = torch.zeros(batch * beam_size, dtype=torch.long, device=src.device)
        history = torch.empty(batch * beam_size, 0, dtype=torch.long, device=src.device)
        for _ in range(max_len):
            logits, state, _ = self.step(tokens, state, memory, keys, mask)
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            log_probs[:, [pad, bos]] = float("-inf")  # never produced, only consumed
            # A finished hypothesis continues with `pad` at no cost, and with nothing else.
            log_probs[finished] = float("-inf")
            log_probs[finished, pad] = 0.0
            vocab = log_probs.shape[-1]
            candidates = (scores.view(-1, 1) + log_probs).view(batch, beam_size * vocab)
            scores, flat = candidates.topk(beam_size, dim=-1)
            origin = (flat // vocab + torch.arange(batch, device=src.device)[:, None] * beam_size).view(-1)
            tokens = (flat % vocab).view(-1)
            state = map_state(lambda s: s.index_select(0, origin), state)
            history = torch.cat([history.index_select(0, origin), tokens[:, None]], dim=1)
            lengths = lengths.index_select(0, origin) + (~finished.index_select(0, origin)).long()
            finished = finished.index_select(0, origin) | (tokens == eos)
            if bool(finished.all()):
                break
        penalty = ((5.0 + lengths.float()) / 6.0) ** length_penalty
        best = (scores.view(-1) / penalty).view(batch, beam_size).argmax(-1)
        chosen = best + torch.arange(batch, device=src.device) * beam_size
        return history.index_select(0, chosen)
