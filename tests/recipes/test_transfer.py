"""The transfer recipe: source and target splits, the source encoder really used (frozen in the
probe, the starting point of the fine-tuned rows), progressive unfreezing, and `compare --small`
+ `e2e predict` end to end."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from endtoend.recipes import represent_models as models
from endtoend.recipes import transfer
from endtoend.recipes.contract import check_recipe, nested_subsets
from endtoend.train import fit
from endtoend.train.rng import seed_everything
from recording import compare_recording

ROWS = {"HOG + logistic regression", "linear probe (frozen pretrained encoder)", "end-to-end",
        "end-to-end: full fine-tune", "end-to-end: progressive unfreezing"}


def test_the_target_is_digits_5_to_9_and_the_source_the_training_splits_0_to_4():
    check_recipe(transfer, "transfer")
    assert transfer.BUDGETS == (0.01, 0.05, 0.2, 1.0)
    small, full = transfer.load_data(small=True), transfer.load_data(small=False)
    whole = transfer._splits(False)
    for split in ("train", "val", "test"):
        images, labels = getattr(full, split)
        digits = getattr(whole, split)[1]
        assert set(labels.tolist()) == {0, 1, 2, 3, 4} and len(labels) == int((digits >= 5).sum())
    assert torch.equal(small.test[0], full.test[0]) and len(full.test[1]) == 500
    images, labels = transfer.source(small=False)
    assert set(labels.tolist()) == {0, 1, 2, 3, 4}  # digits 0-4 themselves
    assert len(labels) + len(full.train[1]) == len(whole.train[1]) == 3600  # the training split, nothing else
    subsets = nested_subsets(full.train[1], list(transfer.BUDGETS), seed=0)
    assert [len(subsets[b]) for b in transfer.BUDGETS] == [18, 90, 360, 1800]


def test_fine_tuned_rows_start_from_the_source_encoder_and_from_scratch_does_not():
    seed_everything(0)
    tuned = transfer.variants(small=True)["full fine-tune"][0]()
    source = models.CACHE["source classifier", 0, True].model
    assert source.head[1].out_features == 5 and tuned.head[1].out_features == 5
    for name, value in source.encoder.state_dict().items():
        assert torch.equal(tuned.encoder.state_dict()[name], value), name
    seed_everything(0)
    scratch = transfer.build_model(small=True)
    assert not torch.equal(scratch.encoder.code.weight, source.encoder.code.weight)
    assert torch.equal(scratch.head[1].weight, tuned.head[1].weight)  # the same seed, the same head


def test_the_source_encoder_learned_digits_0_to_4():
    transfer.pretrained_encoder(0, True)  # pretrains, if no test has yet
    source = models.CACHE["source classifier", 0, True].model
    test_images, test_digits = transfer._splits(True).test
    keep = test_digits < 5
    with torch.inference_mode():
        predicted = source(test_images[keep]).argmax(-1)
    assert (predicted == test_digits[keep]).float().mean() > 0.5  # 5 classes: chance is 0.2


def test_progressive_unfreezing_trains_only_the_head_in_its_first_epoch():
    data = transfer.load_data(small=True)
    seed_everything(0)
    model = transfer.variants(small=True)["progressive unfreezing"][0]()
    before = {name: value.clone() for name, value in model.named_parameters()}
    settings = {**transfer.variants(small=True)["progressive unfreezing"][1], "epochs": 1}
    fit(model, data.train, val=data.val, seed=0, progress=False, **settings)
    changed = {name for name, value in model.named_parameters() if not torch.equal(before[name], value)}
    assert changed == {name for name in before if name.startswith("head.")}
    assert transfer.unfreezing(small=False).unfreeze == {0: ["head."], 2: ["encoder.code.", "encoder.trunk.2."],
                                                         4: [""]}


def test_the_probe_reads_the_frozen_source_encoder():
    data = transfer.load_data(small=True)
    probe = transfer.staged_pipelines(0, small=True)["linear probe (frozen pretrained encoder)"]
    probe.fit(*data.train)
    encoder = transfer.pretrained_encoder(0, True)[0]
    before = {name: value.clone() for name, value in encoder.state_dict().items()}
    probe.fit(data.train[0][:60], data.train[1][:60])
    assert probe.representation_ is encoder and not any(p.requires_grad for p in encoder.parameters())
    assert all(torch.equal(before[name], value) for name, value in encoder.state_dict().items())
    assert set(probe.describe()) == {"C", "val_accuracy", "pretrain_seconds"}


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """compare_recipe(transfer, small=True), recording the training pair each row was given."""
    out = tmp_path_factory.mktemp("transfer") / "out"
    comparison, seen = compare_recording(transfer, out)
    return out, comparison, seen


def test_small_compare_writes_every_row_and_their_learning_curves(compared):
    out, comparison, _ = compared
    assert comparison == json.loads((out / "comparison.json").read_text())
    rows = {row["pipeline"]: row for row in comparison["rows"]}
    assert set(rows) == ROWS and all("failed" not in row and 0 <= row["value"] <= 1 for row in rows.values())
    sizes = [len(nested_subsets(transfer.load_data(small=True).train[1], [b], 0)[b]) for b in transfer.BUDGETS]
    assert set(comparison["learning_curves"]) == ROWS
    assert all([p["items"] for p in points] == sizes for points in comparison["learning_curves"].values())
    assert rows["HOG + logistic regression"]["value"] > 0.8
    html = (out / "report.html").read_text()
    assert "<h2>Learning curves</h2>" in html and "data:image/png;base64," in html


def test_every_row_trains_on_the_same_nested_stratified_budgets(compared):
    _, comparison, seen = compared
    by_size = {}
    for inputs, targets in seen:
        by_size.setdefault(len(targets), []).append((inputs, targets))
    sizes = [p["items"] for p in comparison["learning_curves"]["end-to-end"]]
    assert sorted(by_size) == sizes and all(len(pairs) == len(ROWS) for pairs in by_size.values())
    for pairs in by_size.values():
        assert all(torch.equal(pairs[0][0], x) and torch.equal(pairs[0][1], y) for x, y in pairs)
    image_sets = [{bytes(image.numpy()) for image in by_size[size][0][0]} for size in sizes]
    assert all(smaller < larger for smaller, larger in zip(image_sets, image_sets[1:]))
    labels = by_size[sizes[-1]][0][1].numpy()
    for size in sizes:
        counts = np.bincount(by_size[size][0][1].numpy(), minlength=5)
        assert np.abs(counts - np.bincount(labels, minlength=5) * size / len(labels)).max() < 1


def test_predict_prints_a_digit_from_5_to_9(compared, tmp_path, capsys):
    from endtoend.cli import main

    out, _, _ = compared
    images, labels = transfer.load_data(small=True).test
    Image.fromarray((images[0, 0].numpy() * 255).astype(np.uint8)).save(tmp_path / "digit.png")
    assert main(["predict", str(out / "end-to-end-full-fine-tune" / "seed-0"), str(tmp_path / "digit.png"),
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)[0]
    assert result["digit"] in (5, 6, 7, 8, 9) and set(result["probabilities"]) == {"5", "6", "7", "8", "9"}
    assert transfer.format_prediction(torch.tensor(2), torch.zeros(5))["digit"] == 7
