"""benchmarks/other_shapes.py: the independent second generator follows the shapes-world spec
(checked on 200 seeded scenes, with the full shapes and noise-free images it keeps privately)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from endtoend import UsageError
from endtoend.data.shapes import CLASSES, Scene

_PATH = Path(__file__).parents[2] / "benchmarks" / "other_shapes.py"
_SPEC = importlib.util.spec_from_file_location("other_shapes", _PATH)
other_shapes = importlib.util.module_from_spec(_SPEC)
sys.modules["other_shapes"] = other_shapes   # dataclasses look their module up there
_SPEC.loader.exec_module(other_shapes)

COUNT, SEED = 200, 2024


@pytest.fixture(scope="module")
def drawn():
    return other_shapes._draw_scenes(COUNT, SEED)


def objects(drawn):
    """(scene, index, label, box, full, visible) for every object of every scene."""
    for d in drawn:
        for j, (label, box, full) in enumerate(zip(d.scene.labels.tolist(), d.scene.boxes.tolist(),
                                                   d.full)):
            covered = np.zeros_like(full)
            for later in d.full[j + 1:]:
                covered |= later
            yield d, j, label, [int(v) for v in box], full, full & ~covered


def bounds(mask):
    rows, cols = np.nonzero(mask)
    return [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]


def test_types_shapes_and_determinism(drawn):
    for d in drawn:
        scene = d.scene
        assert isinstance(scene, Scene)
        assert scene.image.shape == (3, 64, 64) and scene.image.dtype == torch.uint8
        n = len(scene.labels)
        assert scene.boxes.shape == (n, 4) and scene.boxes.dtype == torch.float32
        assert scene.labels.dtype == torch.int64 and scene.mask.dtype == torch.int64
        assert scene.mask.shape == (64, 64) and 0 <= scene.mask.min() and scene.mask.max() <= 3
    again = other_shapes.make_other_scenes(10, SEED)
    assert all(torch.equal(a.image, d.scene.image) and torch.equal(a.mask, d.scene.mask)
               for a, d in zip(again, drawn))
    with pytest.raises(UsageError, match="count"):
        other_shapes.make_other_scenes(-1, SEED)


def test_counts_classes_and_stripes_cover_the_spec(drawn):
    counts = np.bincount([len(d.scene.labels) for d in drawn], minlength=6)
    assert len(counts) == 6 and (counts > 0).all()      # 0..5 objects, every count occurs
    labels = np.concatenate([d.scene.labels.numpy() for d in drawn])
    assert set(labels.tolist()) == {0, 1, 2}
    assert 0.3 < np.mean([d.striped for d in drawn]) < 0.7


def test_boxes_are_tight_bounds_of_full_shapes_inside_the_image(drawn):
    sides = set()
    for d, j, label, (x1, y1, x2, y2), full, visible in objects(drawn):
        assert d.scene.boxes[j].tolist() == [float(x1), float(y1), float(x2), float(y2)]
        assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64
        assert x2 - x1 == y2 - y1 and 10 <= x2 - x1 <= 24
        sides.add(x2 - x1)
        assert bounds(full) == [x1, y1, x2, y2]
    assert sides == set(range(10, 25))


def test_mask_holds_visible_pixels_inside_boxes(drawn):
    for d, j, label, (x1, y1, x2, y2), full, visible in objects(drawn):
        mask = d.scene.mask.numpy()
        assert (mask[visible] == label + 1).all()
        rows, cols = np.nonzero(visible)
        assert ((x1 <= cols) & (cols < x2) & (y1 <= rows) & (rows < y2)).all()
        if (visible == full).all():   # unoccluded: the box is the bounds of its mask pixels
            in_box = np.zeros_like(full)
            in_box[y1:y2, x1:x2] = mask[y1:y2, x1:x2] == label + 1
            assert bounds(in_box & full) == bounds(full) == [x1, y1, x2, y2]
    for d in drawn:   # nothing in the mask that no object accounts for
        union = np.zeros((64, 64), dtype=bool)
        for full in d.full:
            union |= full
        assert ((d.scene.mask.numpy() > 0) == union).all()


def test_each_object_overlaps_every_earlier_one_by_at_most_30_percent(drawn):
    for d in drawn:
        for j, later in enumerate(d.full):
            for earlier in d.full[:j]:
                assert (later & earlier).sum() <= 0.3 * later.sum()


def test_colours_contrast_with_the_noise_free_background_under_them(drawn):
    for d, j, label, box, full, visible in objects(drawn):
        if visible.any():
            colour = d.clean[visible][0]
            assert (d.clean[visible] == colour).all()     # flat colour
            under = d.background[full].mean(axis=0)
            assert np.abs(colour - under).max() >= 60
    for d in drawn:   # the noise is pixel noise around the clean image, std within [4, 16]
        residual = d.scene.image.numpy().transpose(1, 2, 0) - d.clean
        inside = (d.clean > 40) & (d.clean < 215)        # where clipping does not bite
        assert 3 < residual[inside].std() < 17


def test_triangles_are_upright_and_symmetric(drawn):
    seen = 0
    for d, j, label, (x1, y1, x2, y2), full, visible in objects(drawn):
        if CLASSES[label] != "triangle" or not (visible == full).all():
            continue
        shape = (d.scene.mask.numpy() == label + 1)[y1:y2, x1:x2] & full[y1:y2, x1:x2]
        assert shape[0].sum() < shape[-1].sum() == x2 - x1
        assert (shape == shape[:, ::-1]).all()            # apex at the top centre
        seen += 1
    assert seen > 20
