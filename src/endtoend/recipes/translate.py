"""Translate: English number phrases to German, phrase-based SMT vs a neural encoder-decoder.

The corpus is num2words' (endtoend.data.numbers): "seven hundred and twelve thousand three
hundred and forty five" -> "siebenhundertzwölftausenddreihundertfünfundvierzig". German writes
the whole number as one word and says units before tens, so a translation must reorder and
compound. The split is by value: no test number is seen in training.

Data: train = 24,000 numbers (every number below 1,000 not held out, the rest log-uniform in
1,000-999,999; 2,000 of them with --small); val = 500 and test = 1,000 unseen numbers of mixed
magnitude (a quarter below 1,000), then 500 more drawn uniformly over 0-999,999 ("other": the
same quality there says the grammar was learned, not the sampler). `evaluate` scores the
first 1,000 as the test set and the last 500 as `*_other`.

Staged (translate_staged.PhraseBasedTranslator): a German compound splitter, IBM Model 1 word
alignment by EM, phrase extraction, a phrase table and a morpheme n-gram language model, a beam
decoder with limited reordering, then re-compounding: the separately built stages of
phrase-based statistical MT.
End-to-end (translate_models): a Transformer encoder-decoder from English subwords to German
subwords, one cross-entropy with teacher forcing, beam decoding; the variant "LSTM + attention"
is a bidirectional LSTM encoder with an attending LSTM decoder, the same training.

Metrics: `exact_match` (primary), chrF and BLEU (sacrebleu; BLEU over characters, since every
sentence is one German word, whose word BLEU is only exact match again).
`e2e predict RUN phrases.txt` translates one phrase per line; `--text "four hundred and two"`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from endtoend.data import Splits
from endtoend.data import numbers as corpus
from endtoend.errors import UsageError
from endtoend.recipes import translate_text as text
from endtoend.recipes.translate_models import LSTMTranslator, TransformerTranslator, beam, split

NAME = "translate"
DESCRIPTION = ("English number phrases -> German compounds (num2words), unseen numbers: phrase-based SMT "
               "(compound splitting, IBM-1, phrase table, n-gram LM, beam decoder) vs a Transformer and an LSTM")
METRIC = "exact_match"
HIGHER_IS_BETTER = True
FIT_TEST = False  # test rows hold only the source: teacher-forced logits mean nothing there
TIMING_ITEMS = 300  # beam search costs ~20-40 ms a phrase: time latency and throughput on 300 of 1,500

TEST, OTHER = 1000, 500
SMALL_TRAIN = 2000
BEAM = 4


class Translation(str):
    """A German word, with the cross-attention (target tokens x source tokens) that produced it
    and its tokens, for the report's attention maps."""

    attention: np.ndarray | None = None
    source_tokens: list[str] = []
    target_tokens: list[str] = []


@lru_cache(maxsize=None)
def numbers_of() -> dict[str, list[int]]:
    split_numbers = corpus.number_splits(val=500, test=TEST)
    seen = set().union(*split_numbers.values())
    return {**split_numbers, "other": corpus.other_numbers(seen, OTHER)}


