"""An Objective passed to fit: its weights learn, its terms are logged, resume stays exact."""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import endtoend
from endtoend import Objective

QUIET = {"progress": False, "audit": "off", "batch_size": 32, "device": "cpu"}


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(4, 32), nn.ReLU())
        self.clean = nn.Linear(32, 1)
        self.noisy = nn.Linear(32, 1)

    def forward(self, x):
        h = self.trunk(x)
        return torch.cat([self.clean(h), self.noisy(h)], dim=1)


def two_tasks(n=256):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=g)
    clean = x[:, :1] * 2
    noisy = x[:, 1:2] + 3.0 * torch.randn(n, 1, generator=g)  # the same signal under heavy noise
    return x, torch.cat([clean, noisy], dim=1)


def objective(weighting="uncertainty", model=None):
    terms = {"clean": lambda out, y: F.mse_loss(out[:, 0], y[:, 0]),
             "noisy": lambda out, y: F.mse_loss(out[:, 1], y[:, 1])}
    shared = list(model.trunk[0].parameters()) if model is not None else None
    return Objective(terms, weighting, shared_parameters=shared)


def records(folder, name):
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [r["value"] for r in lines if r["name"] == name]


def test_uncertainty_weights_learn_inside_fit_and_each_term_is_logged(tmp_path):
    loss = objective()
    run = endtoend.fit(TwoHeads(), two_tasks(), loss=loss, epochs=20, lr=3e-2, out=tmp_path / "run", **QUIET)
    weights = loss.current_weights()
    assert weights["noisy"] < 0.5 * weights["clean"]  # the noisy task learns a larger variance
    assert len(records(tmp_path / "run", "loss/noisy")) > 0
    assert records(tmp_path / "run", "weight/noisy")[-1] == pytest.approx(float(weights["noisy"]), rel=1e-6)
    assert run.metrics["train_loss"] == run.metrics["train_loss"]  # finite


def test_gradnorm_weights_stay_normalised_after_every_step():
    model = TwoHeads()
    loss = objective("gradnorm", model)
    endtoend.fit(model, two_tasks(), loss=loss, epochs=3, lr=1e-2, **QUIET)
    weights = torch.stack(list(loss.current_weights().values()))
    assert weights.sum().item() == pytest.approx(2.0, abs=1e-5)
    assert not torch.equal(weights, torch.ones(2))  # they moved


def test_resume_restores_the_objective_and_is_exact(tmp_path):
    settings = dict(epochs=3, lr=3e-2, checkpoint_every=3, **QUIET)
    whole = endtoend.fit(TwoHeads(), two_tasks(), loss=objective(), out=tmp_path / "whole", **settings)
    shutil.copytree(tmp_path / "whole", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step-00000024")
    (tmp_path / "cut" / "summary.json").unlink()
    fresh = objective()
    resumed = endtoend.fit(TwoHeads(), two_tasks(), loss=fresh, out=tmp_path / "cut", resume=True, **settings)
    assert resumed.weights_sha256 == whole.weights_sha256
    assert resumed.steps == 24 and float(fresh.log_variances.detach().abs().sum()) > 0
