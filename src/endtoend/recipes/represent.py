"""Represent: features learned without labels vs features engineered, on MNIST-5k, with few labels.

Data: mnist5k's splits (test 1,000 images, stratified, random_state=0; val 400; train 3,600, 600
with --small). Every row is trained at the label budgets `BUDGETS` (1%, 5%, 20%, 100% of the
training split: nested, stratified, the same items for every row; comparison.json's
`learning_curves`). The rows' own value is at 100%; the primary figure is accuracy at 5% (180
labelled images): the 0.05 point of each learning curve.

Unlabelled images are plentiful, labels are not: PCA, the autoencoder and the VAE are fitted on
every training image, whatever the budget, and never see a label, nor the val or test images.
They are learned once per (seed, small) in this process (represent_models.pretrain_once) and shared
by every row and budget that reads them. All codes have CODE = 32 numbers.

Staged (each logistic regression on standardised features, C picked on the validation split):
  PCA + logistic regression            32 principal components of the pixels
  HOG + logistic regression            hand-made gradient histograms (endtoend.recipes.staged.HOG)
  AE codes + logistic regression       the frozen autoencoder's codes: a linear probe
  VAE codes + logistic regression      the frozen VAE's mean codes: a linear probe
End-to-end (one cross-entropy from the pixels through the encoder and a linear head):
  end-to-end                           the autoencoder's encoder, fine-tuned with the head
  end-to-end: VAE encoder fine-tuned   the VAE's mean-code encoder, fine-tuned
  end-to-end: from scratch             the same network from random weights: what pretraining bought

The unsupervised models' own numbers (test reconstruction MSE of PCA, AE and VAE at 32 numbers,
the VAE's ELBO) are not predictions of a row: report.html's Examples figure shows them with
reconstructions, samples from the VAE's prior and a 2-D map of the test codes, and each probe
pipeline's `describe()` returns them. Train time: the first row that needs a pretrained model pays
for it, so the AE and VAE probe rows' train_seconds (at the full set, the first budget trained)
include the pretraining, and the fine-tuned rows' (fit's own time) do not.

Caveats. Only the staged rows pick a hyperparameter on the validation split (C); the end-to-end
rows' settings are fixed and val is only logged, so at 1% (36 labels) the staged rows lean on
val's 400 labels more. On --small (18 training steps) the end-to-end rows are a smoke test and
HOG + logistic regression wins every budget; where a staged row wins at full size, report.html's
crossover line says so and by how much.
`e2e predict` reads image files as 28x28 grey digits, like mnist5k. The fine-tuned models'
factories pretrain in a fresh process before the run's weights replace the pretrained ones
(seconds with --small; the autoencoder's full pretraining otherwise); see build_model.
"""

from __future__ import annotations

import functools

from sklearn.decomposition import PCA

from endtoend.data import Splits
from endtoend.recipes import mnist5k
from endtoend.recipes.mnist5k import read_input  # noqa: F401 - the recipe's, for e2e predict
from endtoend.recipes import represent_report
from endtoend.recipes.represent_models import (CODE, Classifier, LinearProbe, classifier, codes, latest,
                                               pretrain_autoencoder, pretrain_once, pretrain_vae, width_of)
from endtoend.recipes.staged import hog_features

NAME = "represent"
DESCRIPTION = ("MNIST-5k at 1-100% of the labels: PCA/HOG/AE/VAE features + logistic regression vs the AE or "
               "VAE encoder fine-tuned end to end")
METRIC = "accuracy"
HIGHER_IS_BETTER = True
BUDGETS = (0.01, 0.05, 0.2, 1.0)
CLASSES = 10


# mnist5k's own splits (its --small: the first 600 training images), read once per size
_splits = functools.lru_cache(maxsize=2)(mnist5k.load_data)


def load_data(small: bool = False) -> Splits:
    splits = _splits(small)
    return Splits(train=splits.train, val=splits.val, test=splits.test)


# --- the unsupervised models, each trained once per (seed, small) on every training image --------

