"""Language modelling on real text (registry name ``lm``): word level (perplexity) or
character level (bits per character), truncated backpropagation through time.

The pipeline is that of pytorch/examples' word_language_model and of Zaremba,
Sutskever & Vinyals 2014, "Recurrent Neural Network Regularization"
(arXiv:1409.2329):

- the corpus (:mod:`rnnbench.corpora`) is one token stream per split; the training
  stream is cut into ``batch_size`` contiguous parallel streams (the tail that does
  not fill a row is dropped), the validation and test streams into
  ``eval_batch_size`` streams;
- windows of ``bptt`` steps are read left to right: the inputs are tokens
  ``i .. i+L-1`` of every stream, the targets tokens ``i+1 .. i+L`` (the last window
  is shorter); the recurrent state is carried from one window to the next and
  detached (truncated BPTT), and reset to zeros at the first window of every
  training epoch and of every evaluation pass;
- ``variable_bptt`` (Merity, Keskar & Socher 2017, "Regularizing and Optimizing LSTM
  Language Models", AWD-LSTM): each training window has length
  ``max(5, round_down(N(b, 5)))`` with ``b = bptt`` with probability 0.95, else
  ``bptt / 2``, drawn from the data seed and the epoch; AWD-LSTM rescales the
  learning rate by ``L / bptt`` for that step, here the loss is scaled by
  ``L / bptt`` instead (the same update for plain SGD, up to gradient clipping);
- evaluation covers the whole validation / test stream (up to ``eval_batch_size - 1``
  tail tokens that do not fill a row; the record's ``task_params`` give the number
  of scored tokens).

Model: embedding -> dropout -> cell stack -> dropout -> linear decoder (Zaremba et
al.'s dropout on the non-recurrent connections: the input and output dropout are
``task.dropout``, the dropout between stacked layers is ``cell.dropout``). With
``tie_weights`` the decoder reuses the embedding matrix (Press & Wolf 2017, Inan et
al. 2017). Initialisation as pytorch/examples: embedding and decoder weights
``U(-init_range, init_range)``, decoder bias 0; the cells keep their own
initialisation unless ``init_cells`` (then every cell parameter is also drawn from
``U(-init_range, init_range)``, as Zaremba et al. do for all parameters).

Loss: mean cross-entropy per target token, in nats (``loss``). Primary metric:
perplexity ``ppl = exp(loss)`` at word level, bits per character
``bpc = loss / ln 2`` at character level, both from the per-token mean over the
whole split (``metric_weight`` is the number of target tokens). Baselines: the
unigram model of the training counts (add-one smoothed) on the validation stream,
and the uniform model (perplexity = vocabulary size, ``log2 V`` bits).

The task is causal: a bidirectional cell would see the next token, and is refused.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, IterableDataset

from rnnbench.cell import map_state
from rnnbench.corpora import DATASETS, DEFAULT_SPLIT, Corpus, Vocabulary, check_dataset_options, load_corpus
from rnnbench.errors import ConfigError, check, is_int, is_number
from rnnbench.registry import register_task
from rnnbench.task import TRAIN_STREAM, StackFactory, Task, seeded_generator

VOCAB_FILE = "vocab.json"
SAMPLE_FILE = "sample.txt"
SAMPLE_TEMPERATURE = 0.8  # the run's own sample: a little below 1, fewer rare-token accidents than sampling as is


class LanguageModel(nn.Module):
    """``embedding -> dropout -> stack -> dropout -> decoder``; ``forward(ids, state)``
    returns the logits ``(B, T, V)`` and the stack's final state."""

    def __init__(self, make_stack: StackFactory, vocab_size: int, embedding_size: int, dropout: float,
                 tie_weights: bool, init_range: float, init_cells: bool):
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
            nn.init.zeros_(self.decoder.bias)
            if init_cells:
                for parameter in self.stack.parameters():
                    nn.init.uniform_(parameter, -init_range, init_range)

    def forward(self, ids: Tensor, state=None):
        y, state = self.stack(self.dropout(self.embedding(ids)), state)
        return self.decoder(self.dropout(y)), state


def batchify(stream: Tensor, num_streams: int) -> Tensor:
    """``(N,)`` -> ``(num_streams, N // num_streams)``: contiguous parallel streams, one
    per row (batch-first; the tail that does not fill a row is dropped)."""
    length = stream.numel() // num_streams
    return stream[: num_streams * length].view(num_streams, length)


