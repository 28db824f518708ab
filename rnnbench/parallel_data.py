"""Parallel text for translation: readers, tokenisation, vocabularies, bucketed batches.

Sources of sentence pairs (each a list of ``(source, target)`` raw strings per split):

- **Multi30k** task 1 (Elliott et al. 2016, arXiv:1605.00459) from its published raw
  ``*.gz`` files, one sentence per line, line ``i`` of ``train.de.gz`` translating line
  ``i`` of ``train.en.gz``: splits ``train`` (29,000), ``val`` (1,014) and
  ``test_2016_flickr`` (1,000), languages ``en``, ``de``, ``fr``, ``cs``.
- **TSV pair files** ``src<TAB>tgt[<TAB>more columns ignored]``, as the Tatoeba/Anki
  exports (manythings.org) and Dive into Deep Learning's ``fra-eng``; one file is split
  into train/validation/test by a seeded shuffle.
- **Synthetic dates** (:func:`synthetic_dates`): a date written in English words ->
  its ISO form, e.g. ``"the third of march two thousand and five"`` ->
  ``"2 0 0 5 - 0 3 - 0 3"``. No download; it has real alignment structure (each digit
  group comes from a few source words) and reordering (day, month, year ->
  year, month, day).

Tokenisation (deterministic): optionally lower-case, then
``re.findall(r"\\w+|[^\\w\\s]")`` — runs of letters/digits, and every other non-space
character on its own (``"Don't!" -> don ' t !``). :func:`detokenize` joins tokens
with spaces and removes the space before closing punctuation ``. , ! ? ; : % ) ] }``,
after opening brackets, and around an apostrophe or hyphen between two word
tokens; BLEU is computed on that text against the raw references (sacrebleu
tokenises both the same way). The synthetic target is character-level: its tokens
are the characters of the ISO date, and its reference text is those characters
separated by spaces.
"""

from __future__ import annotations

import gzip
import random
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import torch
from torch import Tensor
from torch.utils.data import IterableDataset

from .download import DataError, corpus_file
from .errors import ConfigError

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)  # ids 0, 1, 2, 3 in every vocabulary

TOKEN = re.compile(r"\w+|[^\w\s]")
NO_SPACE_BEFORE = re.compile(r" ([.,!?;:%)\]}])")
NO_SPACE_AFTER = re.compile(r"([(\[{]) ")
JOINED = re.compile(r"(\w) (['’-]) (?=\w)")

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

Pairs = list[tuple[str, str]]


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


class Vocabulary:
    """Token <-> id, specials first (``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2, ``<unk>`` 3),
    then tokens of frequency >= ``min_freq`` by decreasing frequency, ties alphabetical."""

    def __init__(self, tokens: Sequence[str]):
        self.itos = list(tokens)
        self.stoi = {token: i for i, token in enumerate(self.itos)}
        assert tuple(self.itos[:len(SPECIALS)]) == SPECIALS

    @classmethod
    def build(cls, sentences: Iterable[Sequence[str]], min_freq: int = 1) -> "Vocabulary":
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


# --- the synthetic task: dates in words -> ISO dates --------------------------------------
MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september",
          "october", "november", "december")
DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # 29 february is left out
UNITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
         "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
ORDINAL_UNITS = ("", "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth",
                 "tenth", "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth",
                 "seventeenth", "eighteenth", "nineteenth")


