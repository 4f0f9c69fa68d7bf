"""The speech recipe's audio: eSpeak NG through ctypes, seeded and varied (endtoend.data.speech)."""

import os

import numpy as np
import pytest

from endtoend.data import speech


@pytest.fixture(scope="module")
def some():
    return speech.utterances(range(12))


def test_utterances_are_seeded_and_the_cache_gives_back_the_same_samples(some, tmp_path, monkeypatch):
    again = speech.utterance(3)
    # the content follows the seed; eSpeak's own jitter moves its samples a little
    assert again.text == some[3].text and again.voice == some[3].voice
    assert abs(len(again.audio) - len(some[3].audio)) < 0.01 * len(some[3].audio)
    monkeypatch.setenv("E2E_CACHE", str(tmp_path))
    first = speech.cached([3, 4, 5], jobs=1)
    assert len(list((tmp_path / "speech").glob("*.npz"))) == 1
    second = speech.cached([3, 4, 5], jobs=1)
    for a, b in zip(first, second):
        assert np.array_equal(a.audio, b.audio) and a.extents == b.extents and a.words == b.words


def test_utterances_are_16khz_mono_in_range(some):
    for u in some:
        assert u.audio.dtype == np.float32 and u.audio.ndim == 1 and np.abs(u.audio).max() <= 1.0
        assert 1 <= len(u.words) <= 7 and set(u.words) <= set(speech.DIGITS)
        assert 0.5 < len(u.audio) / speech.RATE < 12
    assert len({u.voice for u in some}) > 6 and len({u.text for u in some}) == len(some)


def test_word_extents_are_ordered_and_hold_the_speech(some):
    for u in some:
        assert len(u.extents) == len(u.words)
        starts = [a for a, _ in u.extents]
        assert starts == sorted(starts) and all(0 <= a < b <= len(u.audio) for a, b in u.extents)
        inside = np.zeros(len(u.audio), bool)
        for a, b in u.extents:
            inside[a:b] = True
        # 10-30 dB SNR: the words carry far more power than the noise around them
        assert np.mean(u.audio[inside] ** 2) > 5 * np.mean(u.audio[~inside] ** 2)


def test_every_voice_exists_and_the_other_voices_are_never_trained_on():
    import espeakng_loader

    variants = os.path.join(espeakng_loader.get_data_path(), "voices", "!v")
    for accent, variant in [(a, "") for a in speech.ACCENTS] + list(speech.OTHER_VOICES):
        assert not variant or os.path.exists(os.path.join(variants, variant)), variant
        speech.ESpeak.get().say("one", accent + (f"+{variant}" if variant else ""))
    for variant in speech.VARIANTS:
        assert not variant or os.path.exists(os.path.join(variants, variant)), variant
    training = {(a, v) for a in speech.ACCENTS for v in speech.VARIANTS}
    assert not training & set(speech.OTHER_VOICES)
    with pytest.raises(ValueError, match="no voice"):
        speech.ESpeak.get().say("one", "xx-nonexistent")
    u = speech.utterance(5, voices=speech.OTHER_VOICES)
    assert tuple(u.voice.split("+")) in {(a, v) if v else (a,) for a, v in speech.OTHER_VOICES}


def test_resample_keeps_the_duration():
    tone = np.sin(np.arange(22050) / 22050 * 2 * np.pi * 440).astype(np.float32)
    out = speech.resample(tone, 22050)
    assert out.dtype == np.float32 and len(out) == 16000
