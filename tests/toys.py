"""The tiny data and models the tests train (importable from any test: pytest's pythonpath
includes tests/, see pyproject.toml)."""

import torch
from torch import nn


def separable(n=256, seed=0, features=6):
    """`n` rows of Gaussian features; the label is whether feature 0 exceeds feature 1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    return x, (x[:, 0] - x[:, 1] > 0).long()


def mlp(*hidden, seed=0, features=6, classes=2, batchnorm=False):
    """A ReLU MLP with the given hidden widths, its weights drawn from `seed`."""
    torch.manual_seed(seed)
    layers, width = [], features
    for size in hidden:
        layers += [nn.Linear(width, size)] + ([nn.BatchNorm1d(size)] if batchnorm else []) + [nn.ReLU()]
        width = size
    return nn.Sequential(*layers, nn.Linear(width, classes))


def is_accuracy_over(rows, value):
    """True when `value` is a fraction k/rows (an accuracy counted over `rows` examples)."""
    return 0 <= value <= 1 and abs(value * rows - round(value * rows)) < 1e-6 * rows