def number_words(n: int) -> str:
    """0 <= n < 100 in English words: ``42 -> "forty two"``."""
    if n < 20:
        return UNITS[n]
    return TENS[n // 10] + ("" if n % 10 == 0 else " " + UNITS[n % 10])


def ordinal_words(n: int) -> str:
    """1 <= n <= 31 as an ordinal: ``23 -> "twenty third"``, ``30 -> "thirtieth"``."""
    if n < 20:
        return ORDINAL_UNITS[n]
    if n % 10 == 0:
        return TENS[n // 10][:-1] + "ieth"
    return f"{TENS[n // 10]} {ORDINAL_UNITS[n % 10]}"


def year_words(year: int) -> str:
    """1900..2099: ``1984 -> "nineteen eighty four"``, ``1905 -> "nineteen oh five"``,
    ``1900 -> "nineteen hundred"``, ``2005 -> "two thousand and five"``, ``2000 -> "two thousand"``."""
    century, rest = divmod(year, 100)
    if century == 19:
        if rest == 0:
            return "nineteen hundred"
        return "nineteen " + (f"oh {UNITS[rest]}" if rest < 10 else number_words(rest))
    return "two thousand" + ("" if rest == 0 else " and " + number_words(rest))


def date_in_words(year: int, month: int, day: int, style: int) -> str:
    """Style 0: ``the third of march two thousand and five``; 1: ``march third two thousand
    and five``; 2: ``3 march two thousand and five`` (day as digits)."""
    name = MONTHS[month - 1]
    if style == 0:
        return f"the {ordinal_words(day)} of {name} {year_words(year)}"
    if style == 1:
        return f"{name} {ordinal_words(day)} {year_words(year)}"
    return f"{day} {name} {year_words(year)}"


def iso_target(year: int, month: int, day: int) -> str:
    """The reference text: ISO date characters separated by spaces, ``2 0 0 5 - 0 3 - 0 3``."""
    return " ".join(f"{year:04d}-{month:02d}-{day:02d}")


def synthetic_dates(n: int, generator: torch.Generator, exclude: frozenset = frozenset()) -> Pairs:
    """``n`` distinct (words, ISO) date pairs drawn with ``generator``, none in ``exclude``."""
    rng = random.Random(int(torch.randint(0, 2**62, (), generator=generator)))
    pairs: dict[tuple[str, str], None] = {}
    while len(pairs) < n:
        year, month, style = rng.randrange(1900, 2100), rng.randrange(1, 13), rng.randrange(3)
        day = rng.randrange(1, DAYS_IN_MONTH[month - 1] + 1)
        pair = (date_in_words(year, month, day, style), iso_target(year, month, day))
        if pair not in exclude:
            pairs[pair] = None
    return list(pairs)


def synthetic_vocabularies() -> tuple[list[str], list[str]]:
    """Every source word and target character the synthetic task can produce (fixed, so
    the vocabularies do not depend on the data seed)."""
    words = {"the", "of", "oh", "hundred", "thousand", "and", *MONTHS, *UNITS, *TENS[2:], *ORDINAL_UNITS[1:],
             *(ordinal_words(d) .split()[-1] for d in (20, 30)), *(str(d) for d in range(1, 32))}
    return sorted(words), [*"0123456789", "-"]


# --- tensors and batches ------------------------------------------------------------------
class Encoded:
    """One split as id lists: ``src[i]`` (ending in ``<eos>``), ``tgt[i]`` (``<bos> ... <eos>``),
    and ``references[i]``, the raw target text BLEU compares against."""

    def __init__(self, src: list[list[int]], tgt: list[list[int]], references: list[str], sources: list[str]):
        self.src, self.tgt, self.references, self.sources = src, tgt, references, sources

    def __len__(self) -> int:
        return len(self.src)

    def batch(self, indices: Sequence[int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(src (B, S), src_lengths (B,), tgt (B, T), index (B,))``, padded with 0."""
        src = [self.src[i] for i in indices]
        tgt = [self.tgt[i] for i in indices]
        src_lengths = torch.tensor([len(s) for s in src])
        src_t = torch.zeros(len(src), int(src_lengths.max()), dtype=torch.long)
        tgt_t = torch.zeros(len(tgt), max(len(t) for t in tgt), dtype=torch.long)
        for row, (s, t) in enumerate(zip(src, tgt)):
            src_t[row, :len(s)] = torch.tensor(s)
            tgt_t[row, :len(t)] = torch.tensor(t)
        return src_t, src_lengths, tgt_t, torch.tensor(list(indices))


def bucketed_batches(lengths: Sequence[int], batch_size: int, generator: Optional[torch.Generator]) -> list[list[int]]:
    """Batches of similar source length: with a generator, shuffle, sort within pools of
    50 batches by length, cut into batches and shuffle the batches (little padding, still
    random); without one, sort the whole split (evaluation order, least padding)."""
    if generator is None:
        order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    order = torch.randperm(len(lengths), generator=generator).tolist()
    pool = 50 * batch_size
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start:start + pool], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    permutation = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in permutation]


class BucketedStream(IterableDataset):
    """Endless training batches for ``rank`` of ``world_size``, epoch after epoch.

    Epoch ``e`` is ordered by ``seeded_generator(data_seed, stream, e)``; global batch
    ``k`` of an epoch goes to rank ``k % world_size``, so ranks never share a batch and a
    resumed run (``start_step``) sees the same batches as an uninterrupted one.
    """

    def __init__(self, data: Encoded, batch_size: int, make_generator, rank: int, world_size: int,
                 start_step: int = 0, num_batches: Optional[int] = None):
        self.data, self.batch_size, self.make_generator = data, batch_size, make_generator
        self.rank, self.world_size, self.start_step, self.num_batches = rank, world_size, start_step, num_batches
        self.lengths = [len(s) for s in data.src]

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("an endless BucketedStream has no length")
        return self.num_batches

    def __iter__(self) -> Iterator:
        step, epoch, produced = 0, 0, 0
        while self.num_batches is None or produced < self.num_batches:
            batches = bucketed_batches(self.lengths, self.batch_size, self.make_generator(epoch))
            mine = batches[self.rank::self.world_size]
            if not mine:
                raise ConfigError(f"task.batch_size={self.batch_size} leaves no training batch for rank "
                                  f"{self.rank} of {self.world_size}: the training set has {len(self.data)} pairs.")
            for indices in mine:
                if step >= self.start_step:
                    yield self.data.batch(indices)
                    produced += 1
                    if self.num_batches is not None and produced >= self.num_batches:
                        return
                step += 1
            epoch += 1
