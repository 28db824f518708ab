"""Parallel text for translation: readers, tokenisation, vocabularies, bucketed batches,
and :class:`ParallelCorpus`, a configured dataset as encoded splits.

Sources of sentence pairs (each a list of ``(source, target)`` raw strings per split):

- **Multi30k** task 1 (Elliott et al. 2016, arXiv:1605.00459) from its published raw
  ``*.gz`` files, one sentence per line, line ``i`` of ``train.de.gz`` translating line
  ``i`` of ``train.en.gz``: splits ``train`` (29,000), ``val`` (1,014) and
  ``test_2016_flickr`` (1,000), languages ``en``, ``de``, ``fr``, ``cs``.
- **TSV pair files** ``src<TAB>tgt[<TAB>more columns ignored]``, as the Tatoeba/Anki
  exports (manythings.org) and Dive into Deep Learning's ``fra-eng``; one file is split
  into train/validation/test by a seeded shuffle.
- **Synthetic dates** (:mod:`rnnbench.dates`): a date written in English words -> its
  ISO form. Its target is character-level: the tokens are the characters of the ISO
  date, and its reference text is those characters separated by spaces.

Tokenisation (deterministic): optionally lower-case, then
``re.findall(r"\\w+|[^\\w\\s]")`` — runs of letters/digits, and every other non-space
character on its own (``"Don't!" -> don ' t !``). :func:`detokenize` joins tokens
with spaces and removes the space before closing punctuation ``. , ! ? ; : % ) ] }``,
after opening brackets, and around an apostrophe or hyphen between two word
tokens; BLEU is computed on that text against the raw references (sacrebleu
tokenises both the same way).
"""

from __future__ import annotations

import gzip
import random
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Optional, Sequence

from . import dates
from .download import DataError, corpus_file
from .errors import ConfigError, check, is_int
from .parallel_batches import BucketedStream, EncodedSplit, bucketed_batches
from .task import FIXED_TRAIN_STREAM, TEST_STREAM, TRAIN_STREAM, VAL_STREAM, seeded_generator

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)  # ids 0, 1, 2, 3 in every vocabulary

TOKEN = re.compile(r"\w+|[^\w\s]")
NO_SPACE_BEFORE = re.compile(r" ([.,!?;:%)\]}])")
NO_SPACE_AFTER = re.compile(r"([(\[{]) ")
JOINED = re.compile(r"(\w) (['’-]) (?=\w)")

Pairs = list[tuple[str, str]]  # (source, target) raw sentences

MULTI30K_LANGUAGES = ("en", "de", "fr", "cs")
MULTI30K_SPLITS = {"train": "train", "val": "val", "test": "test_2016_flickr"}
MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/{name}"
# SHA-256 of the published files (as in the shared data's SHA256SUMS).
MULTI30K_SHA256 = {
    "train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
    "train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
    "train.fr.gz": "622e75069e9f4c577425c4f277116ce66e63a2401c0a2312d90073cb12379a3c",
    "train.cs.gz": "a65adb8b32e3bc664f21ecba7a6e7f6950fd1f405e135f7c312faabdb6255077",
    "val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
    "val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
    "val.fr.gz": "ca3106f1a72390591d25f6c45cb4cd39dec4cd3f123e099748a3ce5256c160e9",
    "val.cs.gz": "b63226e05c4bd5dd6a42897d74b86a1b9d2c31498252c572b1ea7f7996927fcc",
    "test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
    "test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
    "test_2016_flickr.fr.gz": "6d326e188d259fb1d04ac19eae3af956559b3a0b93d7635e56c90987c40c8b90",
    "test_2016_flickr.cs.gz": "200a4a74cc9560f051924abb9803be008d1908d77f747e9141aeb86dfd2797f1",
}



# --- tokenisation and vocabularies ------------------------------------------------------
def tokenize(text: str, lowercase: bool = True) -> list[str]:
    """Word-and-punctuation tokens of ``text`` (see the module docstring)."""
    return TOKEN.findall(text.lower() if lowercase else text)


def detokenize(tokens: Sequence[str]) -> str:
    """Inverse of :func:`tokenize` up to spacing (and case): text for BLEU."""
    text = " ".join(tokens)
    text = NO_SPACE_BEFORE.sub(r"\1", text)
    text = NO_SPACE_AFTER.sub(r"\1", text)
    return JOINED.sub(r"\1\2", text)


