"""The detect recipe (shapes-world detection): the padded box forms, COCO scoring, the two
end-to-end detectors' losses (the set loss's matcher wiring, the grid's hand assignment), the
NMS-free decoding, the audit of the set model, e2e predict's objects and the report figure.
Small configurations only: fast. (The staged chain: test_detect_staged.py.)"""

import numpy as np
import pytest
import torch

from endtoend import audit
from endtoend.data.shapes import make_scenes, stack_images
from endtoend.recipes import get_recipe
from endtoend.recipes.detect_boxes import MAX_DETECTIONS, coco_scores, pad_detections, pad_targets, unpad
from endtoend.recipes.detect_models import (NO_OBJECT, GridCriterion, GridDetector, SetDetector, SetLoss, decode,
                                            grid_points, target_list)


@pytest.fixture(scope="module")
def recipe():
    return get_recipe("detect")


@pytest.fixture(scope="module")
def scenes():
    return make_scenes(30, seed=201)


def perfect_detections(targets, shift=0.0, score=0.9):
    """Each truth box as a detection of its own class, moved by `shift` pixels."""
    return pad_detections([np.concatenate([rows[:, :1], np.full((len(rows), 1), score), rows[:, 1:] + shift], 1)
                           for rows in unpad(targets)])


def test_the_recipe_passes_the_contract_and_its_splits_have_the_padded_forms(recipe, scenes):
    assert recipe.NAME == "detect" and recipe.METRIC == "map50" and recipe.HIGHER_IS_BETTER is True
    data = recipe.load_data(small=True)
    (x, y), (xt, yt) = data.train, data.test
    assert x.dtype == torch.uint8 and x.shape[1:] == (3, 64, 64) and len(x) == recipe.SMALL_TRAIN
    assert y.dtype == torch.float32 and y.shape == (len(x), 5, 5) and len(xt) == recipe.TEST == len(yt)
    targets = pad_targets(scenes)
    for scene, rows in zip(scenes, unpad(targets)):  # the padding round-trips every scene exactly
        assert np.array_equal(rows[:, 0], scene.labels.numpy()) and np.array_equal(rows[:, 1:], scene.boxes.numpy())
    assert set(recipe.variants(small=True)) == {recipe.YOLO}


def test_coco_scores_are_one_for_the_truth_lower_for_shifted_boxes_and_zero_for_nothing(scenes):
    targets = pad_targets(scenes)
    perfect = coco_scores(perfect_detections(targets), targets)
    assert perfect["map50"] == pytest.approx(1.0) and perfect["map"] == pytest.approx(1.0)
    assert all(perfect[f"ap50_{name}"] == pytest.approx(1.0) for name in ("circle", "square", "triangle"))
    shifted = coco_scores(perfect_detections(targets, shift=3.0), targets)
    assert shifted["map"] < shifted["map50"] < 1.0
    assert coco_scores(pad_detections([np.zeros((0, 6))] * len(scenes)), targets)["map50"] == 0.0
    wrong_class = perfect_detections(targets)
    wrong_class[..., 0] = np.where(wrong_class[..., 0] >= 0, (wrong_class[..., 0] + 1) % 3, -1)
    assert coco_scores(wrong_class, targets)["map50"] == 0.0
    with pytest.raises(ValueError, match="scenes"):
        coco_scores(perfect_detections(targets)[:3], targets)


def test_pad_detections_sorts_by_score_and_keeps_the_best_twenty():
    rows = np.array([[0, score, 1, 1, 5, 5] for score in np.linspace(0.1, 0.9, 30)], dtype=np.float32)
    padded = pad_detections([rows, np.zeros((0, 6))])
    assert padded.shape == (2, MAX_DETECTIONS, 6)
    assert np.all(np.diff(padded[0, :, 1]) <= 0) and padded[0, 0, 1] == pytest.approx(0.9)
    assert np.all(padded[1, :, 0] == -1)


