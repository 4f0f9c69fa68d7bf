"""The translate recipe's text side: subword vocabularies and the packed tensors a model reads.

Both sides are cut into byte-pair-encoding subwords learned on the training phrases (Hugging
Face `tokenizers`): English mostly into its words, with letters as the fallback for a word
never seen ("fourty" -> "fou rty"); German's one compound word into pieces such as
"siebenhundert", "und", "zig", learned from counts, not from a grammar. The merges depend only
on the training numbers, which do not depend on the seed; they were learned once and ship with
the package (translate_vocabularies.json), since the trainer is not deterministic from one
process to the next.

A model's input row is packed: SOURCE_LENGTH source tokens (then </s>, padded), followed by
TARGET_LENGTH tokens of the decoder's input, <s> and the target so far (teacher forcing). The
network is a conditional language model of the next German token given the source and the
tokens before, which is what teacher forcing trains. A test row's decoder part is empty
(padding): `predict` writes it token by token. Targets are the German tokens, then </s>,
padded with 0 (ignored by the loss).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch

from endtoend.data import numbers

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
SOURCE_VOCAB, TARGET_VOCAB = 128, 160
SOURCE_LENGTH, TARGET_LENGTH = 24, 24


VOCABULARIES = Path(__file__).with_name("translate_vocabularies.json")


@lru_cache(maxsize=None)
def tokenizers() -> tuple:
    """(English, German) tokenizers, read from the vocabularies shipped with the package.

    They are not learned at run time because `tokenizers`' BPE trainer breaks ties between
    equally frequent pairs in hash order, which Rust seeds per process: two processes learn two
    different vocabularies from the same phrases, and a model trained with one reads garbage
    through the other (`e2e predict` in a new process did). `learn_tokenizers()` made the file;
    `python -m endtoend.recipes.translate_text` makes it again."""
    from tokenizers import Tokenizer

    shipped = json.loads(VOCABULARIES.read_text())
    return Tokenizer.from_str(shipped["english"]), Tokenizer.from_str(shipped["german"])


def learn_tokenizers() -> tuple:
    """(English, German) BPE tokenizers learned on every 4th training phrase (6,000: the
    vocabulary is the same as from all of them, in a quarter of num2words' time)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    english, german = numbers.pairs(numbers.number_splits()["train"][::4])

    def learn(texts: list[str], size: int, words: bool) -> Tokenizer:
        # "##" marks a piece that continues a word, so that decoding restores the words
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>", continuing_subword_prefix="##"))
        tokenizer.decoder = decoders.WordPiece(prefix="##")
        if words:
            tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
            vocab_size=size, special_tokens=SPECIALS, show_progress=False, continuing_subword_prefix="##",
            initial_alphabet=list("abcdefghijklmnopqrstuvwxyzäöüß")))
        return tokenizer

    return learn(english, SOURCE_VOCAB, True), learn(german, TARGET_VOCAB, False)


def source_ids(phrase: str) -> list[int]:
    return tokenizers()[0].encode(numbers.normalise(phrase)).ids


def target_ids(word: str) -> list[int]:
    return tokenizers()[1].encode(word).ids


def target_text(ids) -> str:
    """Token ids -> the German word: the pieces joined, up to </s>."""
    vocab = tokenizers()[1]
    pieces = []
    for i in ids:
        i = int(i)
        if i == EOS:
            break
        if i > UNK:
            pieces.append(vocab.id_to_token(i).removeprefix("##"))
    return "".join(pieces)


def source_text(row) -> str:
    return tokenizers()[0].decode([int(i) for i in row if int(i) > UNK])


def pack(sources: list[str], targets: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs (N, SOURCE_LENGTH + TARGET_LENGTH), targets (N, TARGET_LENGTH)) long tensors;
    without `targets`, the decoder part and the targets are padding (a test row)."""
    rows = torch.zeros(len(sources), SOURCE_LENGTH + TARGET_LENGTH, dtype=torch.long)
    labels = torch.zeros(len(sources), TARGET_LENGTH, dtype=torch.long)
    for i, phrase in enumerate(sources):
        ids = source_ids(phrase) + [EOS]
        if len(ids) > SOURCE_LENGTH:
            raise ValueError(f"{phrase!r} is {len(ids) - 1} tokens; a number below a million is at most "
                             f"{SOURCE_LENGTH - 1}")
        rows[i, :len(ids)] = torch.tensor(ids)
        if targets is not None:
            out = target_ids(targets[i]) + [EOS]
            rows[i, SOURCE_LENGTH] = BOS
            rows[i, SOURCE_LENGTH + 1:SOURCE_LENGTH + len(out)] = torch.tensor(out[:-1])
            labels[i, :len(out)] = torch.tensor(out)
    return rows, labels


def sources_of(inputs) -> list[str]:
    """The source phrases of packed rows (for the staged pipelines, which read words)."""
    return [source_text(row[:SOURCE_LENGTH]) for row in inputs]


def targets_of(labels) -> list[str]:
    return [target_text(row) for row in labels]


if __name__ == "__main__":  # python -m endtoend.recipes.translate_text: learn the vocabularies again
    english_tokenizer, german_tokenizer = learn_tokenizers()
    VOCABULARIES.write_text(json.dumps({"english": english_tokenizer.to_str(), "german": german_tokenizer.to_str()}))
    print(f"wrote {VOCABULARIES}")
