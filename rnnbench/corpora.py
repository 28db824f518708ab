"""Text corpora for language modelling: files, tokenisation, splits, vocabulary.

Every corpus file is found through :func:`rnnbench.download.corpus_file` (the data
folder, ``RNNBENCH_DATA_DIR``, the cache, else a download checked against the
SHA-256 of the published file); relative paths mirror the layout of the shared
reference data (``ptb/ptb.train.txt`` ...).

Datasets (``DATASETS``) and their conventions:

- ``ptb_word``: Mikolov's Penn Treebank (``ptb.{train,valid,test}.txt``, 10k words,
  ``<unk>`` already in the text and kept as it is); ``<eos>`` is appended at the end
  of every line, as pytorch/examples' word_language_model and Zaremba et al. 2014
  do: 929,589 / 73,760 / 82,430 tokens.
- ``ptb_char``: the published character files ``ptb.char.*.txt`` (characters
  separated by spaces, ``_`` between words), read by the same rule: the
  space-separated symbols of each line, then ``<eos>`` (as AWD-LSTM's ``pennchar``):
  49 symbols + ``<eos>`` = 50.
- ``wikitext2``: WikiText-2 (tokenised, Merity et al. 2016), the copy that
  pytorch/examples ships; same rule (words of each line, then ``<eos>``).
- ``tinyshakespeare`` (Karpathy's char-rnn) and ``timemachine`` (H. G. Wells, the
  copy Dive into Deep Learning uses) have no official split: the token stream is cut
  into 90% / 5% / 5% contiguous train / valid / test parts (``DEFAULT_SPLIT``).
  char-rnn keeps 95% / 5% / 0% and nanoGPT 90% / 10%; a test part is needed here, so
  validation and test get 5% each. ``timemachine`` is first normalised as in Dive
  into Deep Learning (every run of non-letters becomes one space, lower case), so
  its character vocabulary is the 26 letters and the space.
- ``demo``: the English text of the standard library's ``pydoc_data.topics`` (no
  download, exists wherever Python does). A demo corpus only: its text changes
  with the Python version, so its numbers are **not comparable across Python
  versions**.
- ``text``: the user's own files, either one file cut by ``split`` fractions or
  three files (train, valid, test).

Levels: ``char`` tokens are single characters (line breaks included, as char-rnn
does); ``word`` tokens are the whitespace-separated words of each line followed by
``<eos>`` (pytorch/examples' convention). The vocabulary is built from the training
part, optionally capped (``max_vocab``, most frequent first) or thresholded
(``min_freq``) for user corpora; any other token maps to ``<unk>``, which is added
to the vocabulary only when some token needs it.
"""

from __future__ import annotations

import json
import os
import re
from array import array
from collections import Counter
from itertools import repeat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor

from .download import corpus_file
from .errors import ConfigError, check, is_number

EOS, UNK = "<eos>", "<unk>"
SPLITS = ("train", "valid", "test")
DEFAULT_SPLIT = (0.9, 0.05, 0.05)  # train / valid / test fractions for corpora without official splits
LEVELS = ("char", "word")

_PTB_URL = "https://raw.githubusercontent.com/tomsercu/lstm/master/data/"  # Zaremba et al.'s PTB copy (Mikolov's files)
_WIKITEXT2_URL = "https://raw.githubusercontent.com/pytorch/examples/main/word_language_model/data/wikitext-2/"


@dataclass(frozen=True)
class CorpusFile:
    """A published corpus file: its path relative to a data root, URL and SHA-256."""

    path: str
    url: str
    sha256: Optional[str]  # None: not known; the download is then not verified


@dataclass(frozen=True)
class CorpusSpec:
    """A named corpus: its files (one per split, or one to be cut), levels and reading rule."""

    files: dict[str, CorpusFile]  # keys: "train", "valid", "test"; or "all" (cut by DEFAULT_SPLIT)
    levels: tuple[str, ...]       # the levels it allows; the first is the default
    lines: bool = False           # True: tokens are the whitespace-separated symbols of each line + <eos>
    normalise: Optional[str] = None  # "d2l": Dive into Deep Learning's letters-only, lower-case cleaning
    join: str = ""                # how generated tokens are put back together as text
    replace: dict[str, str] = field(default_factory=dict)  # tokens rendered differently in generated text


