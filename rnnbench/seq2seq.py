"""Encoder–decoder with attention over any registered cell.

The encoder is a :class:`~rnnbench.stack.CellStack` made by the task's stack factory
(any cell, any depth, optionally bidirectional) over source embeddings; padding is
handled by ``lengths``, so encoder outputs at real positions do not depend on it. The
decoder is a unidirectional stack of the same cell, stepped one token at a time
through each layer's ``cell.step``.

Attention (``attention=``): one small class per variant behind one interface
(:class:`Attention`), with memory ``h_j`` (encoder outputs), query ``s`` and source
padding masked out before the softmax (weights exactly 0 there, summing to 1):

- ``bahdanau`` (:class:`BahdanauAttention`): additive, ``e_j = v^T tanh(W s_{t-1} +
  U h_j)`` (Bahdanau, Cho & Bengio 2015, arXiv:1409.0473, eq. 6 / appendix A.1.2),
  queried with the decoder's previous top-layer output (before step 0:
  ``s_0 = tanh(W_s summary)``); the context ``c_t`` enters the decoder input
  ``[E y_{t-1}; c_t]`` and the output layer ``W_o [s_t; c_t; E y_{t-1}]``.
- ``luong_dot`` / ``luong_general`` (:class:`LuongAttention`): multiplicative,
  ``e_j = s_t^T h_j`` / ``s_t^T W_a h_j`` (Luong, Pham & Manning 2015,
  arXiv:1508.04025, eq. 8), queried with the current top-layer output; the
  attentional state ``h~_t = tanh(W_c [c_t; s_t])`` (eq. 5) feeds the output layer
  and, with ``input_feeding`` (Section 3.3), the next decoder input
  ``[E y_{t-1}; h~_{t-1}]`` (``h~_0 = 0``, as in OpenNMT). ``luong_dot`` projects the
  memory to the decoder size when the two differ (e.g. a bidirectional encoder),
  which makes it ``general`` with a learned projection.
- ``none`` (:class:`FixedContext`): no attention: one fixed context vector, the
  encoder's final top-layer outputs (forward direction at the last real position,
  backward at position 0), used like Bahdanau's ``c_t`` at every step (Cho et al.
  2014, arXiv:1406.1078).

Bridge: decoder layer ``l`` starts from ``tanh(W [s^fwd_l; s^bwd_l])`` of encoder
layer ``l``'s final states, leaf by leaf for tuple states (LSTM's ``(h, c)``) — the
form of Bahdanau's ``s_0 = tanh(W_s h_1)`` generalised to any state structure.
Encoder and decoder therefore have the same number of layers.

Decoding (greedy, beam search) is :mod:`rnnbench.decoding`: it calls :meth:`Seq2Seq.encode`
once per batch and :meth:`Seq2Seq.step` once per token, and knows nothing of attention.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cell import map_state, state_leaves
from .errors import ConfigError, check, is_int


class EncoderOutput(NamedTuple):
    """What every decoder step reads: the encoder outputs ``memory (B, S, M)``, what the
    attention prepared from them once per sentence (``keys``: the memory side of the
    scores; :class:`FixedContext`: the fixed context ``(B, M)``), and ``mask (B, S)``,
    True at real source positions."""

    memory: Tensor
    keys: Tensor
    mask: Tensor


def attend(scores: Tensor, encoded: EncoderOutput) -> tuple[Tensor, Tensor]:
    """Softmax of ``scores (B, S)`` over real positions, and the context ``(B, M)`` it weighs."""
    weights = torch.softmax(scores.masked_fill(~encoded.mask, float("-inf")), dim=-1)
    return torch.bmm(weights.unsqueeze(1), encoded.memory).squeeze(1), weights


class Attention(nn.Module):
    """How the decoder reads the source. A variant says the decoder's input width
    (:meth:`decoder_input_size`, known before the decoder is built), sets ``output_size``
    (the width of the features the output layer reads), and implements the three moments
    of a decoder step:

    - :meth:`prepare` ``(memory, summary) -> (keys, feed)``: once per sentence;
      ``feed`` is the part of the decoder state the variant carries between steps;
    - :meth:`before` ``(embedded, feed, encoded) -> (x, carried)``: the decoder input;
    - :meth:`after` ``(output, embedded, carried, feed, encoded) -> (features, feed,
      weights)``: the features for the output layer after the decoder has stepped, the
      next ``feed`` and the attention weights ``(B, S)`` (None without attention).
    """

    output_size: int

    @staticmethod
    def decoder_input_size(embedding_size: int, hidden_size: int, memory_size: int, input_feeding: bool) -> int:
        """The decoder's input width with this variant."""
        raise NotImplementedError

    def prepare(self, memory: Tensor, summary: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def before(self, embedded: Tensor, feed: Tensor, encoded: EncoderOutput) -> tuple[Tensor, Any]:
        raise NotImplementedError

    def after(self, output: Tensor, embedded: Tensor, carried: Any, feed: Tensor,
              encoded: EncoderOutput) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        raise NotImplementedError


class ContextBeforeStep(Attention):
    """Variants whose context ``c_t`` is known before the decoder steps: it enters the
    decoder input ``[E y_{t-1}; c_t]`` and the output layer ``[s_t; c_t; E y_{t-1}]``;
    ``feed`` is the previous top-layer output ``s_{t-1}``."""

    def __init__(self, embedding_size: int, hidden_size: int, memory_size: int):
        super().__init__()
        self.output_size = hidden_size + memory_size + embedding_size

    @staticmethod
    def decoder_input_size(embedding_size, hidden_size, memory_size, input_feeding):
        return embedding_size + memory_size

    def context(self, feed: Tensor, encoded: EncoderOutput) -> tuple[Tensor, Optional[Tensor]]:
        raise NotImplementedError

    def before(self, embedded, feed, encoded):
        context, weights = self.context(feed, encoded)
        return torch.cat([embedded, context], dim=-1), (context, weights)

    def after(self, output, embedded, carried, feed, encoded):
        context, weights = carried
        return torch.cat([output, context, embedded], dim=-1), output, weights


class FixedContext(ContextBeforeStep):
    """``none``: the encoder summary as the context of every step (Cho et al. 2014)."""

    def prepare(self, memory, summary):
        return summary, memory.new_zeros(memory.shape[0], 0)

    def context(self, feed, encoded):
        return encoded.keys, None


class BahdanauAttention(ContextBeforeStep):
    """``bahdanau``: ``e_j = v^T tanh(W s_{t-1} + U h_j)``, queried before the step."""

    def __init__(self, embedding_size: int, hidden_size: int, memory_size: int, attention_size: int):
        super().__init__(embedding_size, hidden_size, memory_size)
        self.query_map = nn.Linear(hidden_size, attention_size, bias=False)  # W
        self.key_map = nn.Linear(memory_size, attention_size)  # U (its bias is the scorer's)
        self.v = nn.Linear(attention_size, 1, bias=False)
        self.initial_query = nn.Linear(memory_size, hidden_size)  # s_0 = tanh(W_s summary)

    def prepare(self, memory, summary):
        return self.key_map(memory), torch.tanh(self.initial_query(summary))

    def context(self, feed, encoded):
        return self.attend(feed, encoded)

    def attend(self, query: Tensor, encoded: EncoderOutput) -> tuple[Tensor, Tensor]:
        """``(context (B, M), weights (B, S))`` of ``query (B, H)``."""
        return attend(self.v(torch.tanh(self.query_map(query).unsqueeze(1) + encoded.keys)).squeeze(-1), encoded)


class LuongAttention(Attention):
    """``luong_dot`` / ``luong_general``: ``e_j = s_t^T W_a h_j`` queried after the step, then
    ``h~_t = tanh(W_c [c_t; s_t])``; ``feed`` is ``h~_{t-1}`` with input feeding, else empty."""

    def __init__(self, embedding_size: int, hidden_size: int, memory_size: int, general: bool,
                 input_feeding: bool):
        super().__init__()
        self.input_feeding = input_feeding
        self.output_size = hidden_size
        # W_a (general); a plain dot product needs a projection when the sizes differ.
        needs_map = general or memory_size != hidden_size
        self.key_map = nn.Linear(memory_size, hidden_size, bias=False) if needs_map else None
        self.combine = nn.Linear(memory_size + hidden_size, hidden_size, bias=False)  # W_c of Luong eq. 5

    @staticmethod
    def decoder_input_size(embedding_size, hidden_size, memory_size, input_feeding):
        return embedding_size + (hidden_size if input_feeding else 0)

    def keys(self, memory: Tensor) -> Tensor:
        return memory if self.key_map is None else self.key_map(memory)

    def prepare(self, memory, summary):
        width = self.output_size if self.input_feeding else 0
        return self.keys(memory), memory.new_zeros(memory.shape[0], width)

    def attend(self, query: Tensor, encoded: EncoderOutput) -> tuple[Tensor, Tensor]:
        """``(context (B, M), weights (B, S))`` of ``query (B, H)``."""
        return attend(torch.bmm(encoded.keys, query.unsqueeze(-1)).squeeze(-1), encoded)

    def before(self, embedded, feed, encoded):
        return (torch.cat([embedded, feed], dim=-1) if self.input_feeding else embedded), None

    def after(self, output, embedded, carried, feed, encoded):
        context, weights = self.attend(output, encoded)
        attentional = torch.tanh(self.combine(torch.cat([context, output], dim=-1)))  # h~_t
        return attentional, (attentional if self.input_feeding else feed), weights


VARIANTS: dict[str, type[Attention]] = {"bahdanau": BahdanauAttention, "luong_dot": LuongAttention,
                                        "luong_general": LuongAttention, "none": FixedContext}
ATTENTIONS = tuple(VARIANTS)


def build_attention(kind: str, embedding_size: int, hidden_size: int, memory_size: int,
                    attention_size: Optional[int], input_feeding: bool) -> Attention:
    """The :class:`Attention` variant named ``kind`` (one of :data:`ATTENTIONS`)."""
    if kind == "none":
        return FixedContext(embedding_size, hidden_size, memory_size)
    if kind == "bahdanau":
        return BahdanauAttention(embedding_size, hidden_size, memory_size, attention_size or hidden_size)
    return LuongAttention(embedding_size, hidden_size, memory_size, kind == "luong_general", input_feeding)


def check_options(embedding_size, attention, attention_size, input_feeding, dropout, teacher_forcing=1.0,
                  decoder_bidirectional=False) -> None:
    """The model's options (``task.*`` keys), before anything is built."""
    check(is_int(embedding_size) and embedding_size >= 1, "task.embedding_size", embedding_size, "an integer >= 1")
    check(attention in ATTENTIONS, "task.attention", attention, f"one of {', '.join(ATTENTIONS)}")
    check(attention_size is None or (is_int(attention_size) and attention_size >= 1), "task.attention_size",
          attention_size, "null (the decoder's hidden size) or an integer >= 1")
    check(isinstance(input_feeding, bool), "task.input_feeding", input_feeding, "true or false")
    check(isinstance(dropout, (int, float)) and 0 <= dropout < 1, "task.dropout", dropout, "a number in [0, 1)")
    check(isinstance(teacher_forcing, (int, float)) and 0 <= teacher_forcing <= 1, "task.teacher_forcing",
          teacher_forcing, "a probability in [0, 1]")
    check(decoder_bidirectional is False, "task.decoder_bidirectional", decoder_bidirectional,
          "false: the decoder generates left to right and cannot read words it has not produced yet "
          "(cell.bidirectional=true makes the encoder bidirectional)")


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
        check_options(embedding_size, attention, attention_size, input_feeding, dropout)
        self.src_embedding = nn.Embedding(src_vocab_size, embedding_size, padding_idx=0)
        self.tgt_embedding = nn.Embedding(tgt_vocab_size, embedding_size, padding_idx=0)
        self.dropout = nn.Dropout(dropout)
        self.encoder = make_stack(embedding_size)
        memory_size, hidden = self.encoder.output_size, self.encoder.hidden_size
        input_size = VARIANTS[attention].decoder_input_size(embedding_size, hidden, memory_size, input_feeding)
        self.decoder = make_stack(input_size, bidirectional=False)
        if self.decoder.bidirectional:
            raise ConfigError("the translation decoder must be unidirectional (it generates left to right), but the "
                              "stack factory built a bidirectional one: make_stack(input_size, bidirectional=False) "
                              "must return a one-way stack.")
        if self.decoder.num_layers != self.encoder.num_layers:
            raise ValueError(f"the decoder has {self.decoder.num_layers} layers and the encoder "
                             f"{self.encoder.num_layers}: the bridge maps layer to layer, so they must match")
        self.bridge = self._make_bridge()
        self.attention = build_attention(attention, embedding_size, hidden, memory_size, attention_size,
                                         input_feeding)
        self.out = nn.Linear(self.attention.output_size, tgt_vocab_size)

    def _make_bridge(self) -> nn.ModuleList:
        """One tanh(Linear) per decoder layer and state leaf, from the encoder layer's final
        state leaves (both directions concatenated). Leaf sizes are read per layer: a state
        may hold inputs (QRNN's window), whose size differs between the first layer and the rest."""
        def leaf_sizes(stack, layer: int) -> list[int]:
            cell = stack.cells[layer * stack.num_directions]
            return [leaf.shape[1:].numel() for leaf in state_leaves(cell.initial_state(1, "meta"))]

        directions = self.encoder.num_directions
        bridge = nn.ModuleList()
        for layer in range(self.decoder.num_layers):
            encoder_leaves, decoder_leaves = leaf_sizes(self.encoder, layer), leaf_sizes(self.decoder, layer)
            if len(encoder_leaves) != len(decoder_leaves):
                raise ValueError("encoder and decoder cells must have states of the same structure")
            bridge.append(nn.ModuleList(nn.Linear(directions * e, d) for e, d in zip(encoder_leaves, decoder_leaves)))
        return bridge

    # --- the interface of rnnbench.decoding: encode once, step per token ----------------------
    def encode(self, src: Tensor, src_lengths: Tensor) -> tuple[EncoderOutput, tuple]:
        """Run the encoder: what every step reads (:class:`EncoderOutput`) and the first decoder
        state ``(cell states per layer, feed)``."""
        memory, final_states = self.encoder(self.dropout(self.src_embedding(src)), lengths=src_lengths)
        mask = torch.arange(src.shape[1], device=src.device)[None, :] < src_lengths[:, None]
        keys, feed = self.attention.prepare(memory, self.encoder.final_output(memory, src_lengths))
        return EncoderOutput(memory, keys, mask), (self._bridge_states(final_states, memory), feed)

    def _bridge_states(self, final_states: tuple, memory: Tensor) -> tuple:
        states = []
        directions = self.encoder.num_directions
        for layer, maps in enumerate(self.bridge):
            per_direction = final_states[layer * directions:(layer + 1) * directions]
            leaves = [torch.cat([leaf.flatten(1) for leaf in group], dim=-1)
                      for group in zip(*(state_leaves(s) for s in per_direction))]
            template = self.decoder.cells[layer].initial_state(memory.shape[0], memory.device, memory.dtype)
            new = iter(torch.tanh(m(leaf)) for m, leaf in zip(maps, leaves))
            states.append(map_state(lambda t: next(new).view_as(t), template))
        return tuple(states)

    def step(self, tokens: Tensor, state, encoded: EncoderOutput):
        """One decoder step: ``tokens (B,)`` -> ``(logits (B, V), state, weights (B, S) or None)``."""
        features, state, weights = self.step_features(tokens, state, encoded)
        return self.out(self.dropout(features)), state, weights

    def step_features(self, tokens: Tensor, state, encoded: EncoderOutput):
        """One decoder step up to the output layer: ``(features, state, weights)``."""
        cell_states, feed = state
        embedded = self.dropout(self.tgt_embedding(tokens))
        x, carried = self.attention.before(embedded, feed, encoded)
        new_states = []
        for layer, cell in enumerate(self.decoder.cells):
            if layer > 0 and self.decoder.dropout > 0 and self.training:
                x = F.dropout(x, p=self.decoder.dropout, training=True)
            x, cell_state = cell.step(x, cell_states[layer])
            new_states.append(cell_state)
        features, feed, weights = self.attention.after(x, embedded, carried, feed, encoded)
        return features, (tuple(new_states), feed), weights

    # --- training ------------------------------------------------------------------------
    def forward(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor,
                teacher_forcing: float = 1.0) -> tuple[Tensor, Optional[Tensor]]:
        """Logits ``(B, T, V)`` for targets ``tgt_in`` (``<bos> y_1 ... y_{T-1}``) and the
        attention weights ``(B, T, S)`` (None without attention). With probability
        ``1 - teacher_forcing`` (per step, whole batch) a step reads the model's own
        previous prediction instead of the reference token. With full teacher forcing
        the output layer runs once over all steps (one large matmul)."""
        encoded, state = self.encode(src, src_lengths)
        features, logits, weights = [], [], []
        for gold in tgt_in.unbind(1):
            if logits and float(torch.rand(())) >= teacher_forcing:
                tokens = logits[-1].argmax(-1)
            else:
                tokens = gold
            step_features, state, step_weights = self.step_features(tokens, state, encoded)
            if teacher_forcing < 1.0:
                logits.append(self.out(self.dropout(step_features)))
            features.append(step_features)
            weights.append(step_weights)
        attention = None if weights[0] is None else torch.stack(weights, dim=1)
        if teacher_forcing < 1.0:
            return torch.stack(logits, dim=1), attention
        return self.out(self.dropout(torch.stack(features, dim=1))), attention
