"""The multitask recipe (classes present, object count and mask of shapes-world scenes): its
targets, the heads' wiring, the three weightings, scoring, the --small compare with its report,
and e2e predict. Small configurations only: the compare is the one the suite runs for real."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from endtoend.data.shapes import Scene, make_scenes, shape_mask, stack_images
from endtoend.errors import UsageError
from endtoend.recipes import multitask
from endtoend.recipes.contract import check_recipe
from endtoend.recipes.multitask_models import SingleTaskNet
from endtoend.recipes.multitask_report import weight_history

ROWS = ("single-task networks (one per task)", "end-to-end", "end-to-end: uncertainty weighting",
        "end-to-end: GradNorm")
FOLDERS = {"end-to-end": "end-to-end", "end-to-end: uncertainty weighting": "end-to-end-uncertainty-weighting",
           "end-to-end: GradNorm": "end-to-end-gradnorm"}


@pytest.fixture(scope="module")
def data():
    return multitask.load_data(small=True)


def parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_the_recipe_passes_the_contract_and_its_splits_have_the_packed_form(data):
    assert check_recipe(multitask, "recipe multitask") is multitask
    assert multitask.METRIC == "mean_task_score" and multitask.HIGHER_IS_BETTER is True
    (x, y), (xt, yt) = data.train, data.test
    assert x.dtype == torch.uint8 and x.shape == (multitask.SMALL_TRAIN, 3, 64, 64)
    assert y.dtype == torch.int64 and y.shape == (len(x), 3 + 1 + 64 * 64)
    assert len(xt) == len(yt) == multitask.TEST and len(data.val[0]) == multitask.VAL
    # segment's test scenes, whatever `small` is
    assert torch.equal(xt[:3], stack_images(make_scenes(3, seed=13)))


def _scene(*objects) -> Scene:
    """A scene of (class name, x, y, size) objects drawn in order, as the generator paints them."""
    mask = np.zeros((64, 64), dtype=np.int64)
    for name, x, y, size in objects:
        mask[shape_mask(name, x, y, size)] = multitask.SHAPES.index(name) + 1
    return Scene(image=torch.zeros(3, 64, 64, dtype=torch.uint8),
                 boxes=torch.tensor([[x, y, x + s, y + s] for _, x, y, s in objects], dtype=torch.float32),
                 labels=torch.tensor([multitask.SHAPES.index(name) for name, *_ in objects]),
                 mask=torch.from_numpy(mask))


def test_an_object_hidden_under_a_later_one_is_neither_counted_nor_present():
    hidden = _scene(("circle", 20, 20, 10), ("square", 14, 14, 24))    # the square covers the circle
    showing = _scene(("circle", 10, 10, 10), ("square", 14, 14, 24))   # a corner of the circle shows
    fields = multitask.unpack(multitask.scene_targets([hidden, showing]))
    assert fields["count"].tolist() == [1, 2]
    assert fields["classes"].tolist() == [[0, 1, 0], [1, 1, 0]]
    assert torch.equal(fields["mask"][0], hidden.mask)


def test_targets_agree_with_the_mask_and_the_documented_hidden_objects():
    scenes = make_scenes(3000, seed=11)
    counts = [multitask.visible_objects(scene) for scene in scenes]
    assert sum(len(scene.labels) for scene in scenes) - sum(counts) == 28   # the module docstring's figure
    fields = multitask.unpack(multitask.scene_targets(scenes[:200]))
    for k in range(3):
        assert torch.equal(fields["classes"][:, k].bool(), (fields["mask"] == k + 1).flatten(1).any(1))
    assert (fields["count"] >= fields["classes"].sum(1)).all() and int(fields["count"].max()) <= 5


def test_each_task_gradient_reaches_the_shared_backbone_and_no_other_head(data):
    torch.manual_seed(0)
    model = multitask.build_model(small=True)
    x, y = data.train[0][:4], data.train[1][:4]
    decoder = [p for name, p in model.backbone.named_parameters() if name.startswith(("up", "dec"))]
    for task, term in multitask.TERMS.items():
        model.zero_grad(set_to_none=True)
        term(model(x), y).backward()
        reached = lambda params: any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)  # noqa: E731
        assert reached([model.backbone.down1[0].weight]) and reached(model.shared_layer().parameters()), task
        assert reached(model.heads[task].parameters()), task
        for other in set(multitask.TASKS) - {task}:
            assert not reached(model.heads[other].parameters()), (task, other)
        assert reached(decoder) == (task == "mask"), task   # classes and count read the bottleneck only


def test_every_call_builds_fresh_objectives_and_gradnorm_binds_the_model_its_factory_built():
    first, second = multitask.variants(small=True), multitask.variants(small=True)
    build, settings = first["GradNorm"]
    model = build()
    objective = settings["loss"]
    assert objective.weighting == "gradnorm" and objective.shared_parameters == [model.shared_layer().weight]
    fresh = second["GradNorm"][1]["loss"]
    assert fresh is not objective and fresh.shared_parameters == []
    assert first["uncertainty weighting"][1]["loss"] is not second["uncertainty weighting"][1]["loss"]
    assert multitask.training(True)["loss"] is not multitask.training(True)["loss"]
    assert multitask.training(True)["loss"].weighting == "fixed"
    with pytest.raises(UsageError, match="bind_shared_parameters"):   # a model built elsewhere is not bound
        fresh(model(torch.zeros(2, 3, 64, 64, dtype=torch.uint8)), torch.zeros(2, 4100, dtype=torch.int64))


def test_evaluate_matches_a_hand_computation():
    truth_classes = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1]])
    probabilities = torch.tensor([[0.9, 0.1, 0.2], [0.2, 0.8, 0.1], [0.1, 0.7, 0.6], [0.3, 0.2, 0.9]])
    masks = torch.zeros(4, 64, 64, dtype=torch.int64)
    masks[1, :8, :8] = 2
    targets = multitask.pack(truth_classes, torch.tensor([0, 3, 2, 5]), masks).numpy()
    predictions = multitask.pack(probabilities, torch.tensor([0.4, 2.6, 3.0, 5.2]), masks.float()).numpy()
    scores = multitask.evaluate(predictions, targets)
    # circle: 1 hit, 1 miss -> F1 2/3; square: 2 hits -> 1; triangle: 1 hit, 1 false alarm -> 2/3
    assert scores["macro_f1"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
    assert scores["count_mae"] == pytest.approx(0.5) and scores["count_accuracy"] == 0.75  # 3.0 rounds to 3, not 2
    assert scores["miou"] == 1.0
    assert scores["mean_task_score"] == pytest.approx((scores["macro_f1"] + 1.0 + 0.75) / 3)
    perfect = multitask.evaluate(targets.astype(np.float32), targets)
    assert perfect["mean_task_score"] == 1.0 and perfect["count_mae"] == 0.0


def test_fits_metrics_over_batches_equal_evaluate_on_the_whole_split(data):
    torch.manual_seed(0)
    model = multitask.build_model(small=True).eval()
    x, y = data.val[0][:12], data.val[1][:12]
    with torch.inference_mode():
        outputs = model(x)
        expected = multitask.evaluate(multitask.predict(model, x), y.numpy())
    for name in multitask.FIT_METRICS:
        metric = multitask.TaskScore(name)
        for rows in (slice(0, 7), slice(7, 12)):   # two batches of unequal size
            metric.update({k: v[rows] for k, v in outputs.items()}, y[rows])
        assert metric.compute() == pytest.approx(expected[name]), name


@pytest.fixture(scope="module")
def small_comparison(tmp_path_factory):
    from endtoend.recipes.run import compare_recipe

    out = tmp_path_factory.mktemp("multitask") / "out"
    return out, compare_recipe(multitask, out, small=True, progress=False, log=lambda line: None)


def test_compare_small_writes_every_row_with_its_scores_sizes_and_the_report(small_comparison):
    out, comparison = small_comparison
    assert json.loads((out / "comparison.json").read_text())["rows"] == comparison["rows"]
    rows = {row["pipeline"]: row for row in comparison["rows"]}
    assert tuple(rows) == ROWS and all("failed" not in row for row in rows.values())
    assert rows[ROWS[0]]["kind"] == "staged" and {rows[name]["kind"] for name in ROWS[1:]} == {"end-to-end"}
    for row in rows.values():
        assert 0 <= row["value"] <= 1 and row["train_seconds"] > 0
        assert {"macro_f1", "count_mae", "count_accuracy", "miou", "mean_task_score"} <= set(row["metrics"])
    single = sum(parameters(SingleTaskNet(task, multitask.SMALL_WIDTHS)) for task in multitask.TASKS)
    shared = parameters(multitask.build_model(small=True))
    assert rows[ROWS[0]]["parameters"] == single > shared == rows["end-to-end: GradNorm"]["parameters"]
    html = (out / "report.html").read_text()
    assert "Examples" in html and html.count("data:image/png;base64,") >= 2


def test_the_learned_weights_move_and_the_fixed_ones_stay_at_one(small_comparison):
    out, _ = small_comparison
    histories = {row: weight_history(out / folder / "seed-0") for row, folder in FOLDERS.items()}
    assert all(set(h) == set(multitask.TASKS) for h in histories.values())
    assert all(values == [1.0] * len(values) for _, values in histories["end-to-end"].values())
    for row in ("end-to-end: uncertainty weighting", "end-to-end: GradNorm"):
        for task, (_, values) in histories[row].items():
            assert len(values) >= 2 and values[-1] != pytest.approx(1.0, abs=1e-3), (row, task)
    gradnorm = np.array([values for _, values in histories["end-to-end: GradNorm"].values()])
    assert np.allclose(gradnorm.sum(0), 3.0, atol=1e-4)   # renormalised to the number of terms


def test_no_state_passes_from_one_training_to_the_next(small_comparison, data, tmp_path):
    """The compare already trained each variant at seed 0; training it again at seed 0 must give
    the very same weights: a learned weight or GradNorm's initial losses left over would not."""
    from endtoend.recipes.run import train_recipe

    out, _ = small_comparison
    for row in ("end-to-end: uncertainty weighting", "end-to-end: GradNorm"):
        variant = row.split(": ", 1)[1]
        again = train_recipe(multitask, tmp_path / variant.replace(" ", "-"), seed=0, small=True, progress=False,
                             variant=variant, data=data, log=lambda line: None)
        before = json.loads((out / FOLDERS[row] / "seed-0" / "summary.json").read_text())
        assert again.weights_sha256 == before["weights_sha256"], row


