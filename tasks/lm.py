"""Language modelling on real text (registry name ``lm``): word level (perplexity) or
character level (bits per character), truncated backpropagation through time.

The pipeline is that of pytorch/examples' word_language_model and of Zaremba,
Sutskever & Vinyals 2014, "Recurrent Neural Network Regularization"
(arXiv:1409.2329):

- the corpus (:mod:`rnnbench.corpora`) is one token stream per split; the training
  stream is cut into ``batch_size`` contiguous parallel streams per rank, the
  validation and test streams into ``eval_batch_size`` streams, read in windows of
  ``bptt`` steps (:mod:`rnnbench.bptt`); the recurrent state is carried from one
  window to the next and detached (truncated BPTT), and reset to zeros at the first
  window of every training epoch and of every evaluation pass;
- ``drop_last_window``: a training epoch is only the full windows (Zaremba et al.'s
  ``main.lua``: 2,323 windows of 20 per PTB epoch), not also the shorter last one;
- ``variable_bptt`` (AWD-LSTM, Merity et al. 2017): random window lengths; AWD-LSTM
  rescales the learning rate by ``L / bptt`` for a window of ``L`` steps, here the loss
  is scaled by ``L / bptt`` instead (the same update for plain SGD, up to clipping);
- evaluation covers the whole validation / test stream (up to ``eval_batch_size - 1``
  tail tokens that do not fill a row; the record's ``task_params`` give the number
  of scored tokens).

Model (:mod:`rnnbench.language_model`): embedding -> dropout -> cell stack -> dropout
-> linear decoder; the input and output dropout are ``task.dropout``, the dropout
between stacked layers is ``cell.dropout``; ``tie_weights``, ``init_range``,
``init_cells`` and ``uniform_decoder_bias`` set weight tying and the initialisation.

Loss: mean cross-entropy per target token, in nats (``loss``). Primary metric:
perplexity ``ppl = exp(loss)`` at word level, bits per character
``bpc = loss / ln 2`` at character level, both from the per-token mean over the
whole split (``metric_weight`` is the number of target tokens). Baselines: the
unigram model of the training counts (add-one smoothed) on the validation stream,
and the uniform model (perplexity = vocabulary size, ``log2 V`` bits).

After testing, the run directory gets ``vocab.json`` (the model can be rebuilt from
it and ``config.yaml`` without the corpus: :meth:`LMTask.load_artifacts`,
``rnnbench generate RUN_DIR``) and ``sample.txt``. The task is causal: a
bidirectional cell would see the next token, and is refused.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from rnnbench.bptt import Windows, batchify, fixed_windows, training_schedule
from rnnbench.cell import map_state
from rnnbench.corpora import DATASETS, DEFAULT_SPLIT, Corpus, TextVocabulary, check_dataset_options, load_corpus
from rnnbench.errors import ConfigError, check, is_int
from rnnbench.language_model import LanguageModel, sample
from rnnbench.language_model import check_options as check_model_options
from rnnbench.registry import register_task
from rnnbench.task import TRAIN_STREAM, StackFactory, Task, seeded_generator

VOCAB_FILE = "vocab.json"
SAMPLE_FILE = "sample.txt"
SAMPLE_TEMPERATURE = 0.8  # the run's own sample: a little below 1, fewer rare-token accidents than sampling as is


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
        drop_last_window: bool = False,
        batch_size: int = 20,
        eval_batch_size: int = 10,
        embedding_size: int = 200,
        dropout: float = 0.2,
        tie_weights: bool = False,
        init_range: float = 0.1,
        init_cells: bool = False,
        uniform_decoder_bias: bool = False,
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
        check(isinstance(drop_last_window, bool), "task.drop_last_window", drop_last_window, "true or false")
        check(is_int(eval_batch_size) and eval_batch_size >= 1, "task.eval_batch_size", eval_batch_size,
              "an integer >= 1")
        check_model_options(embedding_size, dropout, tie_weights, init_range, init_cells, uniform_decoder_bias)
        check(is_int(sample_length) and sample_length >= 0, "task.sample_length", sample_length,
              "an integer >= 0 (0: no sample)")
        self.dataset, self.level = dataset, level or DATASETS[dataset].levels[0]
        self.data_dir, self.files, self.split = data_dir, files, split
        self.max_vocab, self.min_freq = max_vocab, min_freq
        self.bptt, self.variable_bptt, self.drop_last_window = bptt, variable_bptt, drop_last_window
        self.eval_batch_size, self.embedding_size, self.dropout = eval_batch_size, embedding_size, float(dropout)
        self.tie_weights, self.init_range = tie_weights, float(init_range)
        self.init_cells, self.uniform_decoder_bias = init_cells, uniform_decoder_bias
        self.sample_length = sample_length
        self.metric = "bpc" if self.level == "char" else "ppl"
        self._vocab: Optional[TextVocabulary] = None  # set from a run's vocab.json to rebuild its model
        self._states: dict[bool, object] = {}  # carried state, keyed by model.training (train / eval)

    # --- data ---------------------------------------------------------------------------
    @functools.cached_property
    def corpus(self) -> Corpus:
        return load_corpus(self.dataset, self.level, data_dir=self.data_dir, files=self.files, split=self.split,
                           max_vocab=self.max_vocab, min_freq=self.min_freq)

    @property
    def vocab(self) -> TextVocabulary:
        return self._vocab if self._vocab is not None else self.corpus.vocab

    def use_vocabulary(self, vocab: TextVocabulary) -> None:
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
        schedule = training_schedule(rows.shape[1], self.bptt, self.variable_bptt, self.drop_last_window,
                                     lambda epoch: seeded_generator(data_seed, TRAIN_STREAM, epoch))
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
                             self.init_range, self.init_cells, self.uniform_decoder_bias)

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
        self.use_vocabulary(TextVocabulary.load(path))

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
