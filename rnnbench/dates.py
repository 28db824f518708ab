"""Synthetic translation data: a date written in English words -> its ISO form.

``"the third of march two thousand and five"`` -> ``"2 0 0 5 - 0 3 - 0 3"``. No
download, seconds on a CPU, and still real alignment structure (each digit group comes
from a few source words) and reordering (day, month, year -> year, month, day). Dates
from 1900-01-01 to 2099-12-31 (29 February left out) in three styles (:func:`date_in_words`);
the target is character-level: its tokens are the characters of the ISO date, and its
reference text is those characters separated by spaces (:func:`iso_target`).
"""

from __future__ import annotations

import random

import torch

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


def synthetic_dates(n: int, generator: torch.Generator, exclude: frozenset = frozenset()) -> list[tuple[str, str]]:
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
