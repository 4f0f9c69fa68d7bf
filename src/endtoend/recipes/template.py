"""My recipe: staged pipelines vs one end-to-end model, trained and scored on the same split.

`e2e new-recipe my_task.py` wrote this file. As it stands it is a complete recipe for
scikit-learn's wine data (178 wines, 13 chemical measurements, 3 cultivars); edit each part
for your own task. The contract (docs/recipes.md has the details):

  NAME, DESCRIPTION          what this is (shown in tables and reports)
  METRIC, HIGHER_IS_BETTER   the key of evaluate()'s dict that the comparison ranks on
  load_data(small)           -> Splits(train, val, test), each (inputs, targets)
  staged_pipelines(seed)     -> {name: object with fit(inputs, targets) and predict(inputs)}
  build_model(small)         -> the end-to-end nn.Module: raw inputs -> outputs
  training(small)            -> keyword arguments of endtoend.fit (loss, metrics, epochs, ...)
  predict, evaluate          optional: outputs -> predictions; predictions -> {metric: value}
  read_input, format_prediction   optional: one file -> one input; one prediction (and its raw output) -> JSON
small=True asks for a quick configuration (tests, smoke runs).

Run it:  e2e compare my_task.py                  (more: --seeds 0,1 --budgets 0.25,1.0)
Then:    e2e predict OUT/end-to-end/seed-0 one_wine.csv
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from torch import nn

from endtoend import UsageError
from endtoend.data import Splits

NAME = "wine"
DESCRIPTION = "178 wines, 13 measurements, 3 cultivars: scaler+LR, scaler+SVM vs an MLP on raw features"
METRIC = "accuracy"        # a key of evaluate()'s dict
HIGHER_IS_BETTER = True    # False for errors (mae, rmse, ...)

CLASSES = ("class_0", "class_1", "class_2")  # load_wine().target_names: the three cultivars
FEATURES = 13


def load_data(small: bool = False) -> Splits:
    """Seeded, stratified splits: 20% test, then 15% of the rest for validation.
    The test split must not depend on `small` or on the seed: every pipeline is scored on it."""
    x, y = load_wine(return_X_y=True)
    index = np.arange(len(y))
    rest, test = train_test_split(index, test_size=0.2, stratify=y, random_state=0)
    train, val = train_test_split(rest, test_size=0.15, stratify=y[rest], random_state=0)
    inputs = torch.tensor(x, dtype=torch.float32)   # tensors: fit's fast path;
    targets = torch.tensor(y, dtype=torch.long)     # long class indices for cross_entropy
    pick = lambda rows: (inputs[rows], targets[rows])  # noqa: E731
    return Splits(train=pick(train), val=pick(val), test=pick(test))  # 178 rows: small changes nothing


def staged_pipelines(seed: int = 0) -> dict:
    """The traditional baselines: a separate preprocessing stage, then a separate learner.
    scikit-learn objects get numpy arrays; any other object with fit/predict gets the split's
    inputs as they are. They are fitted on the training split only. To tune C, wrap a learner
    in GridSearchCV(..., {"C": [0.1, 1, 10]}): it picks C by cross-validation on that training
    data, never on the test split. Pass random_state=seed to learners that draw random numbers."""
    return {
        "scaler + logistic regression": make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000)),
        "scaler + SVM": make_pipeline(StandardScaler(), SVC(C=1.0)),
    }


def build_model(small: bool = False) -> nn.Module:
    """Raw measurements -> class scores. BatchNorm1d first learns the scaling that the staged
    pipelines do with StandardScaler, so the model takes the unscaled features."""
    width = 8 if small else 32
    return nn.Sequential(
        nn.BatchNorm1d(FEATURES),
        nn.Linear(FEATURES, width), nn.ReLU(),
        nn.Linear(width, len(CLASSES)),
    )


def training(small: bool = False) -> dict:
    """Keyword arguments of endtoend.fit (docs/training.md); device is left to fit ("auto")."""
    return dict(loss="cross_entropy", metrics=["accuracy"], epochs=5 if small else 60, batch_size=32,
                lr=1e-2, weight_decay=1e-4)


def predict(model: nn.Module, inputs: torch.Tensor) -> np.ndarray:
    """The model's outputs -> predictions of the staged pipelines' form (class indices).
    Called in eval mode, without gradients, with inputs on the model's device."""
    return model(inputs).argmax(dim=-1).cpu().numpy()


def evaluate(predictions: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Every metric over a whole split, for staged and end-to-end predictions alike (numpy)."""
    return {"accuracy": float(accuracy_score(targets, predictions)),
            "macro_f1": float(f1_score(targets, predictions, average="macro"))}


# --- for `e2e predict RUN_DIR FILE...` ------------------------------------------------------

def read_input(path: str) -> torch.Tensor:
    """One wine from a text file: its 13 measurements, comma-separated (as in load_wine)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            text = file.read()
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror}") from None
    fields = [field.strip() for field in text.replace("\n", ",").split(",") if field.strip()]
    if len(fields) != FEATURES:
        raise UsageError(f"{path} holds {len(fields)} values; a wine is {FEATURES} comma-separated numbers")
    try:
        values = torch.tensor([float(field) for field in fields], dtype=torch.float32)
    except ValueError:
        values = None
    if values is None or not torch.isfinite(values).all():
        raise UsageError(f"{path} holds a value that is not a finite number; a wine is {FEATURES} "
                         "comma-separated numbers")
    return values


def format_prediction(prediction, output) -> dict:
    """One item's prediction (and the model's raw output for it, here the logits) -> the fields
    `e2e predict` prints (JSON-able)."""
    label = int(prediction)
    probabilities = output.softmax(-1).tolist()
    return {"label": label, "class": CLASSES[label], "probability": round(probabilities[label], 4)}
