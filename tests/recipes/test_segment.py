"""The segment recipe (shapes-world segmentation): contract, staged pipeline, metrics, U-Net,
e2e predict's file reading and the report figure. Small configurations only: fast."""

import numpy as np
import pytest
import torch
from PIL import Image

from endtoend.data.shapes import make_scenes, stack_images, stack_masks
from endtoend.errors import UsageError
from endtoend.recipes import get_recipe


@pytest.fixture(scope="module")
def recipe():
    return get_recipe("segment")


@pytest.fixture(scope="module")
def scenes():
    """120 training scenes and 40 held-out ones, from the recipe's own generator."""
    train, held = make_scenes(120, seed=101), make_scenes(40, seed=102)
    return (stack_images(train), stack_masks(train)), (stack_images(held), stack_masks(held))


def test_the_recipe_passes_the_contract_and_its_splits_have_the_right_forms(recipe):
    assert recipe.NAME == "segment" and recipe.METRIC == "miou" and recipe.HIGHER_IS_BETTER is True
    data = recipe.load_data(small=True)
    (x, y), (xt, _) = data.train, data.test
    assert x.dtype == torch.uint8 and x.shape[1:] == (3, 64, 64) and len(x) == recipe.SMALL_TRAIN
    assert y.dtype == torch.int64 and y.shape == (len(x), 64, 64) and int(y.max()) <= 3
    assert len(xt) == recipe.TEST and len(data.val[0]) == recipe.VAL
    assert isinstance(recipe.training(small=True), dict)
    assert all(callable(getattr(p, "fit", None)) and callable(getattr(p, "predict", None))
               for p in recipe.staged_pipelines(0).values())


def test_the_test_split_does_not_depend_on_small(recipe):
    small, full = make_scenes(3, seed=recipe.SEEDS["test"]), recipe.load_data(small=True).test
    assert torch.equal(full[0][:3], stack_images(small)) and torch.equal(full[1][:3], stack_masks(small))


def test_the_staged_pipeline_beats_the_all_background_baseline(recipe, scenes):
    (x, y), (xt, yt) = scenes
    pipeline = recipe.staged_pipelines(0)["background + threshold + shape features + SVM"]
    masks = pipeline.fit(x, y).predict(xt)
    assert masks.shape == (40, 64, 64) and masks.dtype == np.int64
    baseline = recipe.evaluate(np.zeros_like(yt.numpy()), yt.numpy())["miou"]
    score = recipe.evaluate(masks, yt.numpy())["miou"]
    assert baseline < 0.3 and score > baseline + 0.3, (baseline, score)


def test_evaluate_matches_a_hand_computation_and_is_one_for_perfect_predictions(recipe):
    truth = np.array([[[0, 0, 1], [2, 2, 3]]])      # one 2x3 "image"
    guess = np.array([[[0, 1, 1], [2, 0, 3]]])
    # background: right at (0,0) only, union {(0,0), (0,1), (1,1)} -> 1/3; circle: (0,2) of
    # {(0,1), (0,2)} -> 1/2; square: (1,0) of {(1,0), (1,1)} -> 1/2; triangle: 1/1.
    scores = recipe.evaluate(guess, truth)
    assert scores["iou_background"] == pytest.approx(1 / 3) and scores["iou_circle"] == pytest.approx(1 / 2)
    assert scores["iou_square"] == pytest.approx(1 / 2) and scores["iou_triangle"] == pytest.approx(1.0)
    assert scores["miou"] == pytest.approx((1 / 3 + 0.5 + 0.5 + 1.0) / 4)
    assert scores["pixel_accuracy"] == pytest.approx(4 / 6)
    perfect = recipe.evaluate(truth, truth)
    assert perfect["miou"] == 1.0 and perfect["pixel_accuracy"] == 1.0


def test_the_unet_maps_uint8_images_to_class_logits_and_predict_to_masks(recipe):
    torch.manual_seed(0)
    for small in (True, False):
        model = recipe.build_model(small=small).eval()
        images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
        with torch.inference_mode():
            assert model(images).shape == (2, 4, 64, 64)
            masks = recipe.predict(model, images)
        assert masks.shape == (2, 64, 64) and masks.dtype == np.int64 and 0 <= masks.min() <= masks.max() <= 3


