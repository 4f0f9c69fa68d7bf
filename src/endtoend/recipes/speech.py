"""Speech: spoken digit sequences, waveform to text; an HMM recogniser vs CTC from the waveform.

Audio (endtoend.data.speech): 1-7 digit words spoken by eSpeak NG in many English accents and
voice variants, 120-210 words a minute, pitch 20-80, connected or with pauses, silence around,
a random microphone tilt, white noise at 10-30 dB SNR; 16 kHz mono.

Data: train = 3,000 utterances (seeds 0-2,999; 300 with --small); val = 300 (seeds from
1,000,000); test = 500 utterances of the training voices (seeds from 2,000,000), then 300 of
voices never trained on (`OTHER_VOICES`: two held-out accents, Klatt's formant synthesis and
other variants; seeds from 3,000,000). `evaluate` scores the first 500 as the test set and the
rest as `*_other_voices`. Inputs are int16 waveforms padded with zeros, targets the digit
labels 1-10 padded with 0.

Staged (speech_staged.HMMRecognizer): MFCC features (librosa) -> per-state GMMs of word HMMs,
trained by flat start and Viterbi re-alignment on the transcripts -> Viterbi decoding through
a digit lexicon and a word-loop grammar; and the hybrid of the 2000s, an MLP on a window of
frames predicting the same HMM states in place of the GMMs.
End-to-end (speech_models.SpeechCTC): log-mel inside the network -> convolutions -> BiGRU ->
CTC, one loss from the waveform; decoded by CTC prefix beam search (relax.ctc_beam_decode).

Metrics (jiwer): `wer` (primary, lower is better), `cer`, and both on the other voices.
`e2e predict RUN a.wav ...` transcribes WAV files of any sample rate and channel count.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import nn

from endtoend.data import Splits
from endtoend.data import speech as audio
from endtoend.errors import UsageError
from endtoend.recipes.speech_models import SpeechCTC, ctc_loss

NAME = "speech"
DESCRIPTION = ("spoken digit sequences (eSpeak NG, many voices, noise) -> text: MFCC + GMM-HMM + lexicon + "
               "word-loop Viterbi vs log-mel + CNN + BiGRU trained by CTC from the waveform")
METRIC = "wer"
HIGHER_IS_BETTER = False
FIT_TEST = False  # the test split's second part is voices held out; evaluate scores both parts
TIMING_ITEMS = 200  # latency and throughput on 200 of the 800 test utterances

TRAIN, SMALL_TRAIN, VAL, TEST, OTHER = 3000, 300, 300, 500, 300
VAL_SEED, TEST_SEED, OTHER_SEED = 1_000_000, 2_000_000, 3_000_000
MAX_WORDS = 7
BEAM = 8


class Transcript(str):
    """A transcript, with the CTC log-probabilities it was read from (for the report)."""

    log_probs: np.ndarray | None = None


def pack(utterances: list) -> tuple[torch.Tensor, torch.Tensor]:
    """(int16 waveforms (N, longest) padded with zeros, labels (N, 7) of digit + 1, 0-padded)."""
    longest = max(len(u.audio) for u in utterances)
    waves = torch.zeros(len(utterances), longest, dtype=torch.int16)
    labels = torch.zeros(len(utterances), MAX_WORDS, dtype=torch.long)
    for i, u in enumerate(utterances):
        samples = np.clip(np.round(u.audio * 32767), -32767, 32767).astype(np.int16)
        samples[samples == 0] = 1  # an exact zero means padding (speech_models.lengths_of)
        waves[i, :len(samples)] = torch.from_numpy(samples)
        labels[i, :len(u.words)] = torch.tensor([audio.DIGITS.index(w) + 1 for w in u.words])
    return waves, labels


@lru_cache(maxsize=None)
def _split(name: str, small: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    if name == "train":
        return pack(audio.cached(list(range(SMALL_TRAIN if small else TRAIN)), None))
    if name == "val":
        return pack(audio.cached(list(range(VAL_SEED, VAL_SEED + VAL)), None))
    same = audio.cached(list(range(TEST_SEED, TEST_SEED + TEST)), None)
    other = audio.cached(list(range(OTHER_SEED, OTHER_SEED + OTHER)), audio.OTHER_VOICES)
    return pack(same + other)


def load_data(small: bool = False) -> Splits:
    return Splits(train=_split("train", small), val=_split("val"), test=_split("test"))


def texts_of(labels) -> list[str]:
    return [" ".join(audio.DIGITS[int(d) - 1] for d in row if int(d) > 0) for row in labels]


def waveforms_of(waves) -> list[np.ndarray]:
    """Padded int16 rows -> float32 waveforms of their own lengths."""
    out = []
    for row in np.asarray(waves):
        nonzero = np.flatnonzero(row)
        out.append(row[:nonzero[-1] + 1 if len(nonzero) else 0].astype(np.float32) / 32768.0)
    return out


class Waveforms:
    """The staged recogniser reads float waveforms and transcripts, not padded tensors."""

    def __init__(self, recogniser):
        self.recogniser = recogniser

    def fit(self, inputs, targets):
        self.recogniser.fit(waveforms_of(inputs), texts_of(targets))
        return self

    def predict(self, inputs):
        return self.recogniser.predict(waveforms_of(inputs))


def staged_pipelines(seed: int = 0, small: bool = False) -> dict:
    from endtoend.recipes.speech_staged import HMMRecognizer
    return {"MFCC + GMM-HMM": Waveforms(HMMRecognizer(seed=seed, quick=small)),
            "MFCC + hybrid MLP-HMM": Waveforms(HMMRecognizer(seed=seed, quick=small, frame_model="mlp"))}


def build_model(small: bool = False) -> nn.Module:
    return SpeechCTC(channels=16, width=64, blocks=1, attention_layers=1) if small else SpeechCTC()


class WordErrors:
    """WER of greedy CTC decoding over a whole split (an accumulator: errors and words summed)."""

    higher_is_better = False

    def reset(self):
        self.errors, self.words = 0, 0

    def update(self, outputs, targets):
        import jiwer
        from endtoend.relax import ctc_greedy_decode
        hypotheses = [" ".join(audio.DIGITS[d - 1] for d in labels)
                      for labels in ctc_greedy_decode(outputs.detach().transpose(0, 1).float())]
        references = texts_of(targets)
        measure = jiwer.process_words(references, [h or "<nothing>" for h in hypotheses])
        self.errors += measure.substitutions + measure.deletions + measure.insertions
        self.words += sum(len(r.split()) for r in references)

    def compute(self):
        return self.errors / max(self.words, 1)


def training(small: bool = False) -> dict:
    return dict(loss=ctc_loss, metrics={"wer": WordErrors()}, epochs=2 if small else 7, batch_size=32,
                lr=3e-3, weight_decay=0.01, monitor="val_wer", clip=5.0,
                channels_last=False)  # channels_last did not pay here (benchmarks/layout.py)


def predict(model: nn.Module, inputs: torch.Tensor) -> list:
    from endtoend.relax import ctc_beam_decode
    log_probs = model(inputs)
    labellings = ctc_beam_decode(log_probs.transpose(0, 1).float().cpu(), beam=BEAM)
    out = []
    for i, labels in enumerate(labellings):
        item = Transcript(" ".join(audio.DIGITS[d - 1] for d in labels))
        item.log_probs = log_probs[i].float().cpu().numpy()
        out.append(item)
    return out


def _rates(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    import jiwer
    hypotheses = [h if h.strip() else "<nothing>" for h in hypotheses]  # jiwer refuses empty strings
    return {"wer": jiwer.wer(references, hypotheses), "cer": jiwer.cer(references, hypotheses),
            "sentence_accuracy": float(np.mean([h == r for h, r in zip(hypotheses, references)]))}


def evaluate(predictions, targets) -> dict[str, float]:
    """wer, cer, sentence_accuracy on the first 500 test utterances (training voices); the same
    with _other_voices on the rest."""
    hypotheses, references = [str(p) for p in predictions], texts_of(targets)
    main = _rates(hypotheses[:TEST], references[:TEST])
    other = _rates(hypotheses[TEST:], references[TEST:]) if len(references) > TEST else {}
    return {**main, **{f"{k}_other_voices": v for k, v in other.items()}}


def read_input(path) -> torch.Tensor:
    """A WAV file of any sample rate, sample format and channel count -> int16 mono at 16 kHz."""
    from scipy.io import wavfile
    try:
        rate, samples = wavfile.read(path)
    except (ValueError, OSError, EOFError) as error:
        raise UsageError(f"{path}: not a readable WAV file ({error}); give a PCM or float WAV") from None
    samples = np.asarray(samples)
    if samples.size == 0:
        raise UsageError(f"{path}: holds no samples")
    if samples.dtype.kind in "iu":  # integer PCM at its full range; 8-bit WAV is unsigned, centred on 128
        info = np.iinfo(samples.dtype)
        half = (float(info.max) + 1) / (2 if samples.dtype.kind == "u" else 1)  # 32768 for int16, 128 for uint8
        centre = half if samples.dtype.kind == "u" else 0.0
        samples = (samples.astype(np.float64) - centre) / half
    samples = samples.astype(np.float32)
    if samples.ndim == 2:
        samples = samples.mean(1)
    samples = audio.resample(samples, int(rate))
    wave = np.clip(np.round(samples * 32767), -32767, 32767).astype(np.int16)
    wave[wave == 0] = 1
    return torch.from_numpy(wave)


def format_prediction(prediction, output) -> dict:
    return {"text": str(prediction)}


def report_figure(inputs, targets, predictions):
    from endtoend.recipes.speech_report import figure
    return figure(waveforms_of(inputs[:TEST]), texts_of(targets[:TEST]),
                  {name: list(p[:TEST]) for name, p in predictions.items()})
