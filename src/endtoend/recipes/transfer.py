"""Transfer: learn digits 0-4 with their labels, then digits 5-9 from few labels, on MNIST-5k.

Data: mnist5k's splits (random_state=0), each kept to the digits 5-9 and relabelled 0-4 (target i
is the digit i + 5): 1,800 training images (292 with --small), 200 val, 500 test. Every row is
trained at the label budgets `BUDGETS` (1%, 5%, 20%, 100% of the target training split: nested,
stratified, the same items for every row; comparison.json's `learning_curves`, drawn on one
plot in report.html). The rows' own value is at 100%; the primary figure is accuracy at 5%
(90 labelled images): the 0.05 point of each learning curve.

Source task: the training split's digits 0-4 with their labels (1,800 images; 308 with
--small), never val or test. The recipe's Classifier (represent_models: a conv encoder, 32-number
codes, a linear head) is trained on it by cross-entropy once per (seed, small) in this process and
shared by every row and budget. Supervised pretraining on related classes is the standard
transfer setting (an ImageNet model fine-tuned on your classes) and the stronger source here;
the label-free alternative, an autoencoder on every image, is what the `represent` recipe measures
with the same encoder.

Staged (standardised features -> logistic regression, C picked on the validation split):
  HOG + logistic regression                   hand-made features, no source task
  linear probe (frozen pretrained encoder)    the source encoder's codes, frozen
End-to-end (cross-entropy from the pixels; the same network and settings in every row):
  end-to-end                                  from scratch: random weights
  end-to-end: full fine-tune                  every layer from the source encoder at once
  end-to-end: progressive unfreezing          the head alone, then also the top block (the last conv
                                              block and the code layer), then everything
                                              (Progressive(unfreeze=...) at epochs 0, 2, 4 of 10)
At a budget below 100%, compare gives as many steps as the full set by multiplying the epochs,
and stretches the unfreezing epochs by the same factor, so each phase keeps its share of the
steps. Train time: the probe row's train_seconds at the full set (the first budget trained)
include the source pretraining; the fine-tuned rows' (fit's own time) do not. Only the staged
rows pick a hyperparameter (C) on the validation split; the end-to-end settings are fixed. On
--small, HOG + logistic regression wins every budget; at full size report.html's crossover line
says where from-scratch catches up with the best staged row, or by how much it trails.
`e2e predict` reads image files as 28x28 grey digits and prints the digit, 5-9 (a fine-tuned
row's factory pretrains the source model first in a fresh process; the main row has nothing to
pretrain).
"""

from __future__ import annotations

import functools

import torch

from endtoend.data import Splits
from endtoend.recipes import mnist5k
from endtoend.recipes.mnist5k import read_input  # noqa: F401 - the recipe's, for e2e predict
from endtoend.recipes.represent_models import (LinearProbe, classifier, codes, pretrain_classifier, pretrain_once,
                                               width_of)
from endtoend.recipes.staged import hog_features
from endtoend.train.options import Progressive

NAME = "transfer"
DESCRIPTION = ("MNIST-5k digits 5-9 at 1-100% of the labels after pretraining on digits 0-4: HOG+LR and a "
               "linear probe vs from scratch, full and progressive fine-tuning")
METRIC = "accuracy"
HIGHER_IS_BETTER = True
BUDGETS = (0.01, 0.05, 0.2, 1.0)
SOURCE_DIGITS, TARGET_DIGITS = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
FIRST_TARGET = TARGET_DIGITS[0]


# mnist5k's own splits (its --small: the first 600 training images), read once per size
_splits = functools.lru_cache(maxsize=2)(mnist5k.load_data)


def _digits(pair: tuple, digits: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The items of `pair` showing one of `digits`, relabelled 0, 1, ... in that order."""
    images, labels = pair
    keep = (labels >= digits[0]) & (labels <= digits[-1])
    return images[keep], labels[keep] - digits[0]


def load_data(small: bool = False) -> Splits:
    splits = _splits(small)
    return Splits(train=_digits(splits.train, TARGET_DIGITS), val=_digits(splits.val, TARGET_DIGITS),
                  test=_digits(splits.test, TARGET_DIGITS))


def source(small: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The source task: the training split's digits 0-4, every one labelled."""
    return _digits(_splits(small).train, SOURCE_DIGITS)


def pretrained_encoder(seed: int, small: bool):
    """The source classifier's encoder, trained on the first call for (seed, small) only."""
    found = pretrain_once("source classifier", seed, small,
                       lambda: pretrain_classifier(*source(small), len(SOURCE_DIGITS), seed, small))
    return found.model.encoder, found.seconds


def staged_pipelines(seed: int = 0, small: bool = False) -> dict:
    validation = lambda: load_data(small).val  # noqa: E731 - deterministic; never the test split
    encoder = lambda: pretrained_encoder(seed, small)[0]  # noqa: E731 - pretrained when first fitted
    return {
        "HOG + logistic regression": LinearProbe(lambda images: hog_features(images.numpy()), validation, seed=seed),
        "linear probe (frozen pretrained encoder)": LinearProbe(
            lambda images: codes(encoder(), images), validation, seed=seed, learned=encoder,
            describe=lambda: {"pretrain_seconds": round(pretrained_encoder(seed, small)[1], 2)}),
    }


# --- end to end: the same Classifier, from random weights or from the source encoder ----------

def network(small: bool, from_source: bool):
    encoder = (lambda seed: pretrained_encoder(seed, small)[0]) if from_source else None
    return classifier(width_of(small), len(TARGET_DIGITS), encoder)


def build_model(small: bool = False):
    """From scratch: the main row, so the crossover says when the staged rows stop winning."""
    return network(small, from_source=False)


def training(small: bool = False) -> dict:
    """The same for every end-to-end row (3 epochs with --small, so progressive unfreezing has
    its three phases); no augmentation, as the staged rows have none."""
    return dict(loss="cross_entropy", metrics=["accuracy"], epochs=3 if small else 10, batch_size=64, lr=3e-3,
                weight_decay=5e-4, schedule="one-cycle")


def unfreezing(small: bool) -> Progressive:
    """Head first, then the top block (the code layer and the last conv block), then all."""
    top = ["encoder.code.", "encoder.trunk.2."]
    return Progressive(unfreeze={0: ["head."], 1: top, 2: [""]} if small else {0: ["head."], 2: top, 4: [""]})


def variants(small: bool = False) -> dict:
    return {"full fine-tune": (lambda pretrained=True: network(small, from_source=pretrained), training(small)),
            "progressive unfreezing": (lambda pretrained=True: network(small, from_source=pretrained),
                                       {**training(small), "progressive": unfreezing(small)})}


# --- e2e predict: PNG (or any image) files in, a digit 5-9 out ----------------------------------
# (read_input is mnist5k's: any image file as a 28x28 grey digit)

def format_prediction(prediction, output) -> dict:
    """The digit (5-9, not the model's class index 0-4) and each digit's probability."""
    probabilities = output.softmax(-1).tolist()
    return {"digit": int(prediction) + FIRST_TARGET,
            "probabilities": {str(digit): round(p, 4) for digit, p in zip(TARGET_DIGITS, probabilities)}}