def test_the_loss_and_the_training_metric_agree_with_the_targets(recipe):
    targets = torch.randint(0, 4, (2, 64, 64))
    perfect = torch.nn.functional.one_hot(targets, 4).permute(0, 3, 1, 2).float() * 20
    assert float(recipe.dice_cross_entropy(perfect, targets)) < 1e-3
    assert float(recipe.dice_cross_entropy(torch.zeros(2, 4, 64, 64), targets)) > 1.0
    metric = recipe.training(small=True)["metrics"]["miou"]
    metric.reset()
    metric.update(perfect, targets)
    assert metric.compute() == 1.0


def test_read_input_resizes_any_image_to_a_3x64x64_uint8_tensor(recipe, tmp_path):
    rgb = np.zeros((100, 80, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "big.png")
    Image.fromarray(np.full((64, 64), 90, dtype=np.uint8), mode="L").save(tmp_path / "grey.png")
    big, grey = recipe.read_input(str(tmp_path / "big.png")), recipe.read_input(str(tmp_path / "grey.png"))
    assert big.shape == grey.shape == (3, 64, 64) and big.dtype == grey.dtype == torch.uint8
    assert int(big[0].float().mean().round()) == 200 and int(big[1].max()) == 0 and int(grey.min()) == 90
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(UsageError, match="bad.png"):
        recipe.read_input(str(tmp_path / "bad.png"))
    mask = np.zeros((64, 64), dtype=np.int64)
    fields = recipe.format_prediction(mask, None)
    assert len(fields["mask"]) == 64 and len(fields["mask"][0]) == 64 and fields["mask"][0][0] == 0


def test_report_figure_draws_inputs_truth_and_each_pipeline(recipe, scenes):
    from matplotlib.figure import Figure

    _, (xt, yt) = scenes
    figure = recipe.report_figure(xt, yt, {"staged": np.zeros_like(yt.numpy()), "end-to-end": yt.numpy()})
    assert isinstance(figure, Figure) and len(figure.axes) == 4 * 4


@pytest.fixture(scope="module")
def small_comparison(tmp_path_factory):
    """`e2e compare segment --small`, the configuration the suite runs for real."""
    from endtoend.cli import main

    out = tmp_path_factory.mktemp("segment") / "compare"
    assert main(["compare", "segment", "--small", "--out", str(out), "--no-progress"]) == 0
    return out


def test_compare_small_writes_staged_and_end_to_end_rows_and_the_pictures(small_comparison):
    import json

    comparison = json.loads((small_comparison / "comparison.json").read_text())
    rows = {row["pipeline"]: row for row in comparison["rows"]}
    assert set(rows) == {"background + threshold + shape features + RF",
                         "background + threshold + shape features + SVM", "end-to-end"}
    assert all(0 <= row["value"] <= 1 and "iou_triangle" in row["metrics"] for row in rows.values())
    assert rows["background + threshold + shape features + SVM"]["value"] > 0.5  # far above all-background
    html = (small_comparison / "report.html").read_text()
    assert "Examples" in html and "data:image/png;base64," in html


def test_predict_writes_a_png_mask_beside_each_input_that_matches_the_json(small_comparison, tmp_path, capsys):
    import json

    from endtoend.cli import main

    scene = make_scenes(1, seed=5)[0]
    path = tmp_path / "scene.png"
    Image.fromarray(scene.image.numpy().transpose(1, 2, 0)).save(path)
    run = small_comparison / "end-to-end" / "seed-0"
    assert main(["predict", str(run), str(path), "--json"]) == 0
    printed = np.array(json.loads(capsys.readouterr().out)[0]["mask"])
    assert main(["predict", str(run), str(path)]) == 0
    assert capsys.readouterr().out.strip() == f"{path}: wrote {tmp_path / 'scene.mask.png'}"
    written = np.asarray(Image.open(tmp_path / "scene.mask.png"))
    assert written.shape == (64, 64) and np.array_equal(written, printed)
    assert main(["predict", str(run), str(path)]) == 0  # a second run never overwrites the first mask
    assert capsys.readouterr().out.strip().endswith("scene-2.mask.png") and (tmp_path / "scene-2.mask.png").exists()
