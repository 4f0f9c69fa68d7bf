"""lr_find: the sweep's shape, the suggestion, divergence stop, files, and no side effects."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from endtoend.errors import UsageError
from endtoend.train.lr_find import lr_find, suggest_lr


def toy(n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return x, (x[:, 0] - x[:, 1] > 0).long()


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 2))


def test_sweep_is_exponential_and_suggests_a_rate_inside_it():
    result = lr_find(mlp(), toy(), start_lr=1e-5, end_lr=1.0, steps=40, batch_size=32)
    assert result.lrs[0] == pytest.approx(1e-5)
    ratios = [b / a for a, b in zip(result.lrs, result.lrs[1:])]
    assert max(ratios) == pytest.approx(min(ratios))  # one constant growth factor
    assert min(result.lrs) <= result.suggested_lr <= max(result.lrs)
    assert all(math.isfinite(v) for v in result.losses + result.raw_losses)
    assert len(result.losses) == len(result.raw_losses) == len(result.lrs)
    # the task is learnable: the loss falls somewhere in the sweep, and the suggestion is
    # below the minimum of the smoothed loss (where it is about to rise)
    lowest = result.losses.index(min(result.losses))
    assert min(result.losses) < result.losses[0]
    assert result.suggested_lr <= result.lrs[lowest]


def test_the_users_model_and_rng_are_untouched():
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    lr_find(model, toy(), steps=20, end_lr=1.0)
    assert torch.equal(torch.rand(3), expected_next)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm buffers included
    assert not model.training
    assert all(p.grad is None for p in model.parameters())


def test_divergence_stops_the_sweep_early_and_losses_stay_finite():
    # SGD up to lr 1e4 on this net must blow up long before the 200 steps are over
    result = lr_find(mlp(), toy(), optimizer="sgd", start_lr=1e-3, end_lr=1e4, steps=200, batch_size=32)
    assert result.stopped_early
    assert len(result.lrs) < 200
    assert all(math.isfinite(v) for v in result.losses + result.raw_losses)
    assert result.suggested_lr < result.lrs[-1]


def test_out_writes_the_plot_and_the_json(tmp_path):
    result = lr_find(mlp(), toy(), steps=20, end_lr=1.0, out=tmp_path / "sweep")
    assert result.plot_path == tmp_path / "sweep" / "lr_find.png"
    assert result.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "sweep" / "lr_find.json").read_text())
    assert saved["suggested_lr"] == result.suggested_lr
    assert saved["lrs"] == result.lrs


def test_works_on_a_dataloader_for_more_steps_than_one_epoch():
    x, y = toy(n=64)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    result = lr_find(mlp(), loader, steps=10, end_lr=1.0)  # 4 batches per epoch
    assert len(result.lrs) == 10


def test_suggestion_is_a_tenth_of_the_minimum_and_stays_inside_the_sweep():
    lrs = [10.0 ** e for e in range(-6, 1)]
    losses = [2.0, 1.9, 1.2, 0.9, 0.8, 0.7, 3.0]  # minimum at 1e-1
    assert suggest_lr(lrs, losses) == pytest.approx(1e-2)
    assert suggest_lr(lrs, [1.0, 1.1, 1.2, 1.5, 2.0, 3.0, 5.0]) == lrs[0]  # never falls: the start


@pytest.mark.parametrize("arguments, expected", [
    (dict(start_lr=1.0, end_lr=1e-3), "end_lr must be greater than start_lr"),
    (dict(start_lr=1e-3, end_lr=1e-3), "end_lr must be greater than start_lr"),
    (dict(start_lr=0.0), "start_lr must be a positive finite number, got 0.0"),
    (dict(start_lr=-1e-3), "start_lr must be a positive finite number"),
    (dict(start_lr=float("nan")), "start_lr must be a positive finite number, got nan"),
    (dict(end_lr=float("inf")), "end_lr must be a positive finite number, got inf"),
    (dict(end_lr="10"), "end_lr must be a positive finite number, got '10'"),
    (dict(steps=2), "steps must be an integer of at least 5, got 2"),
    (dict(steps=50.0), "steps must be an integer of at least 5, got 50.0"),
    (dict(steps=True), "steps must be an integer of at least 5, got True"),
    (dict(batch_size=0), "batch_size must be an integer of at least 1, got 0"),
    (dict(weight_decay=-0.1), "weight_decay must be a finite number >= 0, got -0.1"),
    (dict(smoothing=1.0), "smoothing is the EMA decay of the loss and must be in [0, 1), got 1.0"),
    (dict(smoothing=float("nan")), "smoothing is the EMA decay"),
    (dict(optimizer="lion"), "unknown optimizer 'lion'"),
    (dict(loss="hinge"), "unknown loss 'hinge'"),
])
def test_bad_arguments_are_one_line_usage_errors_before_anything_runs(arguments, expected, tmp_path):
    with pytest.raises(UsageError) as error:
        lr_find(mlp(), toy(), out=tmp_path / "sweep", **arguments)
    assert str(error.value).startswith(expected) and "\n" not in str(error.value)
    assert not (tmp_path / "sweep").exists()


def test_empty_train_data_and_an_out_under_a_file_fail_before_the_sweep(tmp_path):
    x, y = toy()
    with pytest.raises(UsageError, match="^train data has 0 rows"):
        lr_find(mlp(), (x[:0], y[:0]))
    (tmp_path / "afile.txt").write_text("mine")
    with pytest.raises(UsageError, match=r"^output folder .*afile\.txt/sub cannot be created: .*afile\.txt is a file; choose another --out$"):
        lr_find(mlp(), toy(), steps=10, out=tmp_path / "afile.txt" / "sub")
    assert [p.name for p in tmp_path.iterdir()] == ["afile.txt"]


def test_a_model_that_is_not_a_module_is_a_usage_error():
    with pytest.raises(UsageError, match="needs an nn.Module as its model, got function"):
        lr_find(mlp, toy())


def test_numpy_numbers_are_numbers():
    result = lr_find(mlp(), toy(), start_lr=np.float32(1e-4), end_lr=np.float64(1.0), steps=np.int64(10))
    assert len(result.lrs) == 10


def test_plots_leave_the_users_matplotlib_alone(tmp_path):
    """Neither the lr_find plot nor report.html picks a backend or imports pyplot: a notebook
    user's backend and figures are theirs."""
    script = (
        "import sys, matplotlib; matplotlib.use('svg')\n"
        "import torch, endtoend.report\n"
        "from endtoend.train.lr_find import lr_find\n"
        "x = torch.randn(64, 6); y = (x[:, 0] > 0).long()\n"
        f"lr_find(torch.nn.Linear(6, 2), (x, y), steps=10, end_lr=1.0, out={str(tmp_path)!r})\n"
        "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["svg", "False"]
    assert (tmp_path / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
