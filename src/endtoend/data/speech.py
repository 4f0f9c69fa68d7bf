"""Spoken digit sequences, synthesised offline with eSpeak NG (the `speech` recipe's audio).

The pip package espeakng-loader ships libespeak-ng and its voice data; it is driven here
through ctypes (a few functions of its C API), in-process and synchronously: about 10 ms an
utterance. Every utterance is seeded and varies widely, because a recogniser trained here
must hold on voices and synthesis paths it never heard:

- 1-7 words "zero" ... "nine";
- an English accent eSpeak NG ships and one of its voice variants (+f1 ... +m7, klatt, ...);
- speed 120-210 words a minute, pitch 20-80, pitch range 20-90;
- either the whole sequence in one go (eSpeak's own rhythm and intonation, a word gap of
  0-150 ms) or word by word with 0-400 ms of silence between them;
- 0.1-0.6 s of silence before and after, a random gain, a random spectral tilt, white noise
  at 10-30 dB SNR (relative to the speech's own power);
- 16 kHz mono (eSpeak speaks at 22,050 Hz; resampled by scipy's polyphase filter).

Each utterance comes with the sample extent of every word (from eSpeak's word events, trimmed
to the voiced part). `OTHER_VOICES` are never used for training: the recipe scores them
separately, as "other voices".

Seeded, up to eSpeak NG's own jitter: the words, voice, speed, pitch, gaps, silences, tilt
and noise follow the seed exactly, but eSpeak moves its phoneme boundaries by a few samples
from one call to the next (measured: lengths of one phrase vary by ~10 samples of 22,750, even
in fresh processes). So `cached(seeds)` keeps what it synthesised in a cache folder
(`E2E_CACHE`, default ~/.cache/endtoend), and every later run on the machine, `--resume`
included, reads the very same samples.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
from scipy.signal import lfilter, resample_poly

RATE = 16_000
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

ACCENTS = ("en", "en-us", "en-us-nyc", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan")
VARIANTS = ("", "f1", "f2", "f3", "f4", "f5", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8",
            "Alex", "Andy", "Annie", "anika", "aunty", "belinda", "benjamin", "boris", "caleb",
            "david", "ed", "edward", "grandma", "grandpa", "iven", "iven2", "john", "linda",
            "max", "michel", "norbert", "steph", "travis", "victor", "whisper", "zac")
# Held out from training: two accents and variants of other characters (Klatt's formant
# synthesiser is another synthesis path inside eSpeak NG).
OTHER_VOICES = (("en-029", ""), ("en-029", "f2"), ("en-gb-x-gbcwmd", "m3"), ("en-gb-x-gbcwmd", "Diogo"),
                ("en-us", "klatt"), ("en-us", "klatt3"), ("en", "klatt2"), ("en-gb-x-rp", "klatt4"),
                ("en-us", "Mr serious"), ("en", "robert"), ("en-gb-scotland", "Hugo"), ("en-us", "Storm"))


@dataclass
class Utterance:
    audio: np.ndarray              # float32, 16 kHz mono, in [-1, 1]
    words: list[str]               # the digit words spoken
    extents: list[tuple[int, int]]  # each word's [start, end) in samples
    voice: str                     # "en-us+f3"

    @property
    def text(self) -> str:
        return " ".join(self.words)


class _Event(ctypes.Structure):  # espeak_EVENT (speak_lib.h); the union `id` is one pointer wide
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_void_p)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))
_SYNCHRONOUS, _WORD_EVENT, _LIST_END = 2, 1, 0
_PARAM = {"rate": 1, "pitch": 3, "range": 4, "wordgap": 7}


class ESpeak:
    """The process's eSpeak NG engine (the library keeps global state, so one per process)."""

    _instance: ESpeak | None = None

    def __init__(self) -> None:
        import espeakng_loader
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data = os.path.dirname(espeakng_loader.get_data_path())
        self.rate = self.lib.espeak_Initialize(_SYNCHRONOUS, 0, data.encode(), 0)
        if self.rate <= 0:
            raise RuntimeError(f"eSpeak NG did not start (data at {data})")
        self._chunks: list[np.ndarray] = []
        self._words: list[int] = []
        self._callback = _CALLBACK(self._receive)  # kept alive: the library holds the pointer
        self.lib.espeak_SetSynthCallback(self._callback)

    @classmethod
    def get(cls) -> ESpeak:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def _receive(self, wav, count, events) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (count,)).copy())
        i = 0
        while events[i].type != _LIST_END:
            if events[i].type == _WORD_EVENT:
                self._words.append(events[i].sample)
            i += 1
        return 0

    def say(self, text: str, voice: str, **params: int) -> tuple[np.ndarray, list[int]]:
        """int16 samples at `self.rate` and the sample at which each word starts."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"eSpeak NG has no voice {voice!r}")
        for name, value in params.items():
            self.lib.espeak_SetParameter(_PARAM[name], int(value), 0)
        self._chunks, self._words = [], []
        data = text.encode()
        self.lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, 0, None, None)
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return audio, list(self._words)


def resample(audio: np.ndarray, rate: int, to: int = RATE) -> np.ndarray:
    """float32 audio at `rate` -> at `to` (polyphase filter)."""
    if rate == to:
        return audio.astype(np.float32)
    g = gcd(rate, to)
    return resample_poly(audio, to // g, rate // g).astype(np.float32)


def _voiced(audio: np.ndarray, start: int, end: int) -> tuple[int, int]:
    """[start, end) shrunk to where the 10 ms energy is within 35 dB of the segment's peak."""
    frame = RATE // 100
    piece = audio[start:end]
    if len(piece) < frame:
        return start, end
    energy = np.add.reduceat(piece.astype(np.float64) ** 2, np.arange(0, len(piece), frame))
    loud = np.flatnonzero(energy > energy.max() * 10 ** -3.5)
    return start + int(loud[0]) * frame, min(end, start + (int(loud[-1]) + 1) * frame)