class SentenceVocabulary:
    """The vocabulary of one side of a parallel corpus: token <-> id, specials first
    (``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2, ``<unk>`` 3), then tokens of frequency >=
    ``min_freq`` by decreasing frequency, ties alphabetical."""

    def __init__(self, tokens: Sequence[str]):
        self.itos = list(tokens)
        self.stoi = {token: i for i, token in enumerate(self.itos)}
        assert tuple(self.itos[:len(SPECIALS)]) == SPECIALS

    @classmethod
    def build(cls, sentences: Iterable[Sequence[str]], min_freq: int = 1) -> "SentenceVocabulary":
        counts = Counter(token for sentence in sentences for token in sentence)
        kept = sorted((t for t, c in counts.items() if c >= min_freq and t not in SPECIALS),
                      key=lambda t: (-counts[t], t))
        return cls([*SPECIALS, *kept])

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        unk = self.stoi[UNK]
        return [self.stoi.get(t, unk) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens up to (not including) the first ``<eos>``; specials dropped."""
        out = []
        for i in ids:
            if i == self.stoi[EOS]:
                break
            if i >= len(SPECIALS) or i == self.stoi[UNK]:
                out.append(self.itos[i])
        return out

    def to_json(self) -> list[str]:
        return list(self.itos)


# --- readers ------------------------------------------------------------------------------
def read_multi30k(source: str, target: str, data_dir: Optional[str] = None) -> dict[str, Pairs]:
    """Multi30k task 1 pairs per split ``train``/``val``/``test`` (test = test_2016_flickr)."""
    splits = {}
    for split, name in MULTI30K_SPLITS.items():
        sides = []
        for language in (source, target):
            filename = f"{name}.{language}.gz"
            path = corpus_file(f"multi30k/raw/{filename}", url=MULTI30K_URL.format(name=filename),
                               sha256=MULTI30K_SHA256[filename], data_dir=data_dir)
            with gzip.open(path, "rt", encoding="utf-8", newline="\n") as f:
                sides.append([line.rstrip("\n").rstrip("\r") for line in f])
        if len(sides[0]) != len(sides[1]):
            raise DataError(f"Multi30k {name}: {len(sides[0])} {source} lines but {len(sides[1])} {target} lines; "
                            f"the files do not match (re-download them).")
        splits[split] = list(zip(*sides))
    return splits


LINE_ENDINGS = {"auto": None, "lf": "\n", "crlf": "\r\n"}


def read_tsv_pairs(path: str | Path, *, reverse: bool = False, header_lines: int = 0,
                   line_endings: str = "auto") -> Pairs:
    """``(column 1, column 2)`` of every line of a tab-separated file (``reverse`` swaps them).

    ``line_endings``: ``auto`` accepts ``\\n``, ``\\r\\n`` and ``\\r``; ``lf`` / ``crlf``
    require that ending on every line (a file with mixed endings fails, naming the
    line). A UTF-8 byte-order mark is ignored; blank lines are skipped; a line without
    a tab, with an empty side, or not valid UTF-8 fails with its line number.
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not valid UTF-8 ({exc.reason}); convert the file to UTF-8.") from exc
    ending = LINE_ENDINGS[line_endings]
    if ending is None:
        lines = text.splitlines()
    else:
        lines = text.split(ending)
        if lines and lines[-1] == "":
            lines.pop()
    pairs = []
    for number, line in enumerate(lines, start=1):
        if number <= header_lines:
            continue
        if ending is not None and ("\r" in line or "\n" in line):
            raise DataError(f"{path}, line {number}: a line ending other than task.line_endings={line_endings} "
                            f"(mixed line endings?); use task.line_endings=auto.")
        if not line.strip():
            continue
        columns = line.split("\t")
        if len(columns) < 2:
            raise DataError(f"{path}, line {number}: expected 'source<TAB>target', found no tab in {line[:60]!r}"
                            + (" (a header line? set task.header_lines)" if number == 1 else "") + ".")
        source, target = columns[0].strip(), columns[1].strip()
        if not source or not target:
            raise DataError(f"{path}, line {number}: an empty {'source' if not source else 'target'} sentence.")
        pairs.append((target, source) if reverse else (source, target))
    if not pairs:
        raise DataError(f"{path}: no sentence pairs found (after {header_lines} header line(s)).")
    return pairs


def split_pairs(pairs: Pairs, val_fraction: float, test_fraction: float, seed: int) -> dict[str, Pairs]:
    """Shuffle ``pairs`` with ``random.Random(seed)`` and cut validation and test sets off it."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_val, n_test = round(len(pairs) * val_fraction), round(len(pairs) * test_fraction)
    if n_val < 1 or n_test < 1 or n_val + n_test >= len(pairs):
        raise ConfigError(f"{len(pairs)} pairs cannot be split with task.val_fraction={val_fraction} and "
                          f"task.test_fraction={test_fraction}: each split needs at least one pair.")
    pick = lambda idx: [pairs[i] for i in idx]  # noqa: E731
    return {"val": pick(order[:n_val]), "test": pick(order[n_val:n_val + n_test]),
            "train": pick(order[n_val + n_test:])}


# --- a configured dataset -------------------------------------------------------------------
DATASETS = ("synthetic", "multi30k", "tsv")


class ParallelCorpus:
    """A translation dataset (``task.dataset`` and its options, checked here) as encoded
    splits and two vocabularies. Nothing is read until asked; real corpora are read once
    (their splits do not depend on the data seed), synthetic splits are a pure function of
    the data seed. Training pairs with a side longer than ``max_length`` tokens are
    dropped; evaluation keeps every pair."""

    def __init__(self, dataset: str = "synthetic", *, source_lang: str = "de", target_lang: str = "en",
                 path: Optional[str] = None, reverse: bool = False, header_lines: int = 0,
                 line_endings: str = "auto", val_fraction: float = 0.1, test_fraction: float = 0.1,
                 split_seed: int = 0, data_dir: Optional[str] = None, synthetic_sizes: Optional[dict] = None,
                 lowercase: bool = True, min_freq: int = 1, max_length: int = 50):
        synthetic_sizes = synthetic_sizes or {"train": 20000, "val": 500, "test": 500}
        check(dataset in DATASETS, "task.dataset", dataset, f"one of {', '.join(DATASETS)}")
        if dataset == "multi30k":
            for key, lang in (("task.source_lang", source_lang), ("task.target_lang", target_lang)):
                check(lang in MULTI30K_LANGUAGES, key, lang, f"one of {', '.join(MULTI30K_LANGUAGES)}")
            check(source_lang != target_lang, "task.target_lang", target_lang,
                  f"a language other than task.source_lang ({source_lang})")
        if dataset == "tsv":
            check(isinstance(path, str) and path != "", "task.path", path,
                  "the path of a tab-separated pair file (source<TAB>target per line) for task.dataset=tsv")
        check(isinstance(reverse, bool), "task.reverse", reverse, "true or false")
        check(is_int(header_lines) and header_lines >= 0, "task.header_lines", header_lines, "an integer >= 0")
        check(line_endings in LINE_ENDINGS, "task.line_endings", line_endings, f"one of {', '.join(LINE_ENDINGS)}")
        for key, value in (("task.val_fraction", val_fraction), ("task.test_fraction", test_fraction)):
            check(isinstance(value, (int, float)) and 0 < value < 0.5, key, value, "a number in (0, 0.5)")
        check(is_int(split_seed) and split_seed >= 0, "task.split_seed", split_seed, "an integer >= 0")
        for split, value in synthetic_sizes.items():
            check(is_int(value) and 1 <= value <= 50000, f"task.synthetic_{split}_size", value,
                  "an integer in [1, 50000]")
        check(isinstance(lowercase, bool), "task.lowercase", lowercase, "true or false")
        check(is_int(min_freq) and min_freq >= 1, "task.min_freq", min_freq, "an integer >= 1")
        check(is_int(max_length) and max_length >= 1, "task.max_length", max_length, "an integer >= 1 (tokens)")
        self.dataset, self.source_lang, self.target_lang, self.path = dataset, source_lang, target_lang, path
        self.reverse, self.header_lines, self.line_endings = reverse, header_lines, line_endings
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.data_dir, self.synthetic_sizes = data_dir, dict(synthetic_sizes)
        self.lowercase, self.min_freq, self.max_length = lowercase, min_freq, max_length
        self._raw: Optional[dict[str, Pairs]] = None  # real corpora (seed-independent)
        self._vocab: Optional[tuple[SentenceVocabulary, SentenceVocabulary]] = None
        self._train_tokens: Optional[list[tuple[list[str], list[str]]]] = None
        self._encoded: dict[int, dict[str, EncodedSplit]] = {}  # per data seed

    def describe(self) -> str:
        """What the data are, in a few words (for the run record)."""
        return {"synthetic": "dates in words -> ISO", "multi30k": f"{self.source_lang}->{self.target_lang}",
                "tsv": str(self.path)}[self.dataset]

    def tokenize(self, text: str) -> list[str]:
        """Synthetic text is already space-separated tokens; real text goes through :func:`tokenize`."""
        return text.split() if self.dataset == "synthetic" else tokenize(text, self.lowercase)

    def detokenize(self, tokens: list[str]) -> str:
        """Text of target tokens, as compared with the raw references."""
        return " ".join(tokens) if self.dataset == "synthetic" else detokenize(tokens)

    def vocabularies(self) -> tuple[SentenceVocabulary, SentenceVocabulary]:
        """Source and target vocabularies (from the training split for real corpora)."""
        if self._vocab is None:
            if self.dataset == "synthetic":
                words, characters = dates.synthetic_vocabularies()
                self._vocab = (SentenceVocabulary([*SPECIALS, *words]), SentenceVocabulary([*SPECIALS, *characters]))
            else:
                train = self._training_pairs(self._real_pairs()["train"])
                self._vocab = (SentenceVocabulary.build((s for s, _ in train), self.min_freq),
                               SentenceVocabulary.build((t for _, t in train), self.min_freq))
        return self._vocab

    def splits(self, data_seed: int) -> dict[str, EncodedSplit]:
        """``train``/``val``/``test`` as id lists (synthetic splits depend on ``data_seed``)."""
        if data_seed not in self._encoded:
            raw = self._synthetic_pairs(data_seed) if self.dataset == "synthetic" else self._real_pairs()
            src_vocab, tgt_vocab = self.vocabularies()
            encoded = {}
            for split, pairs in raw.items():
                # Training pairs are filtered by length; evaluation keeps every pair.
                tokenised = self._training_pairs(pairs) if split == "train" else \
                    [(self.tokenize(s), self.tokenize(t)) for s, t in pairs]
                encoded[split] = EncodedSplit(
                    src=[src_vocab.encode([*s, EOS]) for s, _ in tokenised],
                    tgt=[tgt_vocab.encode([BOS, *t, EOS]) for _, t in tokenised],
                    references=[] if split == "train" else [t for _, t in pairs],
                    sources=[] if split == "train" else [s for s, _ in pairs],
                )
            self._encoded[data_seed] = encoded
        return self._encoded[data_seed]

    def training_batches(self, data_seed: int, batch_size: int, rank: int, world_size: int, start_step: int,
                         num_batches: Optional[int]) -> BucketedStream:
        """Endless length-bucketed training batches for ``rank``, epoch ``e`` shuffled by the data seed."""
        return BucketedStream(self.splits(data_seed)["train"], batch_size,
                              lambda epoch: seeded_generator(data_seed, TRAIN_STREAM, epoch),
                              rank, world_size, start_step, num_batches)

    def evaluation_batches(self, split: str, data_seed: int, batch_size: int) -> list[tuple]:
        """Every pair of ``split`` once, in batches sorted by source length (least padding)."""
        data = self.splits(data_seed)[split]
        return [data.batch(b) for b in bucketed_batches([len(s) for s in data.src], batch_size, None)]

    def first_pairs(self, split: str, data_seed: int, count: int) -> tuple:
        """The first ``count`` pairs of ``split`` as one batch (as :meth:`EncodedSplit.batch`)."""
        data = self.splits(data_seed)[split]
        return data.batch(range(min(count, len(data))))

    def _synthetic_pairs(self, data_seed: int) -> dict[str, Pairs]:
        raw: dict[str, Pairs] = {}
        seen: frozenset = frozenset()
        for split, stream in (("test", TEST_STREAM), ("val", VAL_STREAM), ("train", FIXED_TRAIN_STREAM)):
            # Distinct pairs; validation and test never occur in training.
            raw[split] = dates.synthetic_dates(self.synthetic_sizes[split], seeded_generator(data_seed, stream),
                                               exclude=seen)
            seen = seen | frozenset(raw[split])
        return raw

    def _real_pairs(self) -> dict[str, Pairs]:
        if self._raw is None:
            if self.dataset == "multi30k":
                self._raw = read_multi30k(self.source_lang, self.target_lang, self.data_dir)
            else:
                path = Path(self.path) if Path(self.path).is_file() else corpus_file(self.path, data_dir=self.data_dir)
                pairs = read_tsv_pairs(path, reverse=self.reverse, header_lines=self.header_lines,
                                       line_endings=self.line_endings)
                self._raw = split_pairs(pairs, self.val_fraction, self.test_fraction, self.split_seed)
        return self._raw

    def _training_pairs(self, pairs: Pairs) -> list[tuple[list[str], list[str]]]:
        """Tokenised training pairs with both sides at most ``max_length`` tokens (real
        corpora: computed once, for the vocabularies and the training split)."""
        real = self.dataset != "synthetic"
        if real and self._train_tokens is not None:
            return self._train_tokens
        tokenised = [(self.tokenize(s), self.tokenize(t)) for s, t in pairs]
        kept = [(s, t) for s, t in tokenised if 0 < len(s) <= self.max_length and 0 < len(t) <= self.max_length]
        if not kept:
            raise DataError(f"no training pair has both sides within task.max_length={self.max_length} tokens.")
        if real:
            self._train_tokens = kept
        return kept
