"""Bundled data sets as tensors, seeded splits, on-device transforms (nn.Modules), one image
file read as a model input (`read_image` grey, `read_rgb` colour), and the generated "shapes world" scenes for
segmentation and detection (`endtoend.data.shapes`)."""

from endtoend.data import shapes
from endtoend.data.bundled import Splits, load_digits_images, load_mnist5k, stratified_splits
from endtoend.data.images import read_image, read_rgb
from endtoend.data.transforms import RandomAffine

__all__ = ["RandomAffine", "Splits", "load_digits_images", "load_mnist5k", "read_image", "read_rgb", "shapes", "stratified_splits"]