def fixed_windows(length: int, bptt: int) -> list[tuple[int, int]]:
    """``(start, steps)`` of the windows over rows of ``length`` tokens (the last may be shorter)."""
    return [(i, min(bptt, length - 1 - i)) for i in range(0, length - 1, bptt)]


def variable_windows(length: int, bptt: int, generator: torch.Generator) -> list[tuple[int, int]]:
    """AWD-LSTM's windows: ``bptt`` (p = 0.95) or ``bptt/2`` as the mean of N(mean, 5), at least 5 steps."""
    windows, i = [], 0
    while i < length - 1:
        mean = bptt if float(torch.rand((), generator=generator)) < 0.95 else bptt / 2
        steps = max(5, int(mean + 5 * float(torch.randn((), generator=generator))))
        steps = min(steps, length - 1 - i)
        windows.append((i, steps))
        i += steps
    return windows


class Windows(IterableDataset):
    """BPTT windows ``(inputs, targets, first)`` over the rows of ``data`` ``(B, N)``;
    ``first`` is True at the first window of a pass (the carried state is reset there).

    Each iteration is one epoch; ``schedule(epoch)`` gives its windows, so a run's
    batches are a function of the epoch (and the data seed), and ``start_step`` resumes
    in the middle of any epoch.
    """

    def __init__(self, data: Tensor, schedule, start_step: int = 0, fixed_length: bool = True):
        self.data = data
        self.schedule = schedule
        self.fixed_length = fixed_length
        self.epoch, self.offset = 0, start_step
        while self.offset and self.offset >= len(schedule(self.epoch)):
            self.offset -= len(schedule(self.epoch))
            self.epoch += 1

    def __len__(self) -> int:
        if not self.fixed_length:
            raise TypeError("windows of variable length have no fixed count per epoch")
        return len(self.schedule(0))

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, bool]]:
        epoch, offset = self.epoch, self.offset
        self.epoch, self.offset = epoch + 1, 0
        windows = self.schedule(epoch)
        for k in range(offset, len(windows)):
            start, steps = windows[k]
            yield self.data[:, start:start + steps], self.data[:, start + 1:start + 1 + steps], k == 0


