"""Digits: scikit-learn's 1,797 8x8 handwritten digits.

Test split: 20%, stratified, random_state=0; 10% of the rest for validation.
Staged: raw pixels + logistic regression, PCA + SVM. End-to-end: a small CNN from pixels.
`e2e predict` reads image files (any size and mode) as 8x8 grayscale digits.
"""

from __future__ import annotations

from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.svm import SVC
from torch import nn

from endtoend.data import RandomAffine, Splits, load_digits_images, read_image, stratified_splits
from endtoend.recipes.staged import Flatten

NAME = "digits"
DESCRIPTION = "1,797 8x8 digits (scikit-learn): pixels+LR, PCA+SVM vs a small CNN from pixels"
METRIC = "accuracy"
HIGHER_IS_BETTER = True


def load_data(small: bool = False) -> Splits:
    splits = stratified_splits(*load_digits_images(), test=0.2, val=0.1, random_state=0)
    if small:
        splits.train = (splits.train[0][:512], splits.train[1][:512])
    return splits


def staged_pipelines(seed: int = 0) -> dict:
    return {
        "raw pixels + logistic regression": make_pipeline(Flatten(), LogisticRegression(max_iter=2000)),
        "PCA + SVM": make_pipeline(Flatten(), PCA(n_components=32, random_state=seed), SVC(C=10)),
    }


def build_model(small: bool = False) -> nn.Module:
    width = 8 if small else 32
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(2 * width, 10),
    )


def training(small: bool = False) -> dict:
    return dict(
        loss="cross_entropy", metrics=["accuracy"], epochs=3 if small else 20, batch_size=32,
        lr=3e-3, weight_decay=5e-4, schedule="one-cycle",
        transforms=RandomAffine(degrees=8, scale=0.08, translate=0.1),
    )


# --- e2e predict: PNG (or any image) files in, a label and its probabilities out ----------------

def read_input(path: str):
    """One image file as the recipe's data is: grayscale, 8x8, light digit on dark, in [0, 1]."""
    return read_image(path, size=(8, 8))


def format_prediction(prediction, output) -> dict:
    """The predicted label and the model's class probabilities (softmax of its logits)."""
    return {"label": int(prediction), "probabilities": [round(p, 4) for p in output.softmax(-1).tolist()]}

# --- the same CNN as named stages, for `e2e compare digits --regimes ...` ---------------------

def build_pipeline(small: bool = False):
    """build_model's CNN cut in two stages (the same layer objects, so the same initial weights
    for a given seed): "features" (8x8 -> 4x4 maps), learned on its own as an autoencoder;
    "classifier", the head. The decoder is built after the CNN, so the CNN's draws come first."""
    from endtoend.pipeline import Pipeline, StageObjective

    layers = list(build_model(small))  # re-wrapped below: stage layers numbered from 0
    width = layers[0].out_channels
    features, classifier = nn.Sequential(*layers[:7]), nn.Sequential(*layers[7:])
    decoder = nn.Sequential(nn.ConvTranspose2d(2 * width, width, 2, stride=2), nn.BatchNorm2d(width), nn.ReLU(),
                            nn.Conv2d(width, 1, 3, padding=1))  # logits of the pixels in [0, 1]
    return Pipeline({"features": features, "classifier": classifier},
                    objectives={"features": StageObjective(decoder, loss="bce_with_logits", target="inputs")})


def regime_training(small: bool = False):
    """Epochs per regime (see endtoend.pipeline.RegimeTraining): staged 8 + 6, staged+joint
    adds a 6-epoch fine-tune at lr 1e-3, joint trains 20 epochs (as `training`) from scratch."""
    from endtoend.pipeline import RegimeTraining

    shared = training(small)
    shared.pop("epochs")
    return RegimeTraining(stage_epochs={"features": 1 if small else 8, "classifier": 1 if small else 6},
                          finetune_epochs=1 if small else 6, finetune_lr=1e-3, fit=shared)
