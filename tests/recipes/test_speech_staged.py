"""The speech recipe's staged recogniser: Viterbi against brute force, the word-loop and
forced-alignment graphs on hand-made HMMs, and a quick fit on real audio."""

import itertools

import jiwer
import numpy as np
import pytest

from endtoend.data import speech as audio
from endtoend.recipes.speech_staged import (
    DIGITS, HMMRecognizer, alignment_graph, decode, features, viterbi, word_loop_graph)


def _score(path, emissions, transitions, initial, final):
    return (initial[path[0]] + emissions[0, path[0]] + final[path[-1]]
            + sum(transitions[a, b] + emissions[t, b] for t, (a, b) in enumerate(zip(path, path[1:]), 1)))


@pytest.mark.parametrize("seed", range(8))
def test_viterbi_equals_brute_force_over_all_state_paths(seed):
    rng = np.random.default_rng(seed)
    S, T = 4, 5
    transitions = np.log(rng.dirichlet(np.ones(S), S))
    transitions[rng.random((S, S)) < 0.3] = -np.inf  # some links missing, as in a real graph
    emissions, final = rng.normal(size=(T, S)), rng.normal(size=S)
    initial = np.log(rng.dirichlet(np.ones(S)))
    scores = {p: _score(p, emissions, transitions, initial, final) for p in itertools.product(range(S), repeat=T)}
    best = max(scores, key=scores.get)
    path = viterbi(emissions, transitions, initial, final)
    if np.isfinite(scores[best]):
        assert scores[tuple(path)] == pytest.approx(scores[best])
    else:
        assert path is None


def _emissions(model_states, n_model):
    """Log likelihoods that pick `model_states` frame by frame: 0 for it, -10 for the others."""
    out = np.full((len(model_states), n_model), -10.0)
    out[np.arange(len(model_states)), model_states] = 0.0
    return out


# model states of a tiny system: silence 0, word 0 = states 1-2, word 1 = states 3-4
SIZES, STAY = [2, 2], np.log(np.full(5, 0.5))


def test_the_word_loop_recovers_a_hand_made_word_sequence():
    graph = word_loop_graph(SIZES, 1, STAY)
    # silence, word 1, word 0 straight after, a pause, word 1, word 1 again (a repeat), silence
    frames = [0, 0, 3, 3, 4, 1, 2, 2, 0, 0, 3, 4, 3, 4, 4, 0, 0]
    assert decode(graph, _emissions(frames, 5)) == [1, 0, 1, 1]
    assert decode(graph, _emissions([0, 0, 1, 2, 2], 5)) == [0]  # no trailing silence is fine


def test_the_insertion_penalty_trades_insertions_for_deletions():
    # a faint second word (its frames only slightly prefer word 0) inside a clear silence
    likelihoods = _emissions([0, 0, 3, 4, 0, 1, 2, 0, 0], 5)
    likelihoods[5:7] = [[-1.0, -0.5, -0.6, -9, -9], [-1.0, -0.6, -0.5, -9, -9]]
    assert decode(word_loop_graph(SIZES, 1, STAY, insertion_penalty=0.0), likelihoods) == [1, 0]
    assert decode(word_loop_graph(SIZES, 1, STAY, insertion_penalty=5.0), likelihoods) == [1]


@pytest.mark.parametrize("seed", range(4))
def test_forced_alignment_follows_the_transcript_whatever_the_emissions(seed):
    words = [1, 0, 0, 1]
    graph = alignment_graph(words, SIZES, 1, STAY)
    noise = np.random.default_rng(seed).normal(size=(40, 5)) * 3
    assert decode(graph, noise) == words
    path = viterbi(noise[:, graph.model_state], graph.log_transitions, graph.log_initial, graph.log_final)
    assert np.all(np.diff(path) >= 0)  # left to right: graph states never go back
    assert graph.model_state[path[0]] == 0 and graph.model_state[path[-1]] == 0  # silence at both ends
    assert viterbi(noise[:5, graph.model_state], graph.log_transitions, graph.log_initial,
                   graph.log_final) is None  # fewer frames than states: no alignment


@pytest.fixture(scope="module")
def data():
    return audio.utterances(range(200)), audio.utterances(range(2_000_000, 2_000_050))


@pytest.fixture(scope="module")
def quick(data):
    train, test = data
    return HMMRecognizer(seed=0, quick=True).fit([u.audio for u in train], [u.text for u in train]), test


def test_a_quick_fit_beats_the_trivial_baseline_by_far(quick):
    recogniser, test = quick
    references = [u.text for u in test]
    hypotheses = recogniser.predict([u.audio for u in test])
    assert all(set(h.split()) <= set(DIGITS) for h in hypotheses)
    # the trivial baseline, one word per utterance, scores WER 0.90 here
    assert jiwer.wer(references, ["one"] * len(test)) > 0.85
    assert jiwer.wer(references, [h or "<nothing>" for h in hypotheses]) < 0.15  # measured 0.014


def test_the_hybrid_mlp_hmm_fits_and_transcribes_too_on_the_gmm_systems_alignments(data, quick):
    train, test = data
    recogniser = HMMRecognizer(seed=0, quick=True, frame_model="mlp")
    recogniser.fit([u.audio for u in train], [u.text for u in train])
    hypotheses = recogniser.predict([u.audio for u in test])
    assert jiwer.wer([u.text for u in test], [h or "<nothing>" for h in hypotheses]) < 0.15  # measured 0.009
    # the GMM system of the same data and seed (the `quick` fit) aligned it: reused, not retrained
    assert recogniser.log[0] == ("GMM system", 0.0, "reused: trained by an earlier fit on the same data and seed")
    assert recogniser.gmms is quick[0].gmms and recogniser.mlp is not None and quick[0].mlp is None
    other_seed = HMMRecognizer(seed=1, quick=True).fit([u.audio for u in train[:60]], [u.text for u in train[:60]])
    assert other_seed.gmms is not quick[0].gmms and other_seed.log[0][0] == "features + flat start"


def test_a_bad_frame_model_or_transcript_is_refused():
    with pytest.raises(ValueError, match="frame_model"):
        HMMRecognizer(frame_model="dnn")
    with pytest.raises(ValueError, match="transcripts"):
        HMMRecognizer(quick=True).fit([np.zeros(16000, np.float32)], [""])


def test_forced_alignment_of_real_audio_puts_words_where_they_were_spoken(quick):
    recogniser, test = quick
    inside = []
    for u in test[:10]:
        states = recogniser.align(features(u.audio)[0], [DIGITS.index(w) for w in u.words])
        spoken = np.zeros(len(states), bool)
        for start, end in u.extents:  # samples -> 10 ms frames, with 30 ms of slack either side
            spoken[max(0, start // 160 - 3):end // 160 + 4] = True
        inside.append(spoken[states >= 3].mean())  # model states 0-2 are silence
    assert np.mean(inside) > 0.9

