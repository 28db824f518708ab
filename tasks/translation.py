"""Translation with attention (registry name ``translation``).

An encoder–decoder (:class:`rnnbench.seq2seq.Seq2Seq`) built from the cell under
test: the encoder is the configured stack (any cell, depth, direction), the decoder
a unidirectional stack of the same cell with ``bahdanau``, ``luong_dot``,
``luong_general`` or no attention (``none``, the fixed context of Cho et al. 2014).
Data (``dataset``, :class:`rnnbench.parallel_data.ParallelCorpus`): ``synthetic`` dates
in words -> ISO dates (the default: no download, seconds on a CPU;
:mod:`rnnbench.dates`), ``multi30k`` (default de -> en), or a ``tsv`` pair file
(Tatoeba/Anki style); see :mod:`rnnbench.parallel_data` for formats, tokenisation
and vocabularies.

Training: cross-entropy over target tokens (padding ignored), teacher forcing with
probability ``teacher_forcing`` per step. Metrics:

- ``loss`` and ``token_acc``: teacher-forced, means over target tokens (the batch
  weight is its number of target tokens);
- ``bleu`` (the task metric, higher is better), ``chrf`` and ``exact_match``:
  corpus scores of decoded output (:mod:`rnnbench.translation_metrics`). Validation
  decodes greedily (fast, and it selects the checkpoint); the test set, scored with
  the best-validation checkpoint, is decoded with beam search (``beam_size``;
  :mod:`rnnbench.decoding`). With ``lowercase: true`` the model sees lower-cased text,
  so BLEU is computed case-insensitively. Sentences are decoded only during an
  evaluation pass (between ``eval_epoch_start`` and ``eval_epoch_end``), not when the
  diagnostics run the loss on their batch.

The run record's ``param_groups`` count the encoder, decoder, bridge, attention,
embeddings and output layer separately (:meth:`TranslationTask.parameter_groups`: they
partition the model). After testing, the run directory gets ``vocab.json`` (both
vocabularies), ``test_translations.tsv`` (source, reference, hypothesis), and
``attention/`` (heat maps ``val_<i>.png`` and ``attention.json`` of the weights for the
first ``attention_maps`` validation sentences, decoded greedily;
:mod:`rnnbench.translation_files`); the record gets the sacrebleu signatures and
``bleu_by_source_length`` (test BLEU per bucket of ``bucket_width`` source tokens).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from rnnbench import translation_files, translation_metrics
from rnnbench.decoding import SearchSettings
from rnnbench.errors import check, is_int
from rnnbench.fixed_data import process_rank
from rnnbench.parallel_data import BOS, EOS, ParallelCorpus
from rnnbench.registry import register_task
from rnnbench.seq2seq import Seq2Seq
from rnnbench.seq2seq import check_options as check_model_options
from rnnbench.task import Task


@register_task("translation")
class TranslationTask(Task):
    # The decoder is causal by construction (it is always unidirectional); the encoder
    # reads a whole source sentence, so a bidirectional encoder is legitimate.
    causal = False
    metric = "bleu"
    metric_mode = "max"

    def __init__(
        self,
        *,
        dataset: str = "synthetic",
        source_lang: str = "de",
        target_lang: str = "en",
        path: Optional[str] = None,
        reverse: bool = False,
        header_lines: int = 0,
        line_endings: str = "auto",
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        data_dir: Optional[str] = None,
        synthetic_train_size: int = 20000,
        synthetic_val_size: int = 500,
        synthetic_test_size: int = 500,
        lowercase: bool = True,
        min_freq: int = 1,
        max_length: int = 50,
        embedding_size: int = 64,
        attention: str = "bahdanau",
        attention_size: Optional[int] = None,
        input_feeding: bool = True,
        dropout: float = 0.1,
        teacher_forcing: float = 1.0,
        decoder_bidirectional: bool = False,
        beam_size: int = 5,
        length_penalty: float = 0.6,
        max_len_a: float = 1.5,
        max_len_b: int = 10,
        bucket_width: int = 5,
        attention_maps: int = 4,
        batch_size: int = 64,
        solved_threshold: Optional[float] = 95.0,
    ):
        super().__init__(batch_size=batch_size, solved_threshold=solved_threshold)
        self.corpus = ParallelCorpus(
            dataset, source_lang=source_lang, target_lang=target_lang, path=path, reverse=reverse,
            header_lines=header_lines, line_endings=line_endings, val_fraction=val_fraction,
            test_fraction=test_fraction, split_seed=split_seed, data_dir=data_dir, lowercase=lowercase,
            synthetic_sizes={"train": synthetic_train_size, "val": synthetic_val_size, "test": synthetic_test_size},
            min_freq=min_freq, max_length=max_length)
        check_model_options(embedding_size, attention, attention_size, input_feeding, dropout, teacher_forcing,
                            decoder_bidirectional)
        self.decoding = SearchSettings(beam_size, length_penalty, max_len_a, max_len_b)
        check(is_int(bucket_width) and bucket_width >= 1, "task.bucket_width", bucket_width, "an integer >= 1")
        check(is_int(attention_maps) and attention_maps >= 0, "task.attention_maps", attention_maps,
              "an integer >= 0")
        self.embedding_size, self.attention, self.attention_size = embedding_size, attention, attention_size
        self.input_feeding, self.dropout, self.teacher_forcing = input_feeding, float(dropout), float(teacher_forcing)
        self.bucket_width, self.attention_maps = bucket_width, attention_maps
        self._stage: Optional[str] = None  # "val" / "test" during an evaluation pass: batches are decoded
        self._eval_data_seed = 0
        self._hypotheses: dict[int, list[int]] = {}  # sentence index -> token ids, this pass
        self._test_hypotheses: dict[int, list[int]] = {}  # those of the last test pass
        self._signatures: dict[str, str] = {}

    # --- what the run record says --------------------------------------------------------
    def key_parameters(self) -> dict:
        return {"dataset": self.corpus.dataset, "data": self.corpus.describe(), "attention": self.attention,
                "input_feeding": self.input_feeding and self.attention.startswith("luong"),
                "beam_size": self.decoding.beam_size}

    def parameter_groups(self, model: Seq2Seq) -> dict[str, nn.Module]:
        """Encoder and decoder stacks, the bridge between them, the attention (with its
        initial query or combination layer), both embeddings and the output layer: a
        partition of the model's parameters."""
        return {"encoder": model.encoder, "decoder": model.decoder, "bridge": model.bridge,
                "attention": model.attention, "embeddings": nn.ModuleList([model.src_embedding, model.tgt_embedding]),
                "output": model.out}

    # --- data ---------------------------------------------------------------------------------
    def train_dataloader(self, data_seed: int, rank: int = 0, world_size: int = 1, start_step: int = 0,
                         num_batches: Optional[int] = None):
        return DataLoader(self.corpus.training_batches(data_seed, self.batch_size, rank, world_size, start_step,
                                                       num_batches), batch_size=None)

    def _eval_loader(self, split: str, data_seed: int) -> DataLoader:
        self._eval_data_seed = data_seed  # whose references eval_epoch_end scores against
        return DataLoader(self.corpus.evaluation_batches(split, data_seed, self.batch_size), batch_size=None)

    def val_dataloader(self, data_seed: int):
        return self._eval_loader("val", data_seed)

    def test_dataloader(self, data_seed: int):
        return self._eval_loader("test", data_seed)

    def diagnostic_batch(self, data_seed: int, size: int):
        """The first ``size`` test pairs (in corpus order, so of varied lengths), padded to the
        longest of them: no step of the batch is padding for every pair."""
        return self.corpus.first_pairs("test", data_seed, size)

    def count_tokens(self, batch) -> int:
        """Source tokens (with ``<eos>``) plus target tokens predicted (with ``<eos>``)."""
        src, src_lengths, tgt, _ = batch
        return int(src_lengths.sum()) + int((tgt[:, 1:] != 0).sum())

    def metric_weight(self, batch) -> int:
        return int((batch[2][:, 1:] != 0).sum())

    # --- model, loss, decoding ------------------------------------------------------------------
    def build_model(self, make_stack) -> Seq2Seq:
        src_vocab, tgt_vocab = self.corpus.vocabularies()
        return Seq2Seq(make_stack, len(src_vocab), len(tgt_vocab), embedding_size=self.embedding_size,
                       attention=self.attention, attention_size=self.attention_size,
                       input_feeding=self.input_feeding, dropout=self.dropout)

    def decode(self, model: Seq2Seq, src: Tensor, src_lengths: Tensor, beam_size: Optional[int] = None):
        """Token ids ``(B, L)`` of the translations (:mod:`rnnbench.decoding`) and, when greedy
        (``beam_size`` 1), the attention weights ``(B, L, S)`` (else None)."""
        tgt_vocab = self.corpus.vocabularies()[1]
        return self.decoding.search(model, src, src_lengths, tgt_vocab.stoi[BOS], tgt_vocab.stoi[EOS], beam_size)

    def loss_and_metrics(self, model, batch) -> tuple[Tensor, dict[str, Tensor]]:
        src, src_lengths, tgt, index = batch
        tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
        ratio = self.teacher_forcing if model.training else 1.0
        logits, _ = model(src, src_lengths, tgt_in, teacher_forcing=ratio)
        loss = F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=0)
        real = tgt_out != 0
        token_acc = ((logits.argmax(-1) == tgt_out) & real).sum() / real.sum()
        if not model.training and self._stage is not None:
            tokens, _ = self.decode(model, src, src_lengths, None if self._stage == "test" else 1)
            self._hypotheses.update(zip(index.tolist(), tokens.tolist()))
        return loss, {"loss": loss.detach(), "token_acc": token_acc.detach()}

    # --- corpus-level evaluation -----------------------------------------------------------------
    def eval_epoch_start(self, stage: str) -> None:
        self._stage = stage
        self._hypotheses = {}

    def eval_epoch_end(self, stage: str, means: dict[str, float]) -> dict[str, float]:
        self._stage = None
        hypotheses = self._hypotheses
        world_size = process_rank()[1]
        if world_size > 1:
            # Each rank decoded its share of the batches: merge them (by sentence index,
            # so a sampler's padding duplicates count once).
            gathered: list = [None] * world_size
            dist.all_gather_object(gathered, hypotheses)
            hypotheses = {k: v for part in gathered for k, v in part.items()}
        if not hypotheses:
            return {}
        if stage == "test":
            self._test_hypotheses = dict(hypotheses)
        return self.score(stage, hypotheses, self._eval_data_seed)

    def score(self, split: str, hypotheses: dict[int, list[int]], data_seed: int) -> dict:
        """BLEU, chrF and exact match of ``{sentence index: token ids}`` against ``split``
        (:mod:`rnnbench.translation_metrics`); keeps sacrebleu's signatures for the record."""
        scores, self._signatures = translation_metrics.score_split(
            hypotheses, self.corpus.splits(data_seed)[split], self.corpus.vocabularies()[1], self.corpus.detokenize,
            self.corpus.lowercase)
        return scores

    # --- artefacts ---------------------------------------------------------------------------------
    def write_artifacts(self, model, run_dir, data_seed: int) -> dict:
        run_dir = Path(run_dir)
        src_vocab, tgt_vocab = self.corpus.vocabularies()
        record: dict = {"vocab_sizes": translation_files.write_vocabularies(run_dir, src_vocab, tgt_vocab)}
        if self._test_hypotheses:
            test = self.corpus.splits(data_seed)["test"]
            order = sorted(self._test_hypotheses)
            texts = [self.corpus.detokenize(tgt_vocab.decode(self._test_hypotheses[i])) for i in order]
            references = [test.references[i] for i in order]
            record["test_translations"] = translation_files.write_translations(
                run_dir, [test.sources[i] for i in order], references, texts)
            record["bleu_by_source_length"] = translation_metrics.bleu_by_source_length(
                texts, references, [len(test.src[i]) - 1 for i in order],  # source tokens without <eos>
                self.bucket_width, self.corpus.lowercase)
            record.update(self._signatures)
        record["attention_maps"] = self._write_attention_maps(model, run_dir, data_seed)
        return record

    def _write_attention_maps(self, model: Seq2Seq, run_dir: Path, data_seed: int) -> Optional[str]:
        """Greedy translations of the first ``attention_maps`` validation sentences, with their
        attention weights (:mod:`rnnbench.translation_files`); None without attention."""
        if self.attention == "none" or self.attention_maps == 0:
            return None
        src, src_lengths, _, _ = self.corpus.first_pairs("val", data_seed, self.attention_maps)
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        tokens, weights = self.decode(model, src.to(device), src_lengths.to(device), beam_size=1)
        model.train(was_training)
        vocabularies = self.corpus.vocabularies()
        references = self.corpus.splits(data_seed)["val"].references
        entries = translation_files.sentence_maps(src, src_lengths, tokens, weights, references, *vocabularies)
        return translation_files.write_maps(run_dir, self.attention, entries)