DATASETS: dict[str, CorpusSpec] = {
    "ptb_word": CorpusSpec(
        files={
            "train": CorpusFile("ptb/ptb.train.txt", _PTB_URL + "ptb.train.txt",
                                "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf"),
            "valid": CorpusFile("ptb/ptb.valid.txt", _PTB_URL + "ptb.valid.txt",
                                "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2"),
            "test": CorpusFile("ptb/ptb.test.txt", _PTB_URL + "ptb.test.txt",
                               "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0"),
        },
        levels=("word",), lines=True, join=" ", replace={EOS: "\n"},
    ),
    "ptb_char": CorpusSpec(
        files={
            "train": CorpusFile("ptb/ptb.char.train.txt", _PTB_URL + "ptb.char.train.txt",
                                "e313d91425e06c4f0a8fb6e881dcce0c291f2a0e9f4dda54833069b122f91da9"),
            "valid": CorpusFile("ptb/ptb.char.valid.txt", _PTB_URL + "ptb.char.valid.txt",
                                "21661f63ec355085879458b6524644d4add5573541b4be14fb52ab2e2e995eb8"),
            "test": CorpusFile("ptb/ptb.char.test.txt", _PTB_URL + "ptb.char.test.txt",
                               "1ef5607ac3c463b16e38bfe7900dd3bfc91de5a96e0f21e7eab5188b465b8ebe"),
        },
        levels=("char",), lines=True, join="", replace={"_": " ", EOS: "\n"},
    ),
    "wikitext2": CorpusSpec(
        files={
            # The SHA-256 of train.txt could not be taken on the offline machine this table
            # was written on; its download is used unverified until it is filled in.
            "train": CorpusFile("wikitext-2/train.txt", _WIKITEXT2_URL + "train.txt", None),
            "valid": CorpusFile("wikitext-2/valid.txt", _WIKITEXT2_URL + "valid.txt",
                                "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8"),
            "test": CorpusFile("wikitext-2/test.txt", _WIKITEXT2_URL + "test.txt",
                               "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0"),
        },
        levels=("word",), lines=True, join=" ", replace={EOS: "\n"},
    ),
    "tinyshakespeare": CorpusSpec(
        files={"all": CorpusFile(
            "tinyshakespeare/input.txt",
            "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed")},
        levels=("char",),
    ),
    "timemachine": CorpusSpec(
        files={"all": CorpusFile(
            "timemachine/timemachine.txt", "https://d2l-data.s3-accelerate.amazonaws.com/timemachine.txt",
            "8424dbd9532ac81f7e5f0b6add90e6952baea29158309d7d1bf3884f4e12c516")},
        levels=("char", "word"), normalise="d2l",
    ),
    "demo": CorpusSpec(files={}, levels=("char", "word")),
    "text": CorpusSpec(files={}, levels=("char", "word")),
}


class TextVocabulary:
    """The vocabulary of a language-modelling corpus: tokens <-> ids (``tokens[i]`` has id
    ``i``), and back to text (``join``, ``replace``) for generated samples and prompts.
    Saved as JSON (no pickles). Translation's vocabularies, with their ``<pad>``/``<bos>``
    specials, are :class:`rnnbench.parallel_data.SentenceVocabulary`."""

    def __init__(self, tokens: Sequence[str], level: str, join: str = "", replace: Optional[dict] = None):
        self.tokens = list(tokens)
        self.level = level
        self.join = join
        self.replace = dict(replace or {})
        self.index = {token: i for i, token in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            raise ValueError("a vocabulary must not list a token twice")

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, tokens: Sequence[str]) -> Tensor:
        """Token ids, ``<unk>`` for unknown tokens (an error if the vocabulary has no ``<unk>``)."""
        unk = self.index.get(UNK)
        try:
            # map and array run in C: millions of tokens per second.
            ids = array("q", map(self.index.__getitem__, tokens) if unk is None
                        else map(self.index.get, tokens, repeat(unk)))
        except KeyError as exc:
            raise ConfigError(f"token {exc.args[0]!r} is not in the vocabulary (which has no {UNK})") from None
        return torch.frombuffer(ids, dtype=torch.long).clone() if ids else torch.zeros(0, dtype=torch.long)

    def decode(self, ids: Sequence[int]) -> str:
        return self.join.join(self.replace.get(self.tokens[int(i)], self.tokens[int(i)]) for i in ids)

    def tokenize(self, text: str) -> list[str]:
        """A prompt as tokens: whitespace-separated words (no ``<eos>`` added), or characters,
        mapped back through ``replace`` (e.g. a space is PTB's ``_``, a line break ``<eos>``)."""
        if self.level == "word":
            return text.split()
        inverse = {shown: token for token, shown in self.replace.items()}
        return [inverse.get(c, c) for c in text]

    def save(self, path: str | os.PathLike) -> None:
        from .files import write_json_atomic

        write_json_atomic(path, {"level": self.level, "join": self.join, "replace": self.replace,
                                 "tokens": self.tokens})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TextVocabulary":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(data["tokens"], data["level"], data.get("join", ""), data.get("replace"))


@dataclass
class Corpus:
    """Token id streams of the three splits, and their vocabulary."""

    vocab: TextVocabulary
    train: Tensor
    valid: Tensor
    test: Tensor

    def split(self, name: str) -> Tensor:
        return {"train": self.train, "valid": self.valid, "test": self.test}[name]


def d2l_normalise(text: str) -> str:
    """Dive into Deep Learning's cleaning of The Time Machine: every run of non-letters
    becomes one space, per line, stripped and lower-cased (lines joined by a space)."""
    return " ".join(line for line in (re.sub("[^A-Za-z]+", " ", raw).strip().lower()
                                      for raw in text.splitlines()) if line)


def line_tokens(text: str) -> list[str]:
    """The whitespace-separated symbols of each line, each line followed by ``<eos>``
    (pytorch/examples' word_language_model rule)."""
    tokens: list[str] = []
    for line in text.splitlines():
        tokens.extend(line.split())
        tokens.append(EOS)
    return tokens


