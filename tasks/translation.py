"""Translation with attention (registry name ``translation``).

An encoder–decoder (:class:`rnnbench.seq2seq.Seq2Seq`) built from the cell under
test: the encoder is the configured stack (any cell, depth, direction), the decoder
a unidirectional stack of the same cell with ``bahdanau``, ``luong_dot``,
``luong_general`` or no attention (``none``, the fixed context of Cho et al. 2014).
Data (``dataset``): ``synthetic`` dates in words -> ISO dates (the default: no
download, seconds on a CPU), ``multi30k`` (default de -> en), or a ``tsv`` pair file
(Tatoeba/Anki style); see :mod:`rnnbench.parallel_data` for formats, tokenisation
and vocabularies.

Training: cross-entropy over target tokens (padding ignored), teacher forcing with
probability ``teacher_forcing`` per step. Metrics:

- ``loss`` and ``token_acc``: teacher-forced, means over target tokens (the batch
  weight is its number of target tokens);
- ``bleu`` (the task metric, higher is better), ``chrf`` and ``exact_match``:
  corpus scores of decoded output, detokenised, against the raw references with
  sacrebleu (Post 2018, arXiv:1804.08771; BLEU: Papineni et al. 2002; chrF: Popović
  2015). Validation decodes greedily (fast, and it selects the checkpoint); the test
  set, scored with the best-validation checkpoint, is decoded with beam search
  (``beam_size``). With ``lowercase: true`` the model sees lower-cased text, so BLEU
  is computed case-insensitively (sacrebleu ``lowercase=True``, ``c:lc`` in its
  signature).

After testing, the run directory gets ``vocab.json`` (both vocabularies),
``test_translations.tsv`` (source, reference, hypothesis), and ``attention/`` (heat
maps ``val_<i>.png`` and ``attention.json`` of the weights for the first
``attention_maps`` validation sentences, decoded greedily); the run record gets the
sacrebleu signatures and ``bleu_by_source_length`` (test BLEU per bucket of
``bucket_width`` source tokens).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import DataLoader

from rnnbench import parallel_data as pd
from rnnbench.errors import check, is_int
from rnnbench.files import write_json_atomic
from rnnbench.registry import register_task
from rnnbench.seq2seq import ATTENTIONS, Seq2Seq
from rnnbench.task import FIXED_TRAIN_STREAM, TEST_STREAM, TRAIN_STREAM, VAL_STREAM, Task, seeded_generator

DATASETS = ("synthetic", "multi30k", "tsv")


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
        check(dataset in DATASETS, "task.dataset", dataset, f"one of {', '.join(DATASETS)}")
        if dataset == "multi30k":
            for key, lang in (("task.source_lang", source_lang), ("task.target_lang", target_lang)):
                check(lang in pd.MULTI30K_LANGUAGES, key, lang, f"one of {', '.join(pd.MULTI30K_LANGUAGES)}")
            check(source_lang != target_lang, "task.target_lang", target_lang,
                  f"a language other than task.source_lang ({source_lang})")
        if dataset == "tsv":
            check(isinstance(path, str) and path != "", "task.path", path,
                  "the path of a tab-separated pair file (source<TAB>target per line) for task.dataset=tsv")
        check(isinstance(reverse, bool), "task.reverse", reverse, "true or false")
        check(is_int(header_lines) and header_lines >= 0, "task.header_lines", header_lines, "an integer >= 0")
        check(line_endings in pd.LINE_ENDINGS, "task.line_endings", line_endings,
              f"one of {', '.join(pd.LINE_ENDINGS)}")
        for key, value in (("task.val_fraction", val_fraction), ("task.test_fraction", test_fraction)):
            check(isinstance(value, (int, float)) and 0 < value < 0.5, key, value, "a number in (0, 0.5)")
        check(is_int(split_seed) and split_seed >= 0, "task.split_seed", split_seed, "an integer >= 0")
        for key, value in (("task.synthetic_train_size", synthetic_train_size),
                           ("task.synthetic_val_size", synthetic_val_size),
                           ("task.synthetic_test_size", synthetic_test_size)):
            check(is_int(value) and 1 <= value <= 50000, key, value, "an integer in [1, 50000]")
        check(isinstance(lowercase, bool), "task.lowercase", lowercase, "true or false")
        check(is_int(min_freq) and min_freq >= 1, "task.min_freq", min_freq, "an integer >= 1")
        check(is_int(max_length) and max_length >= 1, "task.max_length", max_length, "an integer >= 1 (tokens)")
        check(is_int(embedding_size) and embedding_size >= 1, "task.embedding_size", embedding_size,
              "an integer >= 1")
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
        check(is_int(beam_size) and beam_size >= 1, "task.beam_size", beam_size, "an integer >= 1 (1 = greedy)")
        check(isinstance(length_penalty, (int, float)) and length_penalty >= 0, "task.length_penalty",
              length_penalty, "a number >= 0 (GNMT's alpha; 0 = none)")
        check(isinstance(max_len_a, (int, float)) and max_len_a >= 0, "task.max_len_a", max_len_a, "a number >= 0")
        check(is_int(max_len_b) and max_len_b >= 0, "task.max_len_b", max_len_b, "an integer >= 0")
        check(max_len_a > 0 or max_len_b > 0, "task.max_len_b", max_len_b, "> 0 when task.max_len_a is 0")
        check(is_int(bucket_width) and bucket_width >= 1, "task.bucket_width", bucket_width, "an integer >= 1")
        check(is_int(attention_maps) and attention_maps >= 0, "task.attention_maps", attention_maps,
              "an integer >= 0")
        self.dataset = dataset
        self.source_lang, self.target_lang = source_lang, target_lang
        self.path, self.reverse, self.header_lines, self.line_endings = path, reverse, header_lines, line_endings
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.data_dir = data_dir
        self.synthetic_sizes = {"train": synthetic_train_size, "val": synthetic_val_size,
                                "test": synthetic_test_size}
        self.lowercase, self.min_freq, self.max_length = lowercase, min_freq, max_length
        self.embedding_size, self.attention, self.attention_size = embedding_size, attention, attention_size
        self.input_feeding, self.dropout, self.teacher_forcing = input_feeding, float(dropout), float(teacher_forcing)
        self.beam_size, self.length_penalty = beam_size, float(length_penalty)
        self.max_len_a, self.max_len_b = float(max_len_a), max_len_b
        self.bucket_width, self.attention_maps = bucket_width, attention_maps
        self._raw: Optional[dict[str, pd.Pairs]] = None  # real corpora (seed-independent)
        self._vocab: Optional[tuple[pd.Vocabulary, pd.Vocabulary]] = None
        self._train_tokens: Optional[list[tuple[list[str], list[str]]]] = None
        self._encoded: dict[int, dict[str, pd.Encoded]] = {}  # per data seed
        self._stage = "val"
        self._eval_data_seed = 0
        self._hypotheses: dict[int, list[int]] = {}
        self._test_hypotheses: dict[int, list[int]] = {}
        self._signatures: dict[str, str] = {}

    # --- what the run record says --------------------------------------------------------
    def key_parameters(self) -> dict:
        data = {"synthetic": "dates in words -> ISO", "multi30k": f"{self.source_lang}->{self.target_lang}",
                "tsv": str(self.path)}[self.dataset]
        return {"dataset": self.dataset, "data": data, "attention": self.attention,
                "input_feeding": self.input_feeding and self.attention.startswith("luong"),
                "beam_size": self.beam_size}

    # --- data ---------------------------------------------------------------------------------
    def _tokenize(self, text: str) -> list[str]:
        """Synthetic text is already space-separated tokens; real text goes through the tokeniser."""
        return text.split() if self.dataset == "synthetic" else pd.tokenize(text, self.lowercase)

    def detokenize(self, tokens: list[str]) -> str:
        """Text of target tokens, as compared with the raw references."""
        return " ".join(tokens) if self.dataset == "synthetic" else pd.detokenize(tokens)

    def _real_pairs(self) -> dict[str, pd.Pairs]:
        if self._raw is None:
            if self.dataset == "multi30k":
                self._raw = pd.read_multi30k(self.source_lang, self.target_lang, self.data_dir)
            else:
                path = pd.corpus_file(self.path, data_dir=self.data_dir) if not Path(self.path).is_file() \
                    else Path(self.path)
                pairs = pd.read_tsv_pairs(path, reverse=self.reverse, header_lines=self.header_lines,
                                          line_endings=self.line_endings)
                self._raw = pd.split_pairs(pairs, self.val_fraction, self.test_fraction, self.split_seed)
        return self._raw

    def vocabularies(self) -> tuple[pd.Vocabulary, pd.Vocabulary]:
        """Source and target vocabularies (from the training split for real corpora)."""
        if self._vocab is None:
            if self.dataset == "synthetic":
                words, characters = pd.synthetic_vocabularies()
                self._vocab = (pd.Vocabulary([*pd.SPECIALS, *words]), pd.Vocabulary([*pd.SPECIALS, *characters]))
            else:
                train = self._training_pairs(self._real_pairs()["train"])
                self._vocab = (pd.Vocabulary.build((s for s, _ in train), self.min_freq),
                               pd.Vocabulary.build((t for _, t in train), self.min_freq))
        return self._vocab

    def _training_pairs(self, pairs: pd.Pairs) -> list[tuple[list[str], list[str]]]:
        """Tokenised training pairs with both sides at most ``max_length`` tokens (real
        corpora: computed once, for the vocabularies and the training split)."""
        real = self.dataset != "synthetic"
        if real and self._train_tokens is not None:
            return self._train_tokens
        tokenised = [(self._tokenize(s), self._tokenize(t)) for s, t in pairs]
        kept = [(s, t) for s, t in tokenised if 0 < len(s) <= self.max_length and 0 < len(t) <= self.max_length]
        if not kept:
            raise pd.DataError(f"no training pair has both sides within task.max_length={self.max_length} tokens.")
        if real:
            self._train_tokens = kept
        return kept

    def splits(self, data_seed: int) -> dict[str, pd.Encoded]:
        """``train``/``val``/``test`` as id lists (synthetic splits depend on ``data_seed``)."""
        if data_seed not in self._encoded:
            if self.dataset == "synthetic":
                raw = {}
                seen: frozenset = frozenset()
                for split, stream in (("test", TEST_STREAM), ("val", VAL_STREAM), ("train", FIXED_TRAIN_STREAM)):
                    # Distinct pairs; validation and test never occur in training.
                    raw[split] = pd.synthetic_dates(self.synthetic_sizes[split], seeded_generator(data_seed, stream),
                                                    exclude=seen)
                    seen = seen | frozenset(raw[split])
            else:
                raw = self._real_pairs()
            src_vocab, tgt_vocab = self.vocabularies()
            encoded = {}
            for split, pairs in raw.items():
                # Training pairs are filtered by length; evaluation keeps every pair.
                tokenised = self._training_pairs(pairs) if split == "train" else \
                    [(self._tokenize(s), self._tokenize(t)) for s, t in pairs]
                encoded[split] = pd.Encoded(
                    src=[src_vocab.encode([*s, pd.EOS]) for s, _ in tokenised],
                    tgt=[tgt_vocab.encode([pd.BOS, *t, pd.EOS]) for _, t in tokenised],
                    references=[] if split == "train" else [t for _, t in pairs],
                    sources=[] if split == "train" else [s for s, _ in pairs],
                )
            self._encoded[data_seed] = encoded
        return self._encoded[data_seed]

    def train_dataloader(self, data_seed: int, rank: int = 0, world_size: int = 1, start_step: int = 0,
                         num_batches: Optional[int] = None):
        stream = pd.BucketedStream(self.splits(data_seed)["train"], self.batch_size,
                                   lambda epoch: seeded_generator(data_seed, TRAIN_STREAM, epoch),
                                   rank, world_size, start_step, num_batches)
        return DataLoader(stream, batch_size=None)

    def _eval_loader(self, split: str, data_seed: int) -> DataLoader:
        self._eval_data_seed = data_seed  # whose references eval_epoch_end scores against
        data = self.splits(data_seed)[split]
        batches = [data.batch(b) for b in pd.bucketed_batches([len(s) for s in data.src], self.batch_size, None)]
        return DataLoader(batches, batch_size=None)

    def val_dataloader(self, data_seed: int):
        return self._eval_loader("val", data_seed)

    def test_dataloader(self, data_seed: int):
        return self._eval_loader("test", data_seed)

    def count_tokens(self, batch) -> int:
        """Source tokens (with ``<eos>``) plus target tokens predicted (with ``<eos>``)."""
        src, src_lengths, tgt, _ = batch
        return int(src_lengths.sum()) + int((tgt[:, 1:] != 0).sum())

    def metric_weight(self, batch) -> int:
        return int((batch[2][:, 1:] != 0).sum())

    # --- model, loss, metrics ------------------------------------------------------------------
    def build_model(self, make_stack) -> Seq2Seq:
        src_vocab, tgt_vocab = self.vocabularies()
        return Seq2Seq(make_stack, len(src_vocab), len(tgt_vocab), embedding_size=self.embedding_size,
                       attention=self.attention, attention_size=self.attention_size,
                       input_feeding=self.input_feeding, dropout=self.dropout)

    def max_decode_length(self, src_lengths: Tensor) -> int:
        return max(1, int(math.ceil(self.max_len_a * int(src_lengths.max()) + self.max_len_b)))

    def decode(self, model: Seq2Seq, src: Tensor, src_lengths: Tensor, beam_size: int) -> Tensor:
        """Token ids ``(B, L)`` of the translations (greedy when ``beam_size`` is 1)."""
        _, tgt_vocab = self.vocabularies()
        ids = dict(max_len=self.max_decode_length(src_lengths), bos=tgt_vocab.stoi[pd.BOS],
                   eos=tgt_vocab.stoi[pd.EOS])
        if beam_size == 1:
            return model.greedy(src, src_lengths, **ids)[0]
        return model.beam_search(src, src_lengths, **ids, beam_size=beam_size, length_penalty=self.length_penalty)

    def loss_and_metrics(self, model, batch) -> tuple[Tensor, dict[str, Tensor]]:
        src, src_lengths, tgt, index = batch
        tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
        ratio = self.teacher_forcing if model.training else 1.0
        logits, _ = model(src, src_lengths, tgt_in, teacher_forcing=ratio)
        loss = F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=0)
        real = tgt_out != 0
        token_acc = ((logits.argmax(-1) == tgt_out) & real).sum() / real.sum()
        if not model.training:
            beam = self.beam_size if self._stage == "test" else 1
            hypotheses = self.decode(model, src, src_lengths, beam).tolist()
            self._hypotheses.update(zip(index.tolist(), hypotheses))
        return loss, {"loss": loss.detach(), "token_acc": token_acc.detach()}

    # --- corpus-level evaluation -----------------------------------------------------------------
    def eval_epoch_start(self, stage: str) -> None:
        self._stage = stage
        self._hypotheses = {}

    def eval_epoch_end(self, stage: str, means: dict[str, float]) -> dict[str, float]:
        hypotheses = self._hypotheses
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # Each rank decoded its share of the batches: merge them (by sentence index,
            # so a sampler's padding duplicates count once).
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, hypotheses)
            hypotheses = {k: v for part in gathered for k, v in part.items()}
        if not hypotheses:
            return {}
        if stage == "test":
            self._test_hypotheses = dict(hypotheses)
        return self.score(stage, hypotheses, self._eval_data_seed)

    def score(self, split: str, hypotheses: dict[int, list[int]], data_seed: int) -> dict:
        """sacrebleu BLEU and chrF, and exact match (token for token), of ``{sentence index:
        token ids}`` against the references of ``split``; also keeps sacrebleu's signatures."""
        import sacrebleu

        data = self.splits(data_seed)[split]
        _, tgt_vocab = self.vocabularies()
        order = sorted(hypotheses)
        tokens = {i: tgt_vocab.decode(hypotheses[i]) for i in order}
        texts = [self.detokenize(tokens[i]) for i in order]
        references = [[data.references[i] for i in order]]
        bleu = sacrebleu.metrics.BLEU(lowercase=self.lowercase)
        chrf = sacrebleu.metrics.CHRF(lowercase=self.lowercase)
        scores = {"bleu": float(bleu.corpus_score(texts, references).score),
                  "chrf": float(chrf.corpus_score(texts, references).score),
                  "exact_match": sum(tokens[i] == tgt_vocab.decode(data.tgt[i][1:]) for i in order) / len(order)}
        self._signatures = {"bleu_signature": str(bleu.get_signature()), "chrf_signature": str(chrf.get_signature())}
        return scores

    # --- artefacts ---------------------------------------------------------------------------------
    def write_artifacts(self, model, run_dir, data_seed: int) -> dict:
        import sacrebleu

        run_dir = Path(run_dir)
        src_vocab, tgt_vocab = self.vocabularies()
        write_json_atomic(run_dir / "vocab.json", {"source": src_vocab.to_json(), "target": tgt_vocab.to_json()})
        record: dict = {"vocab_sizes": {"source": len(src_vocab), "target": len(tgt_vocab)}}
        test = self.splits(data_seed)["test"]
        if self._test_hypotheses:
            order = sorted(self._test_hypotheses)
            texts = {i: self.detokenize(tgt_vocab.decode(self._test_hypotheses[i])) for i in order}
            with open(run_dir / "test_translations.tsv", "w", encoding="utf-8") as f:
                f.write("source\treference\thypothesis\n")
                for i in order:
                    f.write(f"{test.sources[i]}\t{test.references[i]}\t{texts[i]}\n")
            buckets: dict[int, list[int]] = {}
            for i in order:
                buckets.setdefault((len(test.src[i]) - 2) // self.bucket_width, []).append(i)  # without <eos>
            by_length = []
            for b in sorted(buckets):
                members = buckets[b]
                bleu = sacrebleu.metrics.BLEU(lowercase=self.lowercase)
                score = bleu.corpus_score([texts[i] for i in members], [[test.references[i] for i in members]])
                by_length.append({"source_tokens": f"{b * self.bucket_width + 1}-{(b + 1) * self.bucket_width}",
                                  "sentences": len(members), "bleu": round(score.score, 2)})
            record["bleu_by_source_length"] = by_length
            record["test_translations"] = "test_translations.tsv"
            record.update(self._signatures)
        record["attention_maps"] = self._write_attention_maps(model, run_dir, data_seed)
        return record

    def _write_attention_maps(self, model: Seq2Seq, run_dir: Path, data_seed: int) -> Optional[str]:
        """Greedy translations of the first ``attention_maps`` validation sentences, with their
        attention weights as JSON and one heat map (PNG) each; None without attention."""
        if self.attention == "none" or self.attention_maps == 0:
            return None
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        src_vocab, tgt_vocab = self.vocabularies()
        val = self.splits(data_seed)["val"]
        count = min(self.attention_maps, len(val))
        src, src_lengths, _, _ = val.batch(range(count))
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        tokens, weights = model.greedy(src.to(device), src_lengths.to(device),
                                       max_len=self.max_decode_length(src_lengths),
                                       bos=tgt_vocab.stoi[pd.BOS], eos=tgt_vocab.stoi[pd.EOS])
        model.train(was_training)
        folder = run_dir / "attention"
        folder.mkdir(exist_ok=True)
        entries = []
        for row in range(count):
            source = [src_vocab.itos[i] for i in src[row, :src_lengths[row]].tolist()]
            output = tgt_vocab.decode(tokens[row].tolist())
            steps = min(len(output) + 1, tokens.shape[1])  # the <eos> step too, when produced
            target = output + [pd.EOS] if steps > len(output) else output
            matrix = weights[row, :steps, :len(source)].float().cpu()
            entries.append({"index": row, "source": source, "output": target,
                            "reference": val.references[row], "weights": matrix.tolist()})
            figure = Figure(figsize=(1.2 + 0.35 * len(source), 1.0 + 0.3 * len(target)))
            FigureCanvasAgg(figure)
            axes = figure.add_subplot()
            image = axes.imshow(matrix.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
            axes.set_xticks(range(len(source)), source, rotation=90)
            axes.set_yticks(range(len(target)), target)
            axes.set_xlabel("source")
            axes.set_ylabel("output")
            figure.colorbar(image, ax=axes, fraction=0.04)
            figure.tight_layout()
            figure.savefig(folder / f"val_{row}.png", dpi=100)
        write_json_atomic(folder / "attention.json", {"attention": self.attention, "sentences": entries})
        return "attention"