def test_decode_keeps_overlapping_candidates_no_nms():
    """Two candidates on the same box both come out: nothing is suppressed by overlap."""
    logits = torch.full((1, 3, 4), -5.0)
    logits[0, 0, 1], logits[0, 1, 1], logits[0, 2, NO_OBJECT] = 5.0, 4.0, 5.0
    boxes = torch.tensor([[[0.1, 0.1, 0.4, 0.4], [0.1, 0.1, 0.4, 0.41], [0.5, 0.5, 0.9, 0.9]]])
    detections = decode({"logits": logits, "boxes": boxes})
    assert detections.shape == (1, 3, 6)
    assert detections[0, :2, 0].tolist() == [1.0, 1.0] and detections[0, 0, 1] > detections[0, 1, 1] > 0.9
    assert detections[0, 0, 2:].tolist() == pytest.approx([6.4, 6.4, 25.6, 25.6])
    assert detections[0, 2, 1] < 0.01  # the no-object candidate keeps a real class, scored near zero


@pytest.mark.parametrize("small", [True, False])
def test_both_detectors_map_uint8_images_to_candidates_and_predict_to_detections(recipe, small):
    torch.manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    for model in (recipe.build_model(small), recipe.variants(small)[recipe.YOLO][0]()):
        model.eval()
        with torch.inference_mode():
            out = model(images)
            detections = recipe.predict(model, images)
        assert out["logits"].shape[-1] == 4 and out["boxes"].shape == out["logits"].shape[:2] + (4,)
        assert torch.all(out["boxes"][..., 2:] >= out["boxes"][..., :2])  # positive width and height
        assert detections.shape == (2, min(MAX_DETECTIONS, out["logits"].shape[1]), 6)


def test_the_set_loss_matches_queries_to_targets_and_adds_every_decoder_layer(scenes):
    """A query placed exactly on each target box (with the right class) costs nothing in box
    terms, whichever query it is: the Hungarian matcher finds it."""
    targets = pad_targets(scenes[:4])
    truth = target_list(targets)
    queries = 8
    logits = torch.full((4, queries, 4), -4.0)
    logits[..., NO_OBJECT] = 4.0
    boxes = torch.rand(4, queries, 4) * 0.5
    boxes[..., 2:] = boxes[..., :2] + 0.05
    for item, target in enumerate(truth):
        slots = torch.randperm(queries)[:len(target["labels"])]  # any queries, in any order
        boxes[item, slots] = target["boxes"]
        logits[item, slots] = -4.0
        logits[item, slots, target["labels"]] = 4.0
    loss = SetLoss()
    single = loss.criterion({"logits": logits, "boxes": boxes}, truth)
    assert float(single["l1"]) == pytest.approx(0.0, abs=1e-6) and float(single["giou"]) == pytest.approx(0.0, abs=1e-6)
    outputs = {"logits": logits, "boxes": boxes, "aux_logits": torch.stack([torch.zeros_like(logits)]),
               "aux_boxes": torch.stack([boxes])}
    total = loss(outputs, targets)
    aux = loss.criterion({"logits": torch.zeros_like(logits), "boxes": boxes}, truth)["total"]
    assert float(total) == pytest.approx(float(single["total"] + aux), rel=1e-5)


def test_the_grid_criterion_assigns_each_object_to_its_centre_cell_or_the_nearest_free_one():
    cells = grid_points(16)
    centre = torch.tensor([[0.30, 0.30, 0.34, 0.34]])  # centre (0.32, 0.32): cell row 5, column 5
    twins = {"labels": torch.tensor([0, 1]), "boxes": torch.cat([centre, centre + 0.001])}
    (first, second), = GridCriterion().assign(cells, [twins])
    assert int(first) == 5 * 16 + 5 and int(second) != int(first)
    assert torch.dist(cells[second], cells[first]) == pytest.approx(1 / 16)


def test_the_grid_loss_is_small_for_its_own_targets_and_large_for_a_blank_head(scenes):
    targets = pad_targets(scenes[:4])
    criterion, truth = GridCriterion(), target_list(targets)
    cells = grid_points(16)
    logits = torch.full((4, 256, 4), -8.0)
    logits[..., NO_OBJECT] = 8.0
    boxes = torch.cat([cells - 0.02, cells + 0.02], -1).expand(4, -1, -1).clone()
    for item, cell in enumerate(criterion.assign(cells, truth)):
        boxes[item, cell] = truth[item]["boxes"]
        logits[item, cell] = -8.0
        logits[item, cell, truth[item]["labels"]] = 8.0
    assert float(criterion({"logits": logits, "boxes": boxes}, targets)) < 1e-3
    assert float(criterion({"logits": torch.zeros(4, 256, 4), "boxes": torch.cat([cells, cells + 0.01], -1)
                            .expand(4, -1, -1)}, targets)) > 1.0


