"""Metrics are accumulators over a whole split: exact corpus values, directions for `monitor`."""

import functools
import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import endtoend
from endtoend.errors import UsageError
from endtoend.train.checkpoint import weights_sha256
from endtoend.train.evaluate import evaluate
from endtoend.train.metrics import (Accuracy, BatchMean, MeanAbsoluteError, direction, metric,
                                    resolve_metrics)
from toys import mlp, separable

mlp = functools.partial(mlp, 16)
QUIET = dict(progress=False, audit="off", device="cpu")
pytestmark = pytest.mark.usefixtures("one_thread_and_no_report")


class Precision:
    """Precision of class 1, TP / predicted positives: a ratio of sums, whose batch mean is wrong."""

    higher_is_better = True

    def reset(self):
        self.true_positives, self.predicted = 0, 0

    def update(self, outputs, targets):
        predicted = outputs.argmax(-1) == 1
        self.true_positives += int((predicted & (targets == 1)).sum())
        self.predicted += int(predicted.sum())

    def compute(self):
        return self.true_positives / self.predicted


def precision_of(outputs, targets):
    predicted = outputs.argmax(-1) == 1
    return (predicted & (targets == 1)).sum().double() / predicted.sum()


class Rows:
    """How many rows the metric saw since its last reset."""

    higher_is_better = None

    def reset(self):
        self.rows = 0

    def update(self, outputs, targets):
        self.rows += len(targets)

    def compute(self):
        return float(self.rows)


class Identity(nn.Module):
    def forward(self, x):
        return x


def uneven_batches():
    """Fixed two-class scores in batches of 5, 1 and 2 rows, and the same rows in one piece."""
    outputs = torch.tensor([[0.0, 1], [0, 1], [1, 0], [0, 1], [1, 0], [0, 1], [0, 1], [1, 0]])
    targets = torch.tensor([1, 0, 0, 1, 1, 0, 1, 1])
    cuts = [(0, 5), (5, 6), (6, 8)]
    return [(outputs[a:b], targets[a:b]) for a, b in cuts], outputs, targets


def test_a_corpus_metric_is_its_value_over_the_whole_split_not_a_mean_of_batch_values():
    batches, outputs, targets = uneven_batches()
    corpus = precision_of(outputs, targets).item()          # 3 true positives of 5 predicted: 0.6
    values = evaluate(Identity(), batches, lambda o, t: o.sum() * 0, {"precision": Precision(),
                                                                    "batch_mean": BatchMean(precision_of)})
    assert corpus == pytest.approx(0.6)
    assert values["precision"] == pytest.approx(corpus, abs=1e-15)
    # batches: 2/3 (5 rows), 0/1 (1 row), 1/1 (2 rows): the row-weighted mean of those is 2/3
    assert values["batch_mean"] == pytest.approx(2 / 3) and values["batch_mean"] != pytest.approx(corpus)


def test_batch_mean_weights_each_batch_by_its_rows():
    mean_target = BatchMean(lambda o, t: t.double().mean())
    mean_target.reset()
    mean_target.update(torch.zeros(3, 1), torch.tensor([1.0, 1.0, 1.0]))
    mean_target.update(torch.zeros(1, 1), torch.tensor([5.0]))
    assert float(mean_target.compute()) == 2.0  # the mean over 4 rows, not (1 + 5) / 2
    mean_target.reset()
    mean_target.update(torch.zeros(1, 1), torch.tensor([7.0]))
    assert float(mean_target.compute()) == 7.0  # reset forgets the earlier batches


def test_builtin_accuracy_and_mae_are_exact_over_uneven_batches():
    batches, outputs, targets = uneven_batches()
    values = evaluate(Identity(), batches, lambda o, t: o.sum() * 0, {"accuracy": Accuracy()})
    assert values["accuracy"] == (outputs.argmax(-1) == targets).double().mean().item() == 4 / 8
    g = torch.Generator().manual_seed(0)
    predictions, truth = torch.randn(101, 3, generator=g), torch.randn(101, 3, generator=g)
    pieces = [(predictions[a:b], truth[a:b]) for a, b in [(0, 64), (64, 100), (100, 101)]]
    values = evaluate(Identity(), pieces, lambda o, t: o.sum() * 0, {"mae": MeanAbsoluteError()})
    assert values["mae"] == pytest.approx((predictions - truth).abs().double().mean().item(), rel=1e-13)


