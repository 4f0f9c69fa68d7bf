"""The speech recipe's end-to-end model: waveform -> log-mel -> convolutions -> attention -> CTC.

The front end is part of the network (and of the exported model): int16 samples at 16 kHz ->
a 25 ms / 10 ms short-time Fourier transform -> 64 mel bands (librosa's filter bank, fixed) ->
log, floored FLOOR_DB below the utterance's loudest band (digital silence in clean audio would
otherwise be log(1e-6), far below anything heard in training, and swamp the normalisation) ->
normalised per utterance over its own frames. Training adds channels the synthesiser
never makes (coloured noise, band-limiting: `_other_channels`) and SpecAugment-style masks
(a few bands, a few stretches of time). Two stride-2 convolutions bring it to 40 ms a frame;
residual depthwise-convolution blocks and two self-attention layers (a Conformer-lite) read
the sequence, and a linear layer scores blank + 10 digits per frame, trained by F.ctc_loss.
A bidirectional GRU in their place was 8x slower per step on 2 CPU cores for the same size.

Batches are padded with exact zeros; an utterance's length is up to its last non-zero sample
(the synthesised and recorded audio always has noise, so a true zero run at the end is padding
or digital silence, both of which are nothing to transcribe). Frames past an utterance's end
are forced to blank (log-probability 0), so one CTC loss over the padded length is exactly the
loss over each utterance's own frames, and decoding needs no lengths.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SAMPLE_RATE, WINDOW, HOP, MELS = 16_000, 400, 160, 64
CLASSES = 11  # blank + "zero" ... "nine"
SUBSAMPLING = 4
# the synthesised training audio's noise floor lies 40-50 dB below its loudest band (its 99th
# percentile is 51 dB down in a typical validation utterance): the floor sits at that level
FLOOR_DB = 50.0


def lengths_of(audio: torch.Tensor) -> torch.Tensor:
    """Samples up to and including each row's last non-zero sample."""
    nonzero = audio != 0
    last = audio.shape[1] - nonzero.flip(1).int().argmax(1)
    return torch.where(nonzero.any(1), last, torch.zeros_like(last))


class LogMel(nn.Module):
    def __init__(self):
        super().__init__()
        import librosa
        banks = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=WINDOW, n_mels=MELS, fmin=40, fmax=7600)
        self.register_buffer("banks", torch.tensor(banks, dtype=torch.float32), persistent=False)
        self.register_buffer("window", torch.hann_window(WINDOW), persistent=False)

    def forward(self, audio: torch.Tensor, frames: torch.Tensor, bins: torch.Tensor | None = None) -> torch.Tensor:
        """(N, samples) float -> (N, MELS, T) log-mel, normalised over each row's `frames`;
        `bins` (N,), in training, keeps only each row's first bins of the spectrum (band-limiting)."""
        # zeros beyond the ends, like the padding of a batch: an utterance alone or padded gives the same frames
        spectrum = torch.stft(audio, WINDOW, HOP, window=self.window, center=True, pad_mode="constant",
                              return_complex=True)
        power = spectrum.abs().pow(2)
        if bins is not None:
            power = power * (torch.arange(power.shape[1], device=power.device)[None, :, None] < bins[:, None, None])
        mel = torch.log(self.banks @ power + 1e-6)
        inside = torch.arange(mel.shape[2], device=mel.device)[None, :] < frames[:, None]
        valid = inside.float()[:, None, :]
        loudest = mel.masked_fill(~inside[:, None, :], float("-inf")).amax((1, 2), keepdim=True)
        mel = torch.maximum(mel, loudest - FLOOR_DB * math.log(10) / 10)
        count = valid.sum(2, keepdim=True).clamp(min=1)
        mean = (mel * valid).sum(2, keepdim=True) / count
        std = (((mel - mean) * valid).pow(2).sum(2, keepdim=True) / count).sqrt().clamp(min=1e-3)
        return (mel - mean) / std * valid


class ConvBlock(nn.Module):
    """A residual depthwise convolution over time (15 frames, 0.6 s) and a pointwise feed-forward:
    the convolution module of a Conformer, which hears a word's context cheaply."""

    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.depthwise = nn.Conv1d(width, width, 15, padding=7, groups=width)
        self.pointwise = nn.Sequential(nn.GELU(), nn.Linear(width, 2 * width), nn.GELU(), nn.Dropout(dropout),
                                       nn.Linear(2 * width, width))

    def forward(self, x, keep):
        """`keep` (N, T, 1) zeroes the frames past each utterance's end before the convolution
        reads them (a LayerNorm of zeros is its bias, not zero)."""
        h = self.depthwise((self.norm(x) * keep).transpose(1, 2)).transpose(1, 2)
        return (x + self.pointwise(h)) * keep


