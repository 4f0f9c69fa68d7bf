"""The speech recipe's report picture: spectrograms with the CTC alignment.

For three test utterances (short, middling, long): the log-mel spectrogram, and under it the
end-to-end model's per-frame posteriors (one line per digit, blank dashed), with each digit
written where its spike peaks: CTC's alignment is a few spiky frames per word, blank between.
The titles give the truth and every pipeline's transcript.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from endtoend.data.speech import DIGITS, RATE

SHOWN = 3


def _pick(references: list[str]) -> list[int]:
    order = sorted(range(len(references)), key=lambda i: len(references[i].split()))
    return [order[len(order) // 6], order[len(order) // 2], order[-1 - len(order) // 20]][:SHOWN]


def figure(waveforms: list[np.ndarray], references: list[str], predictions: dict) -> Figure:
    import librosa

    networks = [n for n, p in predictions.items() if len(p) and getattr(p[0], "log_probs", None) is not None]
    shown = _pick(references)
    fig = Figure(figsize=(5.0 * len(shown), 2.4 + 2.0 * len(networks)), layout="constrained")
    grid = fig.add_gridspec(1 + len(networks), len(shown), height_ratios=[2.4] + [2.0] * len(networks))
    for column, index in enumerate(shown):
        wave = waveforms[index]
        mel = librosa.power_to_db(librosa.feature.melspectrogram(y=wave, sr=RATE, n_fft=400, hop_length=160,
                                                                 n_mels=64), ref=np.max)
        seconds = len(wave) / RATE
        axes = fig.add_subplot(grid[0, column])
        axes.imshow(mel, origin="lower", aspect="auto", cmap="magma", extent=(0, seconds, 0, 64))
        said = "\n".join(f"{name}: {predictions[name][index]}" for name in predictions)
        axes.set_title(f"truth: {references[index]}\n{said}", fontsize=7)
        axes.set_ylabel("mel band", fontsize=7)
        for row, name in enumerate(networks, start=1):
            posteriors = np.exp(predictions[name][index].log_probs)
            frames = min(len(posteriors), int(np.ceil(seconds * RATE / 160 / 4)) + 1)
            posteriors = posteriors[:frames]
            time = np.arange(frames) * 4 * 160 / RATE
            axes = fig.add_subplot(grid[row, column])
            axes.plot(time, posteriors[:, 0], "k--", linewidth=0.6, label="blank")
            for digit in range(1, posteriors.shape[1]):
                axes.plot(time, posteriors[:, digit], linewidth=0.9)
            best = posteriors.argmax(1)
            for t in range(frames):
                if best[t] and (t == 0 or best[t - 1] != best[t]):
                    axes.annotate(DIGITS[best[t] - 1], (time[t], posteriors[t, best[t]]), fontsize=7,
                                  ha="center", va="bottom")
            axes.set_xlim(0, seconds)
            axes.set_ylim(0, 1.15)
            axes.set_ylabel(f"{name}\nCTC posterior", fontsize=7)
            axes.set_xlabel("seconds", fontsize=7)
    return fig