def test_fit_reports_accuracy_and_mae_over_the_whole_split():
    x, y = separable(300)
    vx, vy = separable(100, seed=1)  # evaluated in batches of 4 * 16 = 64 and 36 rows
    run = endtoend.fit(mlp(), (x, y), val=(vx, vy), test=(vx[:77], vy[:77]), metrics=["accuracy"], epochs=2,
                       batch_size=16, lr=1e-2, **QUIET)
    with torch.no_grad():
        val_hits, test_hits = run.model(vx).argmax(-1) == vy, run.model(vx[:77]).argmax(-1) == vy[:77]
    assert run.metrics["val_accuracy"] == val_hits.double().mean().item()
    assert run.metrics["test_accuracy"] == test_hits.double().mean().item()

    targets = torch.randn(300, 2)
    vtargets = torch.randn(100, 2)
    run = endtoend.fit(mlp(classes=2), (x, targets), val=(vx, vtargets), loss="mse", metrics=["mae"], epochs=1,
                       batch_size=16, **QUIET)
    with torch.no_grad():
        whole = (run.model(vx) - vtargets).abs().double().mean().item()
    assert run.metrics["val_mae"] == pytest.approx(whole, rel=1e-12)


def test_every_evaluation_starts_fresh_and_the_pre_check_leaves_nothing_behind():
    x, y = separable(64)
    run = endtoend.fit(mlp(), (x, y), val=(x[:50], y[:50]), test=(x[:30], y[:30]), metrics={"rows": Rows()},
                       epochs=3, batch_size=8, **QUIET)
    assert [record["val_rows"] for record in run.history] == [50.0, 50.0, 50.0]
    assert run.metrics["val_rows"] == 50.0 and run.metrics["test_rows"] == 30.0


class TorchmetricsLike:
    """The shape of a torchmetrics Metric: reset/update/compute, a class-level direction, and
    state that must be moved with .to(device) before it sees a batch."""

    higher_is_better = True

    def __init__(self):
        self.device = None
        self.moves = []
        self.reset()

    def to(self, device):
        self.moves.append(torch.device(device))
        self.device = torch.device(device)
        return self

    def reset(self):
        self.correct = torch.zeros((), dtype=torch.long, device=self.device)
        self.total = 0

    def update(self, outputs, targets):
        assert self.device == outputs.device, "update before .to(device)"
        self.correct += (outputs.argmax(-1) == targets).sum()
        self.total += len(targets)

    def compute(self):
        return self.correct.double() / self.total


def test_a_torchmetrics_like_object_is_moved_to_the_device_and_used_as_is():
    x, y = separable(200)
    vx, vy = separable(90, seed=1)
    tm = TorchmetricsLike()
    run = endtoend.fit(mlp(), (x, y), val=(vx, vy), metrics={"acc": tm}, monitor="val_acc", epochs=2, batch_size=16,
                       lr=1e-2, **QUIET)
    assert tm.moves and set(tm.moves) == {torch.device("cpu")}
    with torch.no_grad():
        whole = (run.model(vx).argmax(-1) == vy).double().mean().item()
    assert run.metrics["val_acc"] == whole and run.metrics["val_acc"] == run.history[-1]["val_acc"]
    assert tm.total == 0  # reset after the last evaluation: no state outlives it


def _scripted(values):
    """A per-batch metric whose value at the k-th evaluation of the whole val split is values[k]
    (the pre-check's two rows get 0); val is one batch, so each evaluation calls it once."""
    sequence = iter(values)

    def scripted(outputs, targets):
        return 0.0 if len(targets) == 2 else next(sequence, 1.0)
    return scripted


def _with_direction(how, fn, higher):
    if how == "helper":
        return metric(fn, higher_is_better=higher)
    fn.higher_is_better = higher
    return fn


