"""The translate recipe: packing, the models' decoders, and the --small comparison end to end."""

import json

import pytest
import torch

from endtoend.cli import main
from endtoend.recipes import translate
from endtoend.recipes import translate_text as text
from endtoend.recipes.translate_models import LSTMTranslator, TransformerTranslator, beam, greedy, split


def test_packed_rows_hold_the_source_then_the_teacher_forced_prefix():
    rows, labels = text.pack(["twenty seven", "one thousand and one"], ["siebenundzwanzig", "eintausendeins"])
    assert rows.shape == (2, text.SOURCE_LENGTH + text.TARGET_LENGTH) and labels.shape == (2, text.TARGET_LENGTH)
    source, prefix = split(rows)
    assert text.sources_of(rows) == ["twenty seven", "one thousand and one"]
    assert text.targets_of(labels) == ["siebenundzwanzig", "eintausendeins"]
    assert (prefix[:, 0] == text.BOS).all()
    shifted = labels[:, :-1] * (labels[:, :-1] != text.EOS)  # shifted by one, </s> dropped
    t = prefix.shape[1]
    assert torch.equal(prefix[:, 1:], shifted[:, :t - 1]) and (shifted[:, t - 1:] == text.PAD).all()
    assert source.shape[1] < text.SOURCE_LENGTH and (rows[:, source.shape[1]:text.SOURCE_LENGTH] == text.PAD).all()
    test_rows, _ = text.pack(["twenty seven"])
    assert (split(test_rows)[1] == text.PAD).all()  # a test row's decoder part is empty
    assert text.sources_of(text.pack(["Twenty-Seven,  fourty"])[0]) == ["twenty seven fourty"]  # unseen word: subwords


def test_the_shipped_vocabularies_cover_the_corpus_and_are_what_every_process_reads():
    # learned BPE differs from process to process (hash-ordered ties), so the vocabularies ship
    # with the package; a model trained in one process must read the same ids in another
    english, german = text.tokenizers()
    assert english.to_str() == json.loads(text.VOCABULARIES.read_text())["english"]
    assert english.get_vocab_size() <= text.SOURCE_VOCAB and german.get_vocab_size() == text.TARGET_VOCAB
    numbers_ = list(range(0, 1_000_000, 997)) + list(range(200))
    for n in numbers_:
        source, target = translate.corpus.english(n), translate.corpus.german(n)
        assert text.UNK not in text.source_ids(source) and text.UNK not in text.target_ids(target)
        assert text.target_text(text.target_ids(target)) == target
    assert max(len(text.source_ids(translate.corpus.english(n))) for n in numbers_) < text.SOURCE_LENGTH


# Built inside each test after seeding: an untrained model's logits are near ties, and a model
# initialised from whatever the RNG held at collection could flip an argmax between two kernels.
MODELS = {"transformer": lambda: TransformerTranslator(width=32, layers=1), "lstm": lambda: LSTMTranslator(width=32)}


@pytest.mark.parametrize("name", MODELS)
def test_beam_of_width_one_is_greedy_and_exact_match_is_greedys(name):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    rows, _ = text.pack(["four hundred and two", "ninety one", "six thousand"])
    source, _ = split(rows)
    tokens, attention = greedy(model, source)
    assert torch.equal(beam(model, source, width=1), tokens)
    assert attention.shape == (3, text.TARGET_LENGTH, text.SOURCE_LENGTH)
    # teacher forcing on the greedy output: every token right, so exact_match counts it right
    labels = tokens.clone()
    prefix = torch.cat([torch.full_like(labels[:, :1], text.BOS), labels[:, :-1]], 1)
    prefix[prefix == text.EOS] = text.PAD
    with torch.no_grad():
        logits = model(torch.cat([rows[:, :text.SOURCE_LENGTH], prefix], 1))
    assert translate.exact_match(logits, labels).item() == 1.0


@pytest.mark.parametrize("name", MODELS)
def test_a_phrase_scores_the_same_alone_and_in_a_batch_with_longer_phrases(name):
    # the batch is cut after its longest phrase, and the LSTM reads each phrase packed: the
    # other rows' lengths must change nothing
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    rows, labels = text.pack(["ninety one", "nine hundred and ninety nine thousand nine hundred and ninety nine"],
                             ["einundneunzig", "neunhundertneunundneunzigtausendneunhundertneunundneunzig"])
    with torch.no_grad():
        together, alone = model(rows), model(rows[:1])
    assert together.shape == (2, text.TARGET_LENGTH, text.TARGET_VOCAB) and alone.shape[1:] == together.shape[1:]
    length = int((labels[0] != text.PAD).sum())  # the positions the loss reads for the short phrase
    assert torch.allclose(together[0, :length], alone[0, :length], atol=1e-5)
    assert translate.exact_match(together[:1], labels[:1]) == translate.exact_match(alone, labels[:1])


def test_evaluate_scores_the_test_set_and_the_other_numbers_apart():
    references = [translate.corpus.german(n) for n in range(translate.TEST + 2)]
    _, labels = text.pack(["x"] * len(references), references)
    predictions = list(references)
    predictions[0] = "falsch"
    predictions[-1] = "falsch"
    scores = translate.evaluate(predictions, labels.numpy())
    assert scores["exact_match"] == pytest.approx(1 - 1 / translate.TEST)
    assert scores["exact_match_other"] == 0.5 and scores["chrf"] < 100


def test_small_compare_then_predict_files_and_text(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compare", "translate", "--small", "--out", str(out), "--no-progress"]) == 0
    comparison = json.loads((out / "comparison.json").read_text())
    rows = {row["pipeline"]: row for row in comparison["rows"]}
    assert set(rows) == {"phrase-based SMT", "end-to-end", "end-to-end: LSTM + attention"}
    for row in rows.values():
        assert "failed" not in row, row
        assert set(row["metrics"]) >= {"exact_match", "chrf", "bleu_char", "exact_match_other"}
    assert rows["phrase-based SMT"]["value"] > 0.5  # a working staged system, even trained on 2,000 pairs
    assert "<h2>Examples</h2>" in (out / "report.html").read_text()
    capsys.readouterr()

    phrases = tmp_path / "phrases.txt"
    phrases.write_text("four hundred and two\n\nTwenty-One\n")
    run = str(out / "end-to-end" / "seed-0")
    assert main(["predict", run, str(phrases), "--text", "seven", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["input"] for r in results] == [str(phrases), "seven"]
    assert len(results[0]["translations"]) == 2 and len(results[1]["translations"]) == 1
    assert all(isinstance(w, str) for r in results for w in r["translations"])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert main(["predict", run, str(empty)]) == 2
    assert "no phrases" in capsys.readouterr().err
    assert main(["predict", run, "--text", "  "]) == 2
    assert "error: --text '  ': no phrase; give an English number phrase" in capsys.readouterr().err
