"""A stub recipe for wiring tests, loaded by path (`e2e train tests/recipes/stub_recipe.py`):
300 rows of random tensors, a one-hidden-layer network, one epoch; trains in well under a second.
It sets no `lr`, on purpose: `e2e lr-find` must cope with a recipe that leaves it to `fit`."""

import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from endtoend.data import Splits

NAME = "stub"
DESCRIPTION = "300 random rows, two classes: logistic regression vs a tiny MLP"
METRIC = "accuracy"
HIGHER_IS_BETTER = True


def load_data(small: bool = False) -> Splits:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(300, 4, generator=generator)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return Splits(train=(x[:200], y[:200]), val=(x[200:250], y[200:250]), test=(x[250:], y[250:]))


def staged_pipelines(seed: int = 0) -> dict:
    return {"logistic regression": LogisticRegression()}


def build_model(small: bool = False) -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def training(small: bool = False) -> dict:
    return dict(loss="cross_entropy", metrics=["accuracy"], epochs=1, batch_size=50, device="cpu",
                layer_norms_every=None)


def build_pipeline(small: bool = False):
    from endtoend.pipeline import Pipeline, StageObjective

    layers = list(build_model(small))
    return Pipeline({"features": nn.Sequential(*layers[:2]), "classifier": nn.Sequential(*layers[2:])},
                    objectives={"features": StageObjective(nn.Linear(8, 4), loss="mse", target="inputs")})


def regime_training(small: bool = False):
    from endtoend.pipeline import RegimeTraining

    shared = training(small)
    shared.pop("epochs")
    return RegimeTraining(stage_epochs={"features": 1, "classifier": 1}, finetune_epochs=1, finetune_lr=1e-3,
                          fit=shared)