@lru_cache(maxsize=None)
def phrases(split: str, small: bool = False) -> tuple[list[str], list[str]]:
    chosen = numbers_of()[split]
    if small:  # every 12th: numbers of every magnitude, not just the first ones
        chosen = chosen[::len(chosen) // SMALL_TRAIN][:SMALL_TRAIN]
    return corpus.pairs(chosen)


def load_data(small: bool = False) -> Splits:
    english, german = phrases("train", small)
    test_english = phrases("test")[0] + phrases("other")[0]
    test_german = phrases("test")[1] + phrases("other")[1]
    test_inputs, _ = text.pack(test_english)
    _, test_targets = text.pack(test_english, test_german)
    return Splits(train=text.pack(english, german), val=text.pack(*phrases("val")),
                  test=(test_inputs, test_targets))


class Texts:
    """A pipeline of strings seen through the packed rows: the staged translator reads and
    writes words, so its input rows are decoded to phrases and its targets to German words."""

    def __init__(self, translator):
        self.translator = translator

    def fit(self, inputs, targets):
        self.translator.fit(text.sources_of(inputs), text.targets_of(targets))
        return self

    def predict(self, inputs):
        return self.translator.predict(text.sources_of(inputs))


def staged_pipelines(seed: int = 0, small: bool = False) -> dict:
    from endtoend.recipes.translate_staged import PhraseBasedTranslator
    return {"phrase-based SMT": Texts(PhraseBasedTranslator(seed=seed, quick=small))}


def build_model(small: bool = False) -> nn.Module:
    return TransformerTranslator(width=64, layers=2) if small else TransformerTranslator(width=128, layers=3)


def sequence_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over every target token, padding ignored, with light label smoothing."""
    return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1), ignore_index=text.PAD,
                           label_smoothing=0.05)


def exact_match(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Rows whose every token is right under teacher forcing: exactly the rows greedy decoding
    gets right, since greedy then feeds itself the true prefix at every step."""
    wrong = (outputs.argmax(-1) != targets) & (targets != text.PAD)
    return (~wrong.any(-1)).float().mean()


exact_match.higher_is_better = True


def training(small: bool = False) -> dict:
    return dict(loss=sequence_loss, metrics={"exact_match": exact_match}, epochs=3 if small else 4,
                batch_size=128, lr=2e-3 if small else 1e-3, weight_decay=0.01, monitor="val_exact_match", clip=1.0)


def variants(small: bool = False) -> dict:
    width = 64 if small else 192
    settings = {**training(small), "epochs": 3 if small else 2}  # an LSTM step costs 2.5 times a Transformer's here
    return {"LSTM + attention": (lambda: LSTMTranslator(width=width), settings)}


def _words(tokens: torch.Tensor) -> list[str]:
    return [text.target_text(row) for row in tokens]


def predict(model: nn.Module, inputs: torch.Tensor) -> list:
    """Beam search (width 4) on each row's source; each word carries the attention it paid.
    A batch of files (N, K, S + T) from `e2e predict` gives one list of K words per file."""
    source, _ = split(inputs)
    tokens = beam(model, source, BEAM)
    prefix = torch.cat([torch.full_like(tokens[:, :1], text.BOS), tokens[:, :-1]], 1)
    _, attention = model.step(model.encode(source), source, prefix)
    vocab_en, vocab_de = text.tokenizers()
    out = []
    for i, word in enumerate(_words(tokens)):
        item = Translation(word)
        length, source_length = int((tokens[i] != text.PAD).sum()), int((source[i] != text.PAD).sum())
        item.attention = attention[i, :length, :source_length].float().cpu().numpy()
        item.source_tokens = [vocab_en.id_to_token(int(t)) for t in source[i, :source_length]]
        item.target_tokens = [vocab_de.id_to_token(int(t)) for t in tokens[i, :length]]
        out.append(item)
    if inputs.dim() == 3:
        per_file = inputs.shape[1]
        return [out[i:i + per_file] for i in range(0, len(out), per_file)]
    return out


def _scores(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    import sacrebleu
    return {"exact_match": float(np.mean([h == r for h, r in zip(hypotheses, references)])),
            "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score,
            "bleu_char": sacrebleu.corpus_bleu(hypotheses, [references], tokenize="char").score}


def evaluate(predictions, targets) -> dict[str, float]:
    """exact_match, chrf, bleu_char on the first 1,000 test items; the same with _other on
    the 500 drawn uniformly."""
    hypotheses, references = [str(p) for p in predictions], text.targets_of(targets)
    main = _scores(hypotheses[:TEST], references[:TEST])
    other = _scores(hypotheses[TEST:], references[TEST:]) if len(references) > TEST else {}
    return {**main, **{f"{k}_other": v for k, v in other.items()}}


def read_text(phrase: str) -> torch.Tensor:
    """One English phrase -> a packed row with an empty decoder part."""
    if not phrase.strip():
        raise UsageError("no phrase; give an English number phrase, e.g. 'four hundred and two'")
    try:
        return text.pack([phrase])[0][0]
    except ValueError as error:
        raise UsageError(str(error)) from None


def read_input(path) -> torch.Tensor:
    """A text file, one English phrase per line (blank lines skipped) -> (K, S + T) rows."""
    try:
        lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text; give one English number phrase per line") from None
    lines = [line for line in lines if line]
    if not lines:
        raise UsageError(f"{path}: no phrases; give one English number phrase per line, e.g. 'four hundred and two'")
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(text.pack([line])[0][0])
        except ValueError as error:
            raise UsageError(f"{path} line {number}: {error}") from None
    return torch.stack(rows)


def format_prediction(prediction, output) -> dict:
    words = prediction if isinstance(prediction, list) else [prediction]
    return {"translations": [str(w) for w in words]}


def report_figure(inputs, targets, predictions):
    from endtoend.recipes.translate_report import figure
    return figure(text.sources_of(inputs), text.targets_of(targets), predictions)
