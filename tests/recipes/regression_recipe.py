"""A user's recipe file for a regression task (`e2e compare tests/recipes/regression_recipe.py`),
written as an outside user would: only public endtoend names, torch, scikit-learn, numpy.

The task: read the frequency (cycles per window, 1.5 to 12) of a noisy sine of 64 samples with a
random amplitude, phase, offset and drift. Staged: hand-made spectral features + ridge (a
hand-built two-stage class, fed tensors), and a scikit-learn FunctionTransformer spectrum + ridge
(fed numpy). End-to-end: a small 1-D CNN from the raw samples. Scored by mean absolute error.
"""

import numpy as np
import torch
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_absolute_error, mean_squared_error
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from torch import nn

from endtoend.data import Splits

NAME = "sine-frequency"
DESCRIPTION = "frequency of noisy 64-sample sines: FFT features + ridge, spectrum + ridge vs a 1-D CNN"
METRIC = "mae"
HIGHER_IS_BETTER = False

LENGTH = 64
TRAIN, VAL, TEST = 600, 150, 200


def make_signals(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` signals of shape (1, LENGTH) and their frequencies, shape (count,), float32."""
    uniform = lambda low, high: low + (high - low) * torch.rand(count, 1, generator=generator)  # noqa: E731
    frequency, phase, amplitude = uniform(1.5, 12.0), uniform(0.0, 2 * np.pi), uniform(0.5, 1.5)
    offset, drift = uniform(-0.5, 0.5), uniform(-1.0, 1.0)
    t = torch.arange(LENGTH, dtype=torch.float32) / LENGTH
    signals = amplitude * torch.sin(2 * np.pi * frequency * t + phase) + offset + drift * (t - 0.5)
    signals = signals + 0.3 * torch.randn(count, LENGTH, generator=generator)
    return signals.unsqueeze(1), frequency.squeeze(1)


def load_data(small: bool = False) -> Splits:
    generator = torch.Generator().manual_seed(0)
    x, y = make_signals(TRAIN + VAL + TEST, generator)
    train = TRAIN // 3 if small else TRAIN  # small: fewer training signals, the same val and test
    return Splits(train=(x[:train], y[:train]), val=(x[TRAIN:TRAIN + VAL], y[TRAIN:TRAIN + VAL]),
                  test=(x[TRAIN + VAL:], y[TRAIN + VAL:]))


# --- staged ----------------------------------------------------------------------------------

def spectral_features(signals: torch.Tensor) -> np.ndarray:
    """Hand-made features, one row per signal: the FFT peak bin (DC left out), the peak refined
    by parabolic interpolation of the log magnitudes, the energy, and the zero crossings of the
    mean-removed signal."""
    x = signals.reshape(len(signals), -1).double()
    x = x - x.mean(dim=1, keepdim=True)
    magnitude = torch.fft.rfft(x).abs()[:, 1:]                      # bins 1 .. LENGTH/2
    peak = magnitude.argmax(dim=1).clamp(1, magnitude.shape[1] - 2)
    rows = torch.arange(len(x))
    left, centre, right = (magnitude[rows, peak + shift].clamp_min(1e-9).log() for shift in (-1, 0, 1))
    refined = peak + 1 + 0.5 * (left - right) / (left - 2 * centre + right).clamp(max=-1e-9)
    energy = (x ** 2).mean(dim=1)
    crossings = (torch.sign(x[:, 1:]) != torch.sign(x[:, :-1])).sum(dim=1) / 2
    return torch.stack([(peak + 1).double(), refined, energy, crossings], dim=1).numpy()


class FFTFeaturesRidge:
    """Two stages, not scikit-learn: spectral_features (fixed, hand-made) then a ridge fit on them.
    `e2e compare` hands it the split's tensors as they are."""

    def __init__(self, alpha: float = 1.0):
        self.scaler, self.ridge = StandardScaler(), Ridge(alpha=alpha)

    def fit(self, inputs: torch.Tensor, targets: torch.Tensor) -> "FFTFeaturesRidge":
        self.ridge.fit(self.scaler.fit_transform(spectral_features(inputs)), targets.numpy())
        return self

    def predict(self, inputs: torch.Tensor) -> np.ndarray:
        return self.ridge.predict(self.scaler.transform(spectral_features(inputs)))


def normalised_spectrum(signals: np.ndarray) -> np.ndarray:
    """The magnitude spectrum (DC left out) of each mean-removed signal, summing to 1."""
    x = signals.reshape(len(signals), -1)
    magnitude = np.abs(np.fft.rfft(x - x.mean(axis=1, keepdims=True)))[:, 1:]
    return magnitude / magnitude.sum(axis=1, keepdims=True)


def staged_pipelines(seed: int = 0) -> dict:
    return {
        "FFT features + ridge": FFTFeaturesRidge(alpha=1.0),
        "spectrum + ridge": make_pipeline(FunctionTransformer(normalised_spectrum), Ridge(alpha=1e-3)),
    }


# --- end-to-end ------------------------------------------------------------------------------

def build_model(small: bool = False) -> nn.Module:
    width = 8 if small else 16
    return nn.Sequential(
        nn.Conv1d(1, width, 7, padding=3), nn.BatchNorm1d(width), nn.ReLU(),
        nn.Conv1d(width, 2 * width, 5, padding=2, stride=2), nn.BatchNorm1d(2 * width), nn.ReLU(),
        nn.Conv1d(2 * width, 2 * width, 5, padding=2, stride=2), nn.BatchNorm1d(2 * width), nn.ReLU(),
        nn.Flatten(), nn.Linear(2 * width * LENGTH // 4, 1), nn.Flatten(0),  # -> (N,)
    )


def training(small: bool = False) -> dict:
    return dict(loss="l1", metrics=["mae"], epochs=8 if small else 30, batch_size=32, lr=1e-2,
                weight_decay=1e-4)


def predict(model: nn.Module, inputs: torch.Tensor) -> np.ndarray:
    return model(inputs).cpu().numpy()


def evaluate(predictions: np.ndarray, targets: np.ndarray) -> dict:
    return {"mae": float(mean_absolute_error(targets, predictions)),
            "rmse": float(np.sqrt(mean_squared_error(targets, predictions)))}