@register_task("lm")
class LMTask(Task):
    causal = True  # the target at step t is the input at step t+1: a backward direction would read it
    metric = "ppl"  # set per instance: "ppl" at word level, "bpc" at character level
    metric_mode = "min"

    def __init__(
        self,
        *,
        dataset: str = "demo",
        level: Optional[str] = None,
        data_dir: Optional[str] = None,
        files: Optional[Sequence[str]] = None,
        split: Sequence[float] = DEFAULT_SPLIT,
        max_vocab: Optional[int] = None,
        min_freq: int = 1,
        bptt: int = 35,
        variable_bptt: bool = False,
        batch_size: int = 20,
        eval_batch_size: int = 10,
        embedding_size: int = 200,
        dropout: float = 0.2,
        tie_weights: bool = False,
        init_range: float = 0.1,
        init_cells: bool = False,
        sample_length: int = 300,
        solved_threshold: Optional[float] = None,
    ):
        super().__init__(batch_size=batch_size, solved_threshold=solved_threshold)
        split = list(split) if isinstance(split, (list, tuple)) else split
        check_dataset_options(dataset, level, files, split)
        check(data_dir is None or isinstance(data_dir, str), "task.data_dir", data_dir,
              "null (RNNBENCH_DATA_DIR, then the cache, then a download) or a folder path")
        check(max_vocab is None or (is_int(max_vocab) and max_vocab >= 2), "task.max_vocab", max_vocab,
              "null (every token) or an integer >= 2")
        check(is_int(min_freq) and min_freq >= 1, "task.min_freq", min_freq, "an integer >= 1")
        check(is_int(bptt) and bptt >= 1, "task.bptt", bptt, "an integer >= 1")
        check(isinstance(variable_bptt, bool), "task.variable_bptt", variable_bptt, "true or false")
        check(is_int(eval_batch_size) and eval_batch_size >= 1, "task.eval_batch_size", eval_batch_size,
              "an integer >= 1")
        check(is_int(embedding_size) and embedding_size >= 1, "task.embedding_size", embedding_size,
              "an integer >= 1")
        check(is_number(dropout) and 0 <= dropout < 1,
              "task.dropout", dropout, "a number in [0, 1)")
        check(isinstance(tie_weights, bool), "task.tie_weights", tie_weights, "true or false")
        check(is_number(init_range) and init_range > 0,
              "task.init_range", init_range, "a number > 0 (0.1 as pytorch/examples and Zaremba et al.)")
        check(isinstance(init_cells, bool), "task.init_cells", init_cells, "true or false")
        check(is_int(sample_length) and sample_length >= 0, "task.sample_length", sample_length,
              "an integer >= 0 (0: no sample)")
        self.dataset = dataset
        self.level = level or DATASETS[dataset].levels[0]
        self.data_dir = data_dir
        self.files = files
        self.split = split
        self.max_vocab = max_vocab
        self.min_freq = min_freq
        self.bptt = bptt
        self.variable_bptt = variable_bptt
        self.eval_batch_size = eval_batch_size
        self.embedding_size = embedding_size
        self.dropout = float(dropout)
        self.tie_weights = tie_weights
        self.init_range = float(init_range)
        self.init_cells = init_cells
        self.sample_length = sample_length
        self.metric = "bpc" if self.level == "char" else "ppl"
        self._vocab: Optional[Vocabulary] = None  # set from a run's vocab.json to rebuild its model
        self._states: dict[bool, object] = {}  # carried state, keyed by model.training (train / eval)

    # --- data ---------------------------------------------------------------------------
    @functools.cached_property
    def corpus(self) -> Corpus:
        return load_corpus(self.dataset, self.level, data_dir=self.data_dir, files=self.files, split=self.split,
                           max_vocab=self.max_vocab, min_freq=self.min_freq)

    @property
    def vocab(self) -> Vocabulary:
        return self._vocab if self._vocab is not None else self.corpus.vocab

    def use_vocabulary(self, vocab: Vocabulary) -> None:
        """Build models for ``vocab`` (a trained run's) without reading the corpus."""
        self._vocab = vocab

    def _rows(self, split: str, num_streams: int) -> Tensor:
        rows = batchify(self.corpus.split(split), num_streams)
        if rows.shape[1] < 2:
            raise ConfigError(f"the {split} part of task.dataset={self.dataset!r} ({self.corpus.split(split).numel()} "
                              f"tokens) is too short for {num_streams} parallel streams; lower task.batch_size / "
                              f"task.eval_batch_size.")
        return rows

    def train_dataloader(self, data_seed: int, rank: int = 0, world_size: int = 1, start_step: int = 0,
                         num_batches: Optional[int] = None):
        # batch_size streams per rank; rank r reads streams r*B .. (r+1)*B-1 of the
        # batch_size * world_size streams of the training text (DDP splits the text).
        rows = self._rows("train", self.batch_size * world_size)[rank * self.batch_size:(rank + 1) * self.batch_size]
        length = rows.shape[1]
        if self.variable_bptt:
            @functools.lru_cache(maxsize=2)
            def schedule(epoch: int):
                return variable_windows(length, self.bptt, seeded_generator(data_seed, TRAIN_STREAM, epoch))
        else:
            windows = fixed_windows(length, self.bptt)

            def schedule(epoch: int):
                return windows
        return DataLoader(Windows(rows, schedule, start_step, fixed_length=not self.variable_bptt), batch_size=None)

    def _eval_loader(self, split: str) -> DataLoader:
        # Under DDP every rank evaluates the whole split: the carried state needs the
        # windows in order, and the synced means of equal values are those values.
        rows = self._rows(split, self.eval_batch_size)
        windows = fixed_windows(rows.shape[1], self.bptt)
        return DataLoader(Windows(rows, lambda epoch: windows), batch_size=None)

    def val_dataloader(self, data_seed: int):
        return self._eval_loader("valid")

    def test_dataloader(self, data_seed: int):
        return self._eval_loader("test")

    # --- record -------------------------------------------------------------------------
    def key_parameters(self) -> dict:
        scored = {f"{split}_targets": self.eval_batch_size * (self._rows(split, self.eval_batch_size).shape[1] - 1)
                  for split in ("valid", "test")}
        return {"dataset": self.dataset, "level": self.level, "vocab_size": len(self.vocab), "bptt": self.bptt,
                "batch_size": self.batch_size, "train_tokens": self.corpus.train.numel(), **scored}

    def from_loss(self, loss):
        """The primary metric (``ppl`` or ``bpc``) of a mean loss in nats (a float or a tensor)."""
        if self.metric == "bpc":
            return loss / math.log(2)
        return loss.exp() if isinstance(loss, Tensor) else math.exp(loss)

    def baseline(self) -> dict[str, float]:
        vocab_size = len(self.vocab)
        counts = torch.bincount(self.corpus.train, minlength=vocab_size).double() + 1  # add-one smoothing
        log_probs = (counts / counts.sum()).log()
        unigram = float(-log_probs[self.corpus.valid].mean())
        return {"loss": unigram, self.metric: self.from_loss(unigram),
                f"uniform_{self.metric}": self.from_loss(math.log(vocab_size))}

    # --- model, loss, metrics -------------------------------------------------------------
    def build_model(self, make_stack: StackFactory) -> nn.Module:
        return LanguageModel(make_stack, len(self.vocab), self.embedding_size, self.dropout, self.tie_weights,
                             self.init_range, self.init_cells)

    def loss_and_metrics(self, model: nn.Module, batch) -> tuple[Tensor, dict[str, Tensor]]:
        inputs, targets, first = batch
        state = None if first else self._states.get(model.training)
        logits, state = model(inputs, state)
        self._states[model.training] = map_state(Tensor.detach, state)  # truncated BPTT: no gradient across windows
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        metrics = {"loss": loss.detach()}
        if model.training:
            # Per-window value for the training curve; validation/test compute it from
            # the per-token mean over the whole split (eval_epoch_end).
            metrics[self.metric] = self.from_loss(loss.detach())
            if self.variable_bptt:
                loss = loss * inputs.shape[1] / self.bptt
        return loss, metrics

    def count_tokens(self, batch) -> int:
        return batch[0].numel()

    def metric_weight(self, batch) -> int:
        return batch[1].numel()  # target tokens: the epoch loss is the mean over every scored token

    def eval_epoch_end(self, stage: str, means: dict[str, float]) -> dict[str, float]:
        return {self.metric: self.from_loss(means["loss"])} if "loss" in means else {}

    def load_artifacts(self, run_dir) -> None:
        """A finished run's vocabulary (``vocab.json``): its model can be rebuilt without the corpus."""
        path = Path(run_dir) / VOCAB_FILE
        if not path.is_file():
            raise ConfigError(f"{run_dir} has no {VOCAB_FILE}: give the directory of a finished `task=lm` run "
                              f"(it writes {VOCAB_FILE} after testing).")
        self.use_vocabulary(Vocabulary.load(path))

    def generate(self, model: nn.Module, prompt: str, length: int, temperature: float,
                 generator: torch.Generator) -> str:
        check(is_int(length) and length >= 0, "--length", length, "an integer >= 0")
        return sample(model, self.vocab, prompt, length, temperature, generator)

    def write_artifacts(self, model: nn.Module, run_dir, data_seed: int) -> dict:
        run_dir = Path(run_dir)
        self.vocab.save(run_dir / VOCAB_FILE)
        written = {"vocab_file": VOCAB_FILE}
        if self.sample_length:
            prompt = self.vocab.decode(self.corpus.test[:1].tolist())
            text = sample(model, self.vocab, prompt, self.sample_length, SAMPLE_TEMPERATURE,
                          seeded_generator(data_seed, 0))
            (run_dir / SAMPLE_FILE).write_text(text + "\n", encoding="utf-8")
            written.update(sample_file=SAMPLE_FILE, sample_temperature=SAMPLE_TEMPERATURE)
        return written


@torch.no_grad()
def sample(model: LanguageModel, vocab: Vocabulary, prompt: str, length: int, temperature: float,
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


def generate_from_run(run_dir: str | Path, prompt: str = "", length: int = 200, temperature: float = 1.0,
                      seed: int = 0) -> str:
    """Sample from a finished ``lm`` run (:func:`rnnbench.experiment.load_run`: its model from
    ``config.yaml`` and ``vocab.json``, no corpus needed, the weights of ``best.ckpt``), on the CPU."""
    from rnnbench.experiment import load_run

    experiment = load_run(run_dir)
    return experiment.task.generate(experiment.model, prompt, length, temperature, seeded_generator(seed))