def test_report_figure_draws_bars_weights_from_the_run_directories_and_scenes(small_comparison, data):
    out, _ = small_comparison
    xt, yt = data.test
    truth = yt.numpy().astype(np.float32)
    predictions = {"perfect": truth, "empty": np.zeros_like(truth)}
    runs = {row: out / folder / "seed-0" for row, folder in FOLDERS.items()}
    plain = multitask.report_figure(xt, yt, predictions)
    drawn = multitask.report_figure(xt, yt, predictions, runs=runs)
    scenes = 3 * (2 + len(predictions))
    assert len(plain.axes) == 4 + scenes and len(drawn.axes) == 4 + 2 + scenes   # the fixed row's weights: no panel
    weights = [ax for ax in drawn.axes if ax.get_title().startswith("end-to-end: ")]
    assert [ax.get_title() for ax in weights] == ["end-to-end: uncertainty weighting", "end-to-end: GradNorm"]
    assert all(len(ax.lines) == 3 for ax in weights)
    assert [patch.get_height() for patch in drawn.axes[0].patches] == [1.0, 0.0]   # macro F1 of each row


def test_predict_prints_the_classes_count_and_mask_of_an_image_file(small_comparison, tmp_path, capsys):
    from endtoend.cli import main

    out, _ = small_comparison
    scene = make_scenes(1, seed=5)[0]
    path = tmp_path / "scene.png"
    Image.fromarray(scene.image.numpy().transpose(1, 2, 0)).save(path)
    for folder in ("end-to-end", "end-to-end-gradnorm"):   # a variant's model is rebuilt by its factory
        assert main(["predict", str(out / folder / "seed-0"), str(path), "--json"]) == 0
        (result,) = json.loads(capsys.readouterr().out)
        assert set(result) == {"input", "classes", "count", "mask"}
        assert set(result["classes"]) <= set(multitask.SHAPES) and result["count"] in range(6)
        mask = np.array(result["mask"])
        assert mask.shape == (64, 64) and 0 <= mask.min() <= mask.max() <= 3
    assert main(["predict", str(out / "end-to-end" / "seed-0"), str(path)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{path}: classes ") and ", count " in line and line.endswith("mask [64 values]")


def test_read_input_refuses_a_file_that_is_not_an_image(tmp_path):
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(UsageError, match="bad.png"):
        multitask.read_input(str(tmp_path / "bad.png"))
    Image.fromarray(np.full((30, 50, 3), 7, dtype=np.uint8)).save(tmp_path / "small.png")
    image = multitask.read_input(str(tmp_path / "small.png"))
    assert image.shape == (3, 64, 64) and image.dtype == torch.uint8
