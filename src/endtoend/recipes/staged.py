"""Pieces shared by the staged (non-end-to-end) baselines: hand-crafted features as
scikit-learn steps. (Their learned numbers are counted by endtoend.recipes.contract.)"""

from __future__ import annotations

import numpy as np
from sklearn.preprocessing import FunctionTransformer


def flatten_images(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1)


def hog_features(images: np.ndarray, pixels_per_cell: int = 7, cells_per_block: int = 2,
                 orientations: int = 9) -> np.ndarray:
    """Histogram-of-oriented-gradients features (scikit-image), one row per image."""
    from skimage.feature import hog

    return np.stack([
        hog(image.squeeze(0), orientations=orientations, pixels_per_cell=(pixels_per_cell,) * 2,
            cells_per_block=(cells_per_block,) * 2, block_norm="L2-Hys")
        for image in images
    ])


def Flatten() -> FunctionTransformer:  # noqa: N802 - reads as a pipeline step
    return FunctionTransformer(flatten_images)


def HOG(**kwargs) -> FunctionTransformer:  # noqa: N802
    return FunctionTransformer(hog_features, kw_args=kwargs)
