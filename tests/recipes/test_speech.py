"""The speech recipe: the CTC model's padding, WAV reading, and the --small comparison end to end."""

import json

import numpy as np
import pytest
import torch
from scipy.io import wavfile

from endtoend.cli import main
from endtoend.data import speech as audio
from endtoend.recipes import speech
from endtoend.recipes.speech_models import HOP, LogMel, SpeechCTC, ctc_loss, lengths_of


def test_lengths_end_at_the_last_non_zero_sample():
    waves = torch.zeros(3, 10, dtype=torch.int16)
    waves[0, :4] = 5
    waves[1, 2] = -1
    waves[1, 7] = 3
    assert lengths_of(waves).tolist() == [4, 8, 0]


def test_padding_is_blank_and_does_not_change_an_utterances_loss():
    torch.manual_seed(0)
    model = SpeechCTC(channels=8, width=32, blocks=1, attention_layers=1).eval()
    wave = (torch.randn(1, 16000) * 3000).to(torch.int16)
    wave[wave == 0] = 1
    padded = torch.cat([wave, torch.zeros(1, 8000, dtype=torch.int16)], 1)
    labels = torch.tensor([[3, 1, 4, 0, 0, 0, 0]])
    with torch.no_grad():
        alone, both = model(wave), model(torch.cat([padded, torch.cat([wave, wave[:, :8000]], 1)]))
    frames = alone.shape[1]
    assert torch.allclose(both[0, :frames], alone[0], atol=1e-4)
    assert (both[0, frames:, 0] == 0).all()  # log p(blank) = 0 past the end
    assert ctc_loss(both[:1], labels).item() == pytest.approx(ctc_loss(alone, labels).item(), rel=1e-4)


def test_digital_silence_reads_like_a_quiet_noise_floor():
    """Clean audio from elsewhere has exact silence around the speech, where training audio always
    has a noise floor; the log-mel floor makes both read alike (without it they differ by 0.23 on
    average here, with it by 0.03)."""
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    envelope = np.sin(np.pi * t) ** 2
    voiced = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.normal(size=16000)) * envelope
    clean = np.concatenate([np.zeros(8000), voiced, np.zeros(8000)])
    floored = clean + rng.normal(0, 10 ** (-50 / 20), len(clean))  # a noise floor at -50 dBFS
    waves = torch.tensor(np.stack([clean, floored]), dtype=torch.float32)
    frames = torch.full((2,), len(clean) // HOP + 1)
    features = LogMel()(waves, frames)
    assert (features[0] - features[1]).abs().mean() < 0.1


@pytest.mark.parametrize("rate,channels,dtype", [(16000, 1, np.int16), (44100, 2, np.int16), (8000, 1, np.uint8),
                                                 (22050, 2, np.float32), (48000, 1, np.int32)])
def test_any_wav_becomes_16khz_mono_int16(tmp_path, rate, channels, dtype):
    t = np.arange(rate) / rate
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    if dtype == np.uint8:
        samples = (tone * 127 + 128).astype(np.uint8)
    elif np.dtype(dtype).kind == "i":
        samples = (tone * np.iinfo(dtype).max).astype(dtype)
    else:
        samples = tone.astype(dtype)
    if channels == 2:
        samples = np.stack([samples, samples], 1)
    path = tmp_path / "a.wav"
    wavfile.write(path, rate, samples)
    wave = speech.read_input(path)
    assert wave.dtype == torch.int16 and wave.dim() == 1 and abs(len(wave) - 16000) <= 2
    assert 0.4 < wave.float().abs().max().item() / 32768 < 0.6  # the tone's own amplitude


def test_a_file_that_is_not_wav_is_one_line(tmp_path):
    path = tmp_path / "a.wav"
    path.write_text("not audio")
    with pytest.raises(speech.UsageError, match="not a readable WAV"):
        speech.read_input(path)


def test_small_compare_then_predict_wav_files(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compare", "speech", "--small", "--out", str(out), "--no-progress"]) == 0
    comparison = json.loads((out / "comparison.json").read_text())
    rows = {row["pipeline"]: row for row in comparison["rows"]}
    assert set(rows) == {"MFCC + GMM-HMM", "MFCC + hybrid MLP-HMM", "end-to-end"}
    for row in rows.values():
        assert "failed" not in row, row
        assert set(row["metrics"]) >= {"wer", "cer", "wer_other_voices", "cer_other_voices"}
    assert rows["MFCC + GMM-HMM"]["value"] < 0.8  # a working recogniser, even trained on 300 utterances
    assert "<h2>Examples</h2>" in (out / "report.html").read_text()
    capsys.readouterr()

    u = audio.utterance(2_000_000)
    path = tmp_path / "digits.wav"
    wavfile.write(path, 22050, np.stack([audio.resample(u.audio, 16000, 22050)] * 2, 1))  # stereo, 22.05 kHz
    assert main(["predict", str(out / "end-to-end" / "seed-0"), str(path), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert list(results[0]) == ["input", "text"]
    assert set(results[0]["text"].split()) <= set(audio.DIGITS)
