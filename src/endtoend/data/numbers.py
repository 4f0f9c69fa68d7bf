"""Number phrases, English -> German, written by num2words (the `translate` recipe's corpus).

German writes a whole number below a million as one compound word and says units before tens
("siebenundzwanzig" = seven-and-twenty), so translating needs reordering and compounding.
The German side is exactly what `num2words(n, lang="de")` writes, quirks included
(101001 -> "einhunderteinstausendeins"): the corpus is the generator's, not a grammar book's.

The split is by value, so no test number is ever seen in training, and its magnitudes are
mixed: a quarter of the test and validation numbers lie below 1,000, the rest are drawn
log-uniformly from 1,000-999,999 (as many with four digits as with six). `other_numbers`
draws a second test set elsewhere in the range (uniform over 0-999,999, another seed, never
trained on): the same quality there says the model learned the grammar, not the sampler.
"""

from __future__ import annotations

import re

import numpy as np
from num2words import num2words

LIMIT = 1_000_000  # German compounds stop at a million ("eine Million" is two words)


def english(n: int) -> str:
    """`num2words(n)` in the form both pipelines read: lower case, no commas, hyphens as spaces
    ("one thousand two hundred and thirty four")."""
    return normalise(num2words(n, lang="en"))


def german(n: int) -> str:
    return num2words(n, lang="de")


def normalise(text: str) -> str:
    """A source phrase as the models read it: what a user types ("Four hundred, and two",
    "twenty-one") becomes num2words' words in lower case, separated by single spaces."""
    return " ".join(re.sub(r"[,\-]", " ", text.lower()).split())


def _mixed(rng: np.random.Generator, count: int, taken: set[int]) -> list[int]:
    """`count` distinct numbers not in `taken`: a quarter below 1,000, the rest log-uniform in
    1,000-999,999."""
    small, picked = count // 4, []
    while len(picked) < small:
        n = int(rng.integers(0, 1000))
        if n not in taken:
            taken.add(n)
            picked.append(n)
    while len(picked) < count:
        n = int(10 ** rng.uniform(3, 6))
        if 1000 <= n < LIMIT and n not in taken:
            taken.add(n)
            picked.append(n)
    return picked


def number_splits(train: int = 24_000, val: int = 500, test: int = 1000, seed: int = 0) -> dict[str, list[int]]:
    """Disjoint sets of numbers. Test and validation are drawn first (mixed magnitudes); train
    is every remaining number below 1,000 plus numbers log-uniform in 1,000-999,999 up to
    `train` in all. The test set depends on `seed` and `test` only."""
    rng = np.random.default_rng(seed)
    taken: set[int] = set()
    test_numbers = _mixed(rng, test, taken)
    val_numbers = _mixed(rng, val, taken)
    train_numbers = [n for n in range(1000) if n not in taken][:train]
    rest = train - len(train_numbers)
    while rest > 0:
        n = int(10 ** rng.uniform(3, 6))
        if 1000 <= n < LIMIT and n not in taken:
            taken.add(n)
            train_numbers.append(n)
            rest -= 1
    return {"train": train_numbers, "val": val_numbers, "test": test_numbers}


def other_numbers(exclude: set[int], count: int = 500, seed: int = 12345) -> list[int]:
    """Numbers drawn uniformly over 0-999,999 (mostly six digits, unlike the log-uniform
    training draw), none of them in `exclude`."""
    rng = np.random.default_rng(seed)
    picked: list[int] = []
    seen = set(exclude)
    while len(picked) < count:
        n = int(rng.integers(0, LIMIT))
        if n not in seen:
            seen.add(n)
            picked.append(n)
    return picked


def pairs(numbers: list[int]) -> tuple[list[str], list[str]]:
    """(English phrases, German words) of `numbers`."""
    return [english(n) for n in numbers], [german(n) for n in numbers]