class SpeechCTC(nn.Module):
    """Conformer-lite: log-mel -> two stride-2 convolutions -> convolution blocks and
    self-attention layers over the 40 ms frames -> blank + 10 digit scores per frame."""

    def __init__(self, channels: int = 16, width: int = 144, blocks: int = 3, attention_layers: int = 2,
                 dropout: float = 0.1):
        super().__init__()
        self.front = LogMel()
        self.convolutions = nn.ModuleList(
            nn.Sequential(nn.Conv2d(inputs, channels, 3, stride=2, padding=1), nn.BatchNorm2d(channels), nn.GELU())
            for inputs in (1, channels))
        self.project = nn.Linear(channels * (MELS // SUBSAMPLING), width)
        self.blocks = nn.ModuleList(ConvBlock(width, dropout) for _ in range(blocks))
        # no dropout inside attention: on CPU its random masks cost a fifth of a training step
        layer = nn.TransformerEncoderLayer(width, 4, 2 * width, 0.0, batch_first=True, norm_first=True)
        self.attention = nn.TransformerEncoder(layer, attention_layers, enable_nested_tensor=False)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, CLASSES)

    def _other_channels(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training only: channels the synthesiser never makes. A third of the utterances get
        coloured noise (spectral slope 1/f^a, a uniform in [0, 2]: white to brown) at 5-30 dB
        SNR; a third are band-limited to 3.4-7.6 kHz (telephone and 8-16 kHz recordings
        resampled to 16 kHz have nothing above their Nyquist frequency). Without them a model
        trained on white noise at full band misread 8 kHz and brown-noise WAV files (WER 12%
        where the test split has 1%). Returns the audio and each row's spectrum bins to keep."""
        n, samples = audio.shape
        valid = (torch.arange(samples, device=audio.device)[None, :] < lengths[:, None]).float()
        slope = torch.rand(n, 1, device=audio.device) * 2
        frequencies = torch.arange(samples // 2 + 1, device=audio.device).clamp(min=1).float()
        noise = torch.fft.irfft(torch.fft.rfft(torch.randn_like(audio)) * frequencies ** (-slope / 2), n=samples)
        noise = noise - (noise * valid).sum(1, keepdim=True) / valid.sum(1, keepdim=True).clamp(min=1)
        signal_power = (audio.pow(2) * valid).sum(1) / valid.sum(1).clamp(min=1)
        noise_power = (noise.pow(2) * valid).sum(1) / valid.sum(1).clamp(min=1)
        snr = 10 ** ((5 + 25 * torch.rand(n, device=audio.device)) / 10)
        scale = (signal_power / (noise_power * snr)).sqrt() * (torch.rand(n, device=audio.device) < 1 / 3)
        audio = audio + scale[:, None] * noise * valid
        all_bins = WINDOW // 2 + 1
        cutoff = (3400 + 4200 * torch.rand(n, device=audio.device)) / (SAMPLE_RATE / WINDOW)
        bins = torch.where(torch.rand(n, device=audio.device) < 1 / 3, cutoff.long(), torch.full_like(cutoff.long(), all_bins))
        return audio, bins

    def _augment(self, mel: torch.Tensor) -> torch.Tensor:
        """Two band masks of up to 8 mels and two time masks of up to 20 frames per utterance."""
        n, bands, frames = mel.shape
        keep = torch.ones_like(mel)
        for size, axis, total in ((8, 1, bands), (20, 2, frames)):
            for _ in range(2):
                width = torch.randint(0, size + 1, (n, 1), device=mel.device)
                start = (torch.rand(n, 1, device=mel.device) * (total - width).clamp(min=1)).long()
                index = torch.arange(total, device=mel.device)[None, :]
                masked = (index >= start) & (index < start + width)
                keep = keep * (~masked[:, :, None] if axis == 1 else ~masked[:, None, :]).float()
        return mel * keep

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """(N, samples) int16 (or float in [-1, 1]) -> CTC log-probabilities (N, T, CLASSES)."""
        lengths = lengths_of(audio)
        audio = audio[:, :max(int(lengths.max()), WINDOW)]  # the batch's padding beyond its longest is free
        audio = audio.float() / 32768.0 if not audio.is_floating_point() else audio.float()
        frames = lengths // HOP + 1
        if self.training:
            audio, bins = self._other_channels(audio, lengths)
            mel = self._augment(self.front(audio, frames, bins))
        else:
            mel = self.front(audio, frames)
        # every layer that looks at neighbouring frames sees zeros past an utterance's end, so
        # padding in a batch changes nothing (tests/recipes/test_speech.py)
        x = mel.transpose(1, 2)[:, None]                                # (N, 1, T, MELS)
        for convolution in self.convolutions:
            x = convolution(x)
            frames = (frames + 1) // 2
            x = x * _valid(frames, x.shape[2])[:, None, :, None]
        x = self.project(x.permute(0, 2, 1, 3).flatten(2))             # (N, T/4, width)
        keep = _valid(frames, x.shape[1])[..., None]
        padding = keep[..., 0] == 0
        x = self.dropout(x) * keep
        for block in self.blocks:
            x = block(x, keep)
        x = self.attention(x, src_key_padding_mask=padding)
        log_probs = self.head(self.dropout(x)).log_softmax(-1)
        blank = torch.full_like(log_probs, float("-inf"))  # past the end: blank, surely
        blank[..., 0] = 0.0
        return torch.where(padding[..., None], blank, log_probs)


def _valid(frames: torch.Tensor, total: int) -> torch.Tensor:
    """(N, total) 1.0 on each row's first `frames` frames, 0.0 after."""
    return (torch.arange(total, device=frames.device)[None, :] < frames[:, None]).float()


def ctc_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """F.ctc_loss of (N, T, C) log-probabilities against (N, L) labels padded with 0 (blank),
    averaged over the target lengths (PyTorch's 'mean')."""
    lengths = (targets > 0).sum(1)
    frames = torch.full((outputs.shape[0],), outputs.shape[1], dtype=torch.long, device=outputs.device)
    return F.ctc_loss(outputs.transpose(0, 1).float(), targets, frames, lengths, blank=0, zero_infinity=True)