def test_the_audit_finds_no_cut_in_the_set_model_the_matcher_is_a_decision(recipe, scenes):
    torch.manual_seed(0)
    model = SetDetector(width=16, dim=32, layers=2)
    report = audit(model, stack_images(scenes[:4]), loss_fn=SetLoss(), targets=pad_targets(scenes[:4]))
    assert report.ok and not [f for f in report.findings if f.severity in ("error", "warning")]


def test_predict_reports_objects_above_the_threshold_in_the_json_form(recipe):
    rows = np.array([[2, 0.97, 1.0, 2.0, 21.0, 22.0], [0, 0.2, 5, 5, 9, 9]] + [[-1, 0, 0, 0, 0, 0]] * 18,
                    dtype=np.float32)
    assert recipe.format_prediction(rows, None) == {
        "objects": [{"label": "triangle", "box": [1.0, 2.0, 21.0, 22.0], "score": 0.97}]}


def test_report_figure_draws_truth_and_each_pipeline(recipe, scenes):
    from matplotlib.figure import Figure

    targets = pad_targets(scenes)
    figure = recipe.report_figure(stack_images(scenes), targets, {"staged": perfect_detections(targets),
                                                                  "end-to-end": perfect_detections(targets, 1.0)})
    assert isinstance(figure, Figure) and len(figure.axes) == 4 * 3


@pytest.fixture(scope="module")
def small_comparison(tmp_path_factory):
    """`e2e compare detect --small`, the configuration the suite runs for real."""
    from endtoend.cli import main

    out = tmp_path_factory.mktemp("detect") / "compare"
    assert main(["compare", "detect", "--small", "--out", str(out), "--no-progress"]) == 0
    return out


def test_compare_small_writes_staged_and_both_end_to_end_rows_and_the_pictures(recipe, small_comparison):
    import json

    comparison = json.loads((small_comparison / "comparison.json").read_text())
    rows = {row["pipeline"]: row for row in comparison["rows"]}
    staged = [name for name, row in rows.items() if row["kind"] == "staged"]
    assert len(staged) == 2 and {"end-to-end", f"end-to-end: {recipe.YOLO}"} <= set(rows)
    for row in rows.values():
        assert row.get("failed") is None and 0 <= row["value"] <= 1 and {"map", "ap50_circle"} <= set(row["metrics"])
    assert max(rows[name]["value"] for name in staged) > 0.3  # the classic chain works on 200 scenes
    assert (small_comparison / "end-to-end-yolo-style-grid-head" / "seed-0" / "model.safetensors").exists()
    html = (small_comparison / "report.html").read_text()
    assert "Examples" in html and "data:image/png;base64," in html


def test_predict_prints_the_objects_of_each_image_for_both_detectors(recipe, small_comparison, tmp_path, capsys):
    import json

    from PIL import Image

    from endtoend.cli import main

    scene = make_scenes(1, seed=5)[0]
    path = tmp_path / "scene.png"
    Image.fromarray(scene.image.numpy().transpose(1, 2, 0)).save(path)
    for folder in ("end-to-end", "end-to-end-yolo-style-grid-head"):
        assert main(["predict", str(small_comparison / folder / "seed-0"), str(path), "--json"]) == 0
        (result,) = json.loads(capsys.readouterr().out)
        assert set(result) == {"input", "objects"} and result["input"] == str(path)
        for found in result["objects"]:
            assert found["label"] in ("circle", "square", "triangle") and found["score"] >= recipe.SCORE_THRESHOLD
            assert len(found["box"]) == 4 and 0 <= found["box"][0] <= found["box"][2] <= 64
        assert main(["predict", str(small_comparison / folder / "seed-0"), str(path)]) == 0
        assert capsys.readouterr().out.startswith(f"{path}: objects ")


def test_the_one_line_form_lists_each_object():
    from endtoend.recipes.predict import one_line_prediction

    result = {"input": "a.png", "objects": [{"label": "circle", "box": [1.0, 2.0, 21.0, 22.0], "score": 0.97},
                                            {"label": "square", "box": [3, 4, 15, 16], "score": 0.6}]}
    assert one_line_prediction(result) == "a.png: objects circle [1.0, 2.0, 21.0, 22.0] 0.97; square [3, 4, 15, 16] 0.6"