def unsupervised(what: str, seed: int, small: bool):
    """The fitted "pca", "autoencoder" or "vae" (a represent_models.Pretrained: model, seconds)."""
    images = _splits(small).train[0]
    train = {"pca": lambda: PCA(CODE, random_state=seed).fit(images.reshape(len(images), -1).numpy()),
             "autoencoder": lambda: pretrain_autoencoder(images, seed, small),
             "vae": lambda: pretrain_vae(images, seed, small)}[what]
    return pretrain_once(what, seed, small, train)


def _probe(what: str, seed: int, small: bool) -> LinearProbe:
    """A linear probe on the frozen features of `what` ("hog": fixed, nothing to pretrain)."""
    def representation():  # what the probe reads through: a PCA, or an encoder (no decoder)
        model = unsupervised(what, seed, small).model
        return model if what == "pca" else model.encoder

    def features(images):
        if what == "hog":
            return hog_features(images.numpy())
        if what == "pca":
            return representation().transform(images.reshape(len(images), -1).numpy())
        return codes(representation(), images)

    def describe():
        if what == "hog":
            return {}
        found = unsupervised(what, seed, small)
        return {"pretrain_seconds": round(found.seconds, 2),
                **represent_report.scores(what, found.model, _splits(small).test[0])}

    return LinearProbe(features, lambda: _splits(small).val, seed=seed,
                       learned=(lambda: None) if what == "hog" else representation, describe=describe)


def staged_pipelines(seed: int = 0, small: bool = False) -> dict:
    return {
        "PCA + logistic regression": _probe("pca", seed, small),
        "HOG + logistic regression": _probe("hog", seed, small),
        "AE codes + logistic regression": _probe("autoencoder", seed, small),
        "VAE codes + logistic regression": _probe("vae", seed, small),
    }


# --- end to end: the same encoder, fine-tuned with a linear head by one cross-entropy -----------

def network(small: bool, encoder_of: str | None) -> Classifier:
    """The classifier, its encoder copied from the pretrained `encoder_of` ("autoencoder", "vae";
    None: random weights), pretrained first if this process has not yet (see classifier())."""
    encoder = (lambda seed: unsupervised(encoder_of, seed, small).model.encoder) if encoder_of else None
    return classifier(width_of(small), CLASSES, encoder)


def build_model(small: bool = False, pretrained: bool = True) -> Classifier:
    """The autoencoder's encoder + a linear head. pretrained=False skips the pretraining for a
    model whose weights are loaded next (e2e predict could pass it; see the module docstring)."""
    return network(small, "autoencoder" if pretrained else None)


def training(small: bool = False) -> dict:
    """The same for every end-to-end row: 10 epochs on the full set (compare gives each budget as
    many steps). No augmentation, as the staged rows have none: the rows differ in how the
    representation is used, nothing else. lr 3e-3: on 600 images (90 steps, a head without its
    BatchNorm) fine-tuning the AE encoder reached 0.91 at 3e-3 and 0.82 at 1e-3 (the probe on
    the same codes: 0.87)."""
    return dict(loss="cross_entropy", metrics=["accuracy"], epochs=2 if small else 10, batch_size=64, lr=3e-3,
                weight_decay=5e-4, schedule="one-cycle")


def variants(small: bool = False) -> dict:
    return {"VAE encoder fine-tuned": (lambda pretrained=True: network(small, "vae" if pretrained else None),
                                       training(small)),
            "from scratch": (lambda pretrained=True: network(small, None), training(small))}


def report_figure(inputs, targets, predictions):
    """Reconstructions, VAE prior samples and the 2-D code maps of the first seed's models."""
    found = {what: latest(what) for what in ("pca", "autoencoder", "vae")}
    return represent_report.figure({what: p.model for what, p in found.items()}, inputs, targets,
                                   {what: p.seconds for what, p in found.items()})


# --- e2e predict: PNG (or any image) files in, a label and its probabilities out ----------------
# (read_input is mnist5k's: any image file as a 28x28 grey digit)

def format_prediction(prediction, output) -> dict:
    return {"label": int(prediction), "probabilities": [round(p, 4) for p in output.softmax(-1).tolist()]}