def _speak(engine: ESpeak, words: list[str], voice: str, rng: np.random.Generator, params: dict) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Clean speech at 16 kHz and each word's voiced extent."""
    rate = engine.rate
    if rng.random() < 0.5:  # the whole sequence: eSpeak's connected rhythm
        raw, starts = engine.say(" ".join(words), voice, wordgap=int(rng.integers(0, 16)), **params)
        audio = resample(raw / 32768.0, rate)
        if len(starts) == len(words):
            bounds = [round(s * RATE / rate) for s in starts] + [len(audio)]
            return audio, [_voiced(audio, bounds[i], bounds[i + 1]) for i in range(len(words))]
    pieces, extents, at = [], [], 0  # word by word, with silences between
    for i, word in enumerate(words):
        raw, _ = engine.say(word, voice, wordgap=0, **params)
        piece = resample(raw / 32768.0, rate)
        if i:
            gap = np.zeros(int(rng.uniform(0, 0.4) * RATE), np.float32)
            pieces.append(gap)
            at += len(gap)
        start, end = _voiced(piece, 0, len(piece))
        pieces.append(piece)
        extents.append((at + start, at + end))
        at += len(piece)
    return np.concatenate(pieces), extents


def utterance(seed: int, voices: tuple[tuple[str, str], ...] | None = None, max_words: int = 7) -> Utterance:
    """One seeded utterance; `voices` (accent, variant) pairs to draw from, default every
    training accent with every variant."""
    rng = np.random.default_rng([seed, 2026])
    words = [DIGITS[d] for d in rng.integers(0, 10, int(rng.integers(1, max_words + 1)))]
    if voices is None:
        accent, variant = ACCENTS[rng.integers(len(ACCENTS))], VARIANTS[rng.integers(len(VARIANTS))]
    else:
        accent, variant = voices[rng.integers(len(voices))]
    voice = accent + (f"+{variant}" if variant else "")
    params = {"rate": int(rng.integers(120, 211)), "pitch": int(rng.integers(20, 81)), "range": int(rng.integers(20, 91))}
    speech, extents = _speak(ESpeak.get(), words, voice, rng, params)
    speech = lfilter([1.0, -rng.uniform(-0.6, 0.9)], [1.0], speech)  # spectral tilt: other microphones
    active = np.concatenate([speech[a:b] for a, b in extents])
    power = float(np.mean(active ** 2)) + 1e-12
    lead, tail = (int(rng.uniform(0.1, 0.6) * RATE) for _ in range(2))
    audio = np.concatenate([np.zeros(lead), speech, np.zeros(tail)])
    snr = rng.uniform(10, 30)
    audio = audio + rng.normal(0, np.sqrt(power / 10 ** (snr / 10)), len(audio))
    audio *= rng.uniform(0.1, 0.9) / max(np.abs(audio).max(), 1e-6)
    return Utterance(audio.astype(np.float32), words, [(a + lead, b + lead) for a, b in extents], voice)


def utterances(seeds, voices=None, max_words: int = 7) -> list[Utterance]:
    return [utterance(int(s), voices, max_words) for s in seeds]


GENERATOR_VERSION = 1  # bump when utterance() changes, so caches of the old audio are not read


def cache_folder() -> Path:
    return Path(os.environ.get("E2E_CACHE") or Path.home() / ".cache" / "endtoend") / "speech"


def cached(seeds: list[int], voices=None, jobs: int = 2) -> list[Utterance]:
    """`utterances(seeds, voices)`, synthesised once per machine (in `jobs` processes: eSpeak
    keeps global state, one engine per process) and read back from the cache afterwards."""
    key = hashlib.sha256(json.dumps([GENERATOR_VERSION, list(map(int, seeds)), voices]).encode()).hexdigest()[:20]
    path = cache_folder() / f"{key}.npz"
    if path.exists():
        try:
            return _read(path)
        except Exception:  # noqa: BLE001 - a damaged cache file is synthesised again
            pass
    from joblib import Parallel, delayed
    seeds = list(seeds)
    parts = Parallel(n_jobs=jobs)(delayed(utterances)(seeds[i::jobs], voices) for i in range(jobs))
    merged: list[Utterance] = [None] * len(seeds)  # type: ignore[list-item]
    for i, part in enumerate(parts):
        merged[i::jobs] = part
    _write(path, merged)
    return merged


def _write(path: Path, items: list[Utterance]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = [{"words": u.words, "extents": u.extents, "voice": u.voice, "length": len(u.audio)} for u in items]
    partial = path.with_suffix(".partial.npz")
    np.savez(partial, audio=np.concatenate([u.audio for u in items]), meta=json.dumps(meta))
    os.replace(partial, path)  # never a half-written cache file under the real name


def _read(path: Path) -> list[Utterance]:
    with np.load(path) as data:
        audio, meta = data["audio"], json.loads(str(data["meta"]))
    out, at = [], 0
    for m in meta:
        out.append(Utterance(audio[at:at + m["length"]], m["words"], [tuple(e) for e in m["extents"]], m["voice"]))
        at += m["length"]
    return out