def demo_text() -> str:
    """The English help topics of the standard library's ``pydoc_data``, in key order."""
    from pydoc_data.topics import topics

    return "\n".join(topics[key] for key in sorted(topics))


def _tokens(text: str, level: str, dataset: CorpusSpec) -> list[str]:
    if dataset.normalise == "d2l":
        text = d2l_normalise(text)
    if dataset.lines or level == "word":
        return line_tokens(text)
    return list(text)


def _read(path: Path) -> str:
    # newline="": keep the file's own line ends, so "\r\n" files split into lines as expected.
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def _cut(tokens: list[str], fractions: Sequence[float]) -> dict[str, list[str]]:
    """Contiguous train / valid / test parts by token fractions."""
    n_train = int(len(tokens) * fractions[0])
    n_valid = int(len(tokens) * fractions[1])
    return {"train": tokens[:n_train], "valid": tokens[n_train:n_train + n_valid],
            "test": tokens[n_train + n_valid:]}


def build_vocabulary(train: list[str], level: str, *, max_vocab: Optional[int] = None, min_freq: int = 1,
                     extra: Sequence[list[str]] = (), join: str = "", replace: Optional[dict] = None) -> TextVocabulary:
    """Tokens of ``train`` in order of first appearance (as pytorch/examples' Dictionary),
    keeping the ``max_vocab`` most frequent / those seen ``min_freq`` times; ``<unk>`` is
    added if any token of ``train`` or ``extra`` is left out."""
    counts = Counter(train)
    kept = [t for t in counts if counts[t] >= min_freq]  # Counter keeps first-appearance order
    if max_vocab is not None and len(kept) > max_vocab:
        # The most frequent, ties by first appearance; one slot is left for <unk>.
        rank = sorted(range(len(kept)), key=lambda i: (-counts[kept[i]], i))[: max_vocab - 1]
        kept = [kept[i] for i in sorted(rank)]
    if UNK not in kept and not set(counts).union(*map(set, extra)) <= set(kept):
        kept.append(UNK)
    return TextVocabulary(kept, level, join, replace)


def load_corpus(
    dataset: str,
    level: Optional[str] = None,
    *,
    data_dir: Optional[str] = None,
    files: Optional[Sequence[str]] = None,
    split: Sequence[float] = DEFAULT_SPLIT,
    max_vocab: Optional[int] = None,
    min_freq: int = 1,
) -> Corpus:
    """Read ``dataset`` at ``level`` (None: the dataset's default) into id streams.

    Options are validated by the caller (:class:`rnnbench.tasks.lm.LMTask`).
    """
    spec = DATASETS[dataset]
    level = level or spec.levels[0]
    if dataset == "text":
        paths = [Path(f).expanduser() for f in files]
        for path in paths:
            if not path.is_file():
                raise ConfigError(f"task.files: {str(path)!r} is not a file. Give one text file (cut by "
                                  f"task.split) or three (train, valid, test).")
        texts = [_read(p) for p in paths]
    elif dataset == "demo":
        texts = [demo_text()]
    else:
        texts = [_read(corpus_file(f.path, url=f.url, sha256=f.sha256, data_dir=data_dir))
                 for f in spec.files.values()]
    if len(texts) == 1:
        parts = _cut(_tokens(texts[0], level, spec), split)
    else:
        parts = dict(zip(SPLITS, (_tokens(t, level, spec) for t in texts)))
    for name, tokens in parts.items():
        if not tokens:
            raise ConfigError(f"the {name} part of task.dataset={dataset!r} is empty; use a longer text or "
                              f"other task.split fractions.")
    join = spec.join if spec.lines else (" " if level == "word" else "")
    replace = spec.replace if spec.lines else ({EOS: "\n"} if level == "word" else {})
    vocab = build_vocabulary(parts["train"], level, max_vocab=max_vocab, min_freq=min_freq,
                             extra=(parts["valid"], parts["test"]), join=join, replace=replace)
    return Corpus(vocab, *(vocab.encode(parts[name]) for name in SPLITS))


def check_dataset_options(dataset, level, files, split) -> None:
    """Validate the corpus options (the task calls it before reading anything)."""
    check(dataset in DATASETS, "task.dataset", dataset, f"one of {', '.join(DATASETS)}")
    spec = DATASETS[dataset]
    check(level is None or level in spec.levels, "task.level", level,
          f"null or {' or '.join(spec.levels)} (what dataset {dataset!r} allows)")
    if dataset == "text":
        check(isinstance(files, (list, tuple)) and len(files) in (1, 3) and all(isinstance(f, str) for f in files),
              "task.files", files, "a list of one text file (cut by task.split) or three (train, valid, test)")
    else:
        check(files is None, "task.files", files, "null unless task.dataset=text")
    check(isinstance(split, (list, tuple)) and len(split) == 3
          and all(is_number(x) and x > 0 for x in split)
          and abs(sum(split) - 1.0) < 1e-6,
          "task.split", split, "three positive fractions (train, valid, test) summing to 1, e.g. [0.9, 0.05, 0.05]")