@pytest.mark.parametrize("how", ["helper", "attribute"])
@pytest.mark.parametrize("higher, best_epoch, epochs_run", [(False, 2, 4), (True, 1, 3)])
def test_early_stopping_follows_the_direction_of_a_custom_metric(tmp_path, how, higher, best_epoch, epochs_run):
    x, y = separable(64)
    score = _with_direction(how, _scripted([0.5, 0.3, 0.4, 0.45]), higher)
    run = endtoend.fit(mlp(), (x, y), val=separable(40, seed=1), metrics={"score": score}, monitor="val_score",
                       early_stopping=2, epochs=10, batch_size=16, lr=1e-2, out=tmp_path, **QUIET)
    scores = [record["val_score"] for record in run.history]
    assert scores == [0.5, 0.3, 0.4, 0.45][:epochs_run] and run.stopped_early
    best = json.loads((tmp_path / "checkpoints" / "best.json").read_text())
    best_step = run.history[best_epoch - 1]["step"]
    assert best == {"step": best_step, "val_score": scores[best_epoch - 1]}
    saved = load_file(str(tmp_path / "checkpoints" / f"step-{best_step:08d}" / "model.safetensors"))
    assert run.weights_sha256 == weights_sha256(saved)  # the returned weights are the best epoch's


def test_early_stopping_on_val_mae_keeps_the_epoch_with_the_lowest_error(tmp_path):
    x = separable(64)[0]
    targets = x[:, :2] * 2.0
    # val targets are the opposite of the train ones: every epoch of learning raises val_mae
    run = endtoend.fit(mlp(), (x, targets), val=(x, -targets), loss="mse", metrics=["mae"], monitor="val_mae",
                       early_stopping=2, epochs=10, batch_size=16, lr=1e-2, out=tmp_path, **QUIET)
    errors = [record["val_mae"] for record in run.history]
    assert run.stopped_early and len(errors) == 3 and errors[0] == min(errors) < max(errors)
    assert json.loads((tmp_path / "checkpoints" / "best.json").read_text())["step"] == run.history[0]["step"]
    assert run.metrics["val_mae"] == pytest.approx(errors[0], rel=1e-9)


def test_monitoring_a_metric_of_unknown_direction_is_refused_in_one_line(tmp_path):
    x, y = separable(64)

    def worst(outputs, targets):
        return (outputs.argmax(-1) != targets).float().mean()
    with pytest.raises(UsageError) as caught:
        endtoend.fit(mlp(), (x, y), val=(x, y), metrics=[worst], monitor="val_worst", epochs=1,
                     out=tmp_path / "run", **QUIET)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("monitor='val_worst' needs to know whether higher is better")
    assert "metric 'worst'" in message and "endtoend.metric(" in message and "higher_is_better" in message
    assert not (tmp_path / "run").exists()
    # only logged, it needs no direction
    run = endtoend.fit(mlp(), (x, y), val=(x, y), metrics=[worst], epochs=1, **QUIET)
    assert 0 <= run.metrics["val_worst"] <= 1


def test_direction_of_the_loss_and_the_builtins():
    metrics = resolve_metrics(["accuracy", "mae"])
    assert direction("val_loss", metrics) is False and direction("train_loss", {}) is False
    assert direction("val_accuracy", metrics) is True and direction("test_mae", metrics) is False


def test_metric_names_and_kinds():
    def hits(outputs, targets):
        return (outputs.argmax(-1) == targets).float().mean()
    resolved = resolve_metrics(["accuracy", hits, Precision()])
    assert list(resolved) == ["accuracy", "hits", "Precision"]
    assert isinstance(resolved["accuracy"], Accuracy) and isinstance(resolved["hits"], BatchMean)
    assert resolved["hits"].higher_is_better is None
    assert list(resolve_metrics({"a": "mae", "b": hits})) == ["a", "b"]
    assert list(resolve_metrics(hits)) == ["hits"]
    with pytest.raises(UsageError, match="metric name 'hits' is taken"):
        resolve_metrics([hits, hits])
    with pytest.raises(UsageError, match="metric name 'loss' is taken"):
        resolve_metrics({"loss": hits})
    with pytest.raises(UsageError, match="higher_is_better must be True or False"):
        metric(hits, higher_is_better="max")


def test_a_metric_that_returns_many_numbers_is_refused_before_training():
    x, y = separable(64)
    with pytest.raises(UsageError, match=r"^metric 'rows' must return one number, got \(2,\)$"):
        endtoend.fit(mlp(), (x, y), val=(x, y), metrics={"rows": lambda o, t: (o.argmax(-1) == t).float()},
                     epochs=1, **QUIET)
