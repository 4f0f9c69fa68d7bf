"""Bundled data sets as tensors, seeded splits, and on-device transforms (nn.Modules)."""

from endtoend.data.bundled import Splits, load_digits_images, load_mnist5k, stratified_splits
from endtoend.data.transforms import RandomAffine

__all__ = ["RandomAffine", "Splits", "load_digits_images", "load_mnist5k", "stratified_splits"]
