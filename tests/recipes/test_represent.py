"""The represent recipe: the VAE's loss terms, the label budgets, the pretrained encoders really
used (and frozen in the probes), and `compare --small` + `e2e predict` end to end."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from endtoend.recipes import represent
from endtoend.recipes import represent_models as models
from endtoend.recipes import represent_report
from endtoend.recipes.contract import check_recipe, nested_subsets
from endtoend.relax import gaussian_kl
from endtoend.train.rng import seed_everything
from recording import compare_recording

ROWS = {"PCA + logistic regression", "HOG + logistic regression", "AE codes + logistic regression",
        "VAE codes + logistic regression", "end-to-end", "end-to-end: VAE encoder fine-tuned",
        "end-to-end: from scratch"}


def test_the_recipe_passes_the_contract_with_its_budgets_and_a_fixed_test_split():
    check_recipe(represent, "represent")
    assert represent.BUDGETS == (0.01, 0.05, 0.2, 1.0)
    small, full = represent.load_data(small=True), represent.load_data(small=False)
    assert len(small.train[0]) == 600 and len(full.train[0]) == 3600
    assert small.train[0].shape[1:] == (1, 28, 28) and len(full.val[0]) == 400
    assert torch.equal(small.test[0], full.test[0]) and len(full.test[1]) == 1000
    assert set(represent.staged_pipelines(0, small=True)) | {"end-to-end"} | {
        f"end-to-end: {name}" for name in represent.variants(small=True)} == ROWS


def test_gaussian_kl_is_the_closed_form_value():
    # KL(N(mu, s^2) || N(0, 1)) = (mu^2 + s^2 - 1 - log s^2) / 2 per dimension, summed over them:
    # (1 + 1 - 1 - 0) / 2 + (4 + 4 - 1 - log 4) / 2 = 4 - log 2.
    mu, logvar = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, math.log(4.0)]])
    assert gaussian_kl(mu, logvar).item() == pytest.approx(4 - math.log(2), abs=1e-6)
    batch = (torch.cat([mu, torch.zeros(1, 2)]), torch.cat([logvar, torch.zeros(1, 2)]))
    assert gaussian_kl(*batch).item() == pytest.approx((4 - math.log(2)) / 2, abs=1e-6)  # mean over the batch


def test_the_vae_loss_is_reconstruction_plus_kl_and_the_elbo_its_negative():
    images = torch.rand(3, 1, 28, 28)
    logits = torch.zeros(3, 1, 28, 28)          # p = 1/2 per pixel: -log p(x|z) = 784 log 2 per image
    mu = torch.ones(3, models.CODE, requires_grad=True)
    logvar = torch.zeros(3, models.CODE)        # KL = CODE * 1/2 per image
    terms = models.vae_terms((logits, mu, logvar), images)
    assert terms["reconstruction"].item() == pytest.approx(784 * math.log(2), rel=1e-5)
    assert terms["kl"].item() == pytest.approx(models.CODE / 2, rel=1e-6)
    loss = models.vae_loss((logits, mu, logvar), images)
    assert loss.item() == pytest.approx(784 * math.log(2) + models.CODE / 2, rel=1e-5)
    loss.backward()  # the KL pulls mu towards 0: d loss / d mu = mu / batch, positive
    assert torch.allclose(mu.grad, torch.full_like(mu, 1 / 3))

    vae = models.VAE(width=4).eval()
    scores = represent_report.scores("vae", vae, images)
    assert scores["kl_nats"] > 0
    assert scores["elbo"] == pytest.approx(-(scores["reconstruction_nats"] + scores["kl_nats"]), abs=1e-4)


def test_label_budgets_are_nested_stratified_and_drawn_by_the_seed():
    targets = represent.load_data(small=False).train[1]
    subsets = nested_subsets(targets, list(represent.BUDGETS), seed=0)
    assert [len(subsets[b]) for b in represent.BUDGETS] == [36, 180, 720, 3600]
    for smaller, larger in zip(represent.BUDGETS, represent.BUDGETS[1:]):
        assert set(subsets[smaller]) < set(subsets[larger])
    labels = targets.numpy()
    for budget, indices in subsets.items():
        counts = np.bincount(labels[indices], minlength=10)
        assert np.abs(counts - np.bincount(labels) * len(indices) / len(labels)).max() < 1, (budget, counts)
    assert nested_subsets(targets, list(represent.BUDGETS), seed=0) == subsets
    assert nested_subsets(targets, [0.05], seed=1)[0.05] != subsets[0.05]


def test_a_fine_tuned_row_starts_from_the_pretrained_encoder_and_the_same_head_as_from_scratch():
    seed_everything(0)
    fine_tuned = represent.build_model(small=True)
    ae = models.CACHE["autoencoder", 0, True].model
    for name, value in ae.encoder.state_dict().items():
        assert torch.equal(fine_tuned.encoder.state_dict()[name], value), name
    seed_everything(0)
    scratch = represent.variants(small=True)["from scratch"][0]()
    assert not torch.equal(scratch.encoder.code.weight, ae.encoder.code.weight)
    for name, value in scratch.head.state_dict().items():  # a cache hit and a miss draw alike
        assert torch.equal(fine_tuned.head.state_dict()[name], value), name
    seed_everything(0)
    vae_tuned = represent.variants(small=True)["VAE encoder fine-tuned"][0]()
    assert torch.equal(vae_tuned.encoder.code.weight, models.CACHE["vae", 0, True].model.encoder.code.weight)


def test_pretraining_leaves_the_random_number_generators_as_they_were():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    models.pretrain_once("a test model", 7, True, lambda: torch.nn.Linear(2, 2))
    assert torch.equal(torch.get_rng_state(), before)


def test_a_probe_reads_the_frozen_pretrained_encoder_and_describes_the_representation():
    data = represent.load_data(small=True)
    probe = represent.staged_pipelines(0, small=True)["VAE codes + logistic regression"]
    probe.fit(*data.train)  # pretrains the VAE, if no test has yet
    encoder = models.CACHE["vae", 0, True].model.encoder
    before = {name: value.clone() for name, value in encoder.state_dict().items()}
    probe.fit(data.train[0][:100], data.train[1][:100])
    assert probe.representation_ is encoder
    assert all(torch.equal(before[name], value) for name, value in encoder.state_dict().items())
    assert not any(p.requires_grad for p in encoder.parameters())
    accuracy = (probe.predict(data.test[0]) == data.test[1].numpy()).mean()
    assert accuracy > 0.3  # ten classes from 100 labels: far above chance
    numbers = probe.describe()
    assert numbers["C"] in models.C_GRID and 0 < numbers["reconstruction_mse"] < 0.25
    assert numbers["elbo"] == pytest.approx(-(numbers["reconstruction_nats"] + numbers["kl_nats"]), abs=1e-3)


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """compare_recipe(represent, small=True), recording the training pair each row was given."""
    out = tmp_path_factory.mktemp("represent") / "out"
    comparison, seen = compare_recording(represent, out)
    return out, comparison, seen


def test_small_compare_writes_every_row_with_learning_curves_and_the_pictures(compared):
    out, comparison, _ = compared
    assert comparison == json.loads((out / "comparison.json").read_text())
    rows = {row["pipeline"]: row for row in comparison["rows"]}
    assert set(rows) == ROWS and all("failed" not in row and 0 <= row["value"] <= 1 for row in rows.values())
    assert comparison["budgets"] == [0.01, 0.05, 0.2, 1.0]
    assert set(comparison["learning_curves"]) == ROWS
    for name, points in comparison["learning_curves"].items():
        assert [p["items"] for p in points] == [6, 30, 120, 600], name
        assert points[-1]["value"] == rows[name]["value"]  # a row's value is its 100% point
    assert rows["HOG + logistic regression"]["value"] > 0.8  # a working staged baseline even on 600 images
    html = (out / "report.html").read_text()
    assert "<h2>Learning curves</h2>" in html and "<h2>Examples</h2>" in html


def test_every_row_trains_on_the_same_nested_stratified_budgets(compared):
    _, _, seen = compared
    by_size = {}
    for inputs, targets in seen:
        by_size.setdefault(len(targets), []).append((inputs, targets))
    assert sorted(by_size) == [6, 30, 120, 600] and all(len(pairs) == len(ROWS) for pairs in by_size.values())
    for pairs in by_size.values():
        assert all(torch.equal(pairs[0][0], x) and torch.equal(pairs[0][1], y) for x, y in pairs)
    image_sets = {size: {bytes(image.numpy()) for image in pairs[0][0]} for size, pairs in by_size.items()}
    assert image_sets[6] < image_sets[30] < image_sets[120] < image_sets[600]
    labels = by_size[600][0][1].numpy()
    for size in (30, 120):
        counts = np.bincount(by_size[size][0][1].numpy(), minlength=10)
        assert np.abs(counts - np.bincount(labels, minlength=10) * size / 600).max() < 1


def test_predict_reads_a_png_and_refuses_a_file_that_is_not_an_image(compared, tmp_path, capsys):
    from endtoend.cli import main

    out, _, _ = compared
    digit = represent.load_data(small=True).test[0][0, 0].numpy()
    Image.fromarray((digit * 255).astype(np.uint8)).resize((56, 56)).save(tmp_path / "digit.png")
    run = str(out / "end-to-end" / "seed-0")
    assert main(["predict", run, str(tmp_path / "digit.png"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)[0]
    assert 0 <= result["label"] <= 9 and len(result["probabilities"]) == 10
    assert sum(result["probabilities"]) == pytest.approx(1, abs=1e-3)
    (tmp_path / "bad.png").write_text("not an image")
    assert main(["predict", run, str(tmp_path / "bad.png")]) == 2
    error = capsys.readouterr().err.strip()
    assert "bad.png" in error and len(error.splitlines()) == 1
