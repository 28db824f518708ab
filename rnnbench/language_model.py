"""The language model around a cell stack, and sampling text from it.

``embedding -> dropout -> cell stack -> dropout -> linear decoder`` (Zaremba, Sutskever
& Vinyals 2014, arXiv:1409.2329: dropout on the non-recurrent connections; the dropout
between stacked layers is the stack's own). With ``tie_weights`` the decoder reuses the
embedding matrix (Press & Wolf 2017, Inan et al. 2017).

Initialisation: as pytorch/examples' word_language_model by default, embedding and
decoder weights ``U(-init_range, init_range)``, decoder bias 0, the cells keep their
own initialisation. ``init_cells`` also draws every cell parameter from
``U(-init_range, init_range)`` and ``uniform_decoder_bias`` the decoder bias: both
together draw every parameter from that distribution, as Zaremba et al.'s ``main.lua``
(``module:getParameters():uniform(-init_weight, init_weight)``) and Karpathy's
char-rnn (``params:uniform(-0.08, 0.08)``) do.

:func:`sample` draws text from a trained model (``rnnbench generate RUN_DIR``, through
:func:`rnnbench.experiment.load_run` and the task's ``generate``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .corpora import TextVocabulary
from .errors import ConfigError, check, is_int, is_number
from .task import StackFactory


def check_options(embedding_size, dropout, tie_weights, init_range, init_cells, uniform_decoder_bias) -> None:
    """The model's options (``task.*`` keys), before anything is read or built."""
    check(is_int(embedding_size) and embedding_size >= 1, "task.embedding_size", embedding_size, "an integer >= 1")
    check(is_number(dropout) and 0 <= dropout < 1, "task.dropout", dropout, "a number in [0, 1)")
    check(isinstance(tie_weights, bool), "task.tie_weights", tie_weights, "true or false")
    check(is_number(init_range) and init_range > 0,
          "task.init_range", init_range, "a number > 0 (0.1 as pytorch/examples and Zaremba et al.)")
    check(isinstance(init_cells, bool), "task.init_cells", init_cells, "true or false")
    check(isinstance(uniform_decoder_bias, bool), "task.uniform_decoder_bias", uniform_decoder_bias, "true or false")


class LanguageModel(nn.Module):
    """``embedding -> dropout -> stack -> dropout -> decoder``; ``forward(ids, state)``
    returns the logits ``(B, T, V)`` and the stack's final state."""

    def __init__(self, make_stack: StackFactory, vocab_size: int, embedding_size: int, dropout: float,
                 tie_weights: bool, init_range: float, init_cells: bool, uniform_decoder_bias: bool = False):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_size)
        self.stack = make_stack(embedding_size)
        self.dropout = nn.Dropout(dropout)
        self.decoder = nn.Linear(self.stack.output_size, vocab_size)
        if tie_weights:
            if self.stack.output_size != embedding_size:
                raise ConfigError(
                    f"task.tie_weights=true needs task.embedding_size ({embedding_size}) equal to the cell "
                    f"stack's output size ({self.stack.output_size} = cell.hidden_size x directions): the decoder "
                    f"reuses the embedding matrix. Set task.embedding_size={self.stack.output_size} or "
                    f"task.tie_weights=false.")
            self.decoder.weight = self.embedding.weight
        with torch.no_grad():
            nn.init.uniform_(self.embedding.weight, -init_range, init_range)
            nn.init.uniform_(self.decoder.weight, -init_range, init_range)
            if uniform_decoder_bias:
                nn.init.uniform_(self.decoder.bias, -init_range, init_range)
            else:
                nn.init.zeros_(self.decoder.bias)
            if init_cells:
                for parameter in self.stack.parameters():
                    nn.init.uniform_(parameter, -init_range, init_range)

    def forward(self, ids: Tensor, state=None):
        y, state = self.stack(self.dropout(self.embedding(ids)), state)
        return self.decoder(self.dropout(y)), state


@torch.no_grad()
def sample(model: LanguageModel, vocab: TextVocabulary, prompt: str, length: int, temperature: float,
           generator: torch.Generator) -> str:
    """The prompt followed by ``length`` tokens drawn from ``softmax(logits / temperature)``.

    The prompt is read in one pass (its final state starts the sampling); an empty
    prompt starts from ``<eos>`` if the vocabulary has it, else from the first token.
    """
    check(isinstance(temperature, (int, float)) and temperature > 0, "--temperature", temperature, "a number > 0")
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        tokens = vocab.tokenize(prompt)
        ids = vocab.encode(tokens) if tokens else torch.tensor([vocab.index.get("<eos>", 0)])
        logits, state = model(ids.view(1, -1).to(device))
        drawn = []
        for _ in range(length):
            probs = F.softmax(logits[0, -1].double().cpu() / temperature, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=generator))
            drawn.append(token)
            logits, state = model(torch.tensor([[token]], device=device), state)
    finally:
        model.train(was_training)
    separator = vocab.join if prompt and drawn else ""
    return prompt + separator + vocab.decode(drawn)
