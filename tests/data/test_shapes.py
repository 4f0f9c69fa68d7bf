"""endtoend.data.shapes: the shapes world follows its spec (checked on 300 seeded scenes)."""

import numpy as np
import pytest
import torch

from endtoend import UsageError
from endtoend.data import shapes
from endtoend.data.shapes import CLASSES, SIZE, make_scenes, shape_mask, stack_images, stack_masks, targets

COUNT, SEED = 300, 12345


@pytest.fixture(scope="module")
def scenes():
    return make_scenes(COUNT, SEED)


@pytest.fixture(scope="module")
def drafts():
    """The same scenes before they become tensors: noiseless image, background, stripes flag."""
    return [shapes._draw(shapes._scene_rng(SEED, i)) for i in range(COUNT)]


def full_masks(scene):
    """Each object's full shape, rebuilt from its public box and label only."""
    out = []
    for (x1, y1, x2, y2), label in zip(scene.boxes.tolist(), scene.labels.tolist()):
        assert x2 - x1 == y2 - y1
        out.append(shape_mask(CLASSES[label], int(x1), int(y1), int(x2 - x1)))
    return out


def tight_bounds(mask):
    rows, cols = np.nonzero(mask)
    return [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]


def test_shapes_and_dtypes_of_scenes_and_helpers(scenes):
    assert CLASSES == ("circle", "square", "triangle") and SIZE == 64
    for scene in scenes:
        n = len(scene.labels)
        assert scene.image.shape == (3, 64, 64) and scene.image.dtype == torch.uint8
        assert scene.boxes.shape == (n, 4) and scene.boxes.dtype == torch.float32
        assert scene.labels.shape == (n,) and scene.labels.dtype == torch.int64
        assert scene.mask.shape == (64, 64) and scene.mask.dtype == torch.int64
        assert 0 <= int(scene.mask.min()) and int(scene.mask.max()) <= 3
        assert set(scene.labels.tolist()) <= {0, 1, 2}
    images, masks = stack_images(scenes), stack_masks(scenes)
    assert images.shape == (COUNT, 3, 64, 64) and images.dtype == torch.uint8
    assert masks.shape == (COUNT, 64, 64) and masks.dtype == torch.int64
    assert torch.equal(images[7], scenes[7].image) and torch.equal(masks[7], scenes[7].mask)
    assert stack_images([]).shape == (0, 3, 64, 64) and stack_masks([]).shape == (0, 64, 64)
    found = targets(scenes)
    assert len(found) == COUNT and set(found[0]) == {"boxes", "labels"}
    assert all(torch.equal(t["boxes"], s.boxes) and torch.equal(t["labels"], s.labels)
               for t, s in zip(found, scenes))


def test_deterministic_and_independent_of_count(scenes):
    first, again = make_scenes(10, SEED), make_scenes(10, SEED)
    for a, b, c in zip(first, again, scenes[:10]):
        for field in ("image", "boxes", "labels", "mask"):
            assert torch.equal(getattr(a, field), getattr(b, field))
            assert torch.equal(getattr(a, field), getattr(c, field))
    other = make_scenes(10, SEED + 1)
    assert not all(torch.equal(a.image, b.image) for a, b in zip(first, other))


def test_scenes_are_the_drafts(scenes, drafts):
    for scene, draft in zip(scenes, drafts):
        assert np.array_equal(scene.image.numpy(), draft.image)
        assert scene.labels.tolist() == [obj.label for obj in draft.objects]


def test_object_count_is_0_to_5_and_roughly_uniform(scenes):
    counts = np.bincount([len(scene.labels) for scene in scenes], minlength=6)
    assert len(counts) == 6                      # never more than 5
    assert counts.min() >= 0.5 * COUNT / 6 and counts.max() <= 1.5 * COUNT / 6, counts


def test_every_class_appears_roughly_uniformly(scenes):
    labels = np.concatenate([scene.labels.numpy() for scene in scenes])
    shares = np.bincount(labels, minlength=3) / len(labels)
    assert len(shares) == 3 and shares.min() > 0.25, shares


def test_sizes_are_10_to_24_and_boxes_inside_the_image(scenes, drafts):
    for scene, draft in zip(scenes, drafts):
        boxes = scene.boxes.numpy()
        assert (boxes >= 0).all() and (boxes <= 64).all()
        assert np.array_equal(boxes, np.round(boxes))           # pixel bounds
        width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        assert ((width >= 10) & (width <= 24)).all()
        # circle: diameter, square: side, triangle: base = height; all exact, not just within 1 px
        assert np.array_equal(width, height)
        assert np.array_equal(width, [obj.size for obj in draft.objects])
    sizes = np.concatenate([[obj.size for obj in d.objects] for d in drafts])
    assert set(sizes) == set(range(10, 25))


@pytest.mark.parametrize("kind", CLASSES)
def test_shape_mask_fills_exactly_its_box(kind):
    for size in range(1, 25):
        for x, y in [(0, 0), (3, 7), (64 - size, 64 - size)]:
            mask = shape_mask(kind, x, y, size)
            assert mask.shape == (64, 64) and mask.dtype == bool
            assert tight_bounds(mask) == [x, y, x + size, y + size], (kind, size, x, y)
            box = mask[y:y + size, x:x + size]
            assert np.array_equal(box, box[:, ::-1])             # left-right symmetric
            if kind != "triangle":
                assert np.array_equal(box, box.T)                # and top-bottom too
    square = shape_mask("square", 5, 6, 12)
    assert square.sum() == 144


def test_triangle_is_upright_isosceles_apex_at_top_centre():
    for size in range(10, 25):
        box = shape_mask("triangle", 20, 10, size)[10:10 + size, 20:20 + size]
        widths = box.sum(axis=1)
        assert widths[0] <= 2 and widths[-1] == size             # apex on top, full base below
        assert (np.diff(widths) >= 0).all()                      # widening downwards
        assert abs(box.sum() - size * size / 2) <= size          # area of base * height / 2
        centre = (np.nonzero(box[0])[0].mean() + 0.5)
        assert centre == pytest.approx(size / 2)


def test_circle_area_is_close_to_pi_r_squared():
    for size in range(10, 25):
        area = shape_mask("circle", 0, 0, size).sum()
        assert abs(area - np.pi * size * size / 4) <= 0.06 * np.pi * size * size / 4


def test_shape_mask_rejects_bad_arguments():
    with pytest.raises(UsageError):
        shape_mask("hexagon", 0, 0, 10)
    with pytest.raises(UsageError):
        shape_mask("circle", 50, 0, 20)                          # not inside the image
    with pytest.raises(UsageError):
        make_scenes(-1, 0)


def test_box_is_the_tight_bounds_of_the_full_shape(scenes, drafts):
    for scene, draft in zip(scenes, drafts):
        for box, obj in zip(scene.boxes.tolist(), draft.objects):
            full = shape_mask(CLASSES[obj.label], obj.x, obj.y, obj.size)
            assert np.array_equal(full, obj.full)
            assert box == tight_bounds(full)


def test_mask_is_the_visible_pixels_later_objects_on_top(scenes):
    for scene in scenes:
        mask = scene.mask.numpy()
        painted = np.zeros((64, 64), dtype=np.int64)
        for full, label in zip(full_masks(scene), scene.labels.tolist()):
            painted[full] = label + 1                            # last object covering a pixel wins
        assert np.array_equal(mask, painted)
        for cls in (1, 2, 3):                                    # visible pixels lie in a box of their class
            inside_some = np.zeros((64, 64), dtype=bool)
            for (x1, y1, x2, y2), label in zip(scene.boxes.int().tolist(), scene.labels.tolist()):
                if label + 1 == cls:
                    inside_some[y1:y2, x1:x2] = True
            assert not ((mask == cls) & ~inside_some).any()


def test_overlap_with_each_earlier_object_is_at_most_30_percent(scenes):
    overlapping = 0
    for scene in scenes:
        fulls = full_masks(scene)
        for j, later in enumerate(fulls):
            for earlier in fulls[:j]:
                shared = (later & earlier).sum()
                overlapping += shared > 0
                assert shared <= 0.3 * later.sum()
    assert overlapping > 0                                       # the bound is exercised


def test_object_colour_stands_out_from_the_background_under_it(drafts):
    for draft in drafts:
        for obj in draft.objects:
            under = draft.background[:, obj.full].mean(axis=1)   # noiseless background only
            assert np.abs(obj.colour - under).max() >= 60
            assert (0 <= obj.colour).all() and (obj.colour <= 255).all()
        visible = np.zeros((64, 64), dtype=np.int64) - 1
        for k, obj in enumerate(draft.objects):
            visible[obj.full] = k
        for k, obj in enumerate(draft.objects):                  # objects are flat-coloured
            assert (draft.clean[:, visible == k] == obj.colour[:, None]).all()
        assert (draft.clean[:, visible < 0] == draft.background[:, visible < 0]).all()


def planar_residual(channel):
    rows, cols = np.mgrid[0:64, 0:64]
    design = np.stack([np.ones(64 * 64), rows.ravel(), cols.ravel()], axis=1)
    coef, *_ = np.linalg.lstsq(design, channel.ravel(), rcond=None)
    return channel.ravel() - design @ coef


def test_gradient_background_with_stripes_on_about_half(drafts):
    striped = np.array([d.striped for d in drafts])
    assert 0.4 <= striped.mean() <= 0.6
    checked = 0
    for draft in drafts:
        residual = np.stack([planar_residual(c) for c in draft.background])
        if not draft.striped:
            assert np.abs(residual).max() < 1e-6                # a pure linear gradient
        elif 0 < draft.background.min() and draft.background.max() < 255:   # stripes not clipped
            # one sinusoid of amplitude 10-25 added to all channels alike
            assert np.abs(residual - residual[0]).max() < 1e-6
            assert 2 * 10 - 3 <= np.ptp(residual[0]) <= 2 * 25 + 3
            checked += 1
    assert checked > 20


def test_noise_std_is_4_to_16_over_background_and_objects(drafts, scenes):
    stds = np.array([d.noise_std for d in drafts])
    assert 4 <= stds.min() and stds.max() <= 16 and np.ptp(stds) > 8
    measured_any = 0
    for draft, scene in zip(drafts, scenes):
        noise = draft.image.astype(float) - draft.clean
        # far enough from 0 and 255 that clipping cannot bias the estimate
        usable = (draft.clean >= 70) & (draft.clean <= 185)
        on_objects = usable & (scene.mask.numpy() > 0)[None]
        for region in (usable, on_objects):
            if region.sum() >= 500:
                # rounding to integers adds a uniform error of variance 1/12
                estimate = np.sqrt(max(noise[region].var() - 1 / 12, 0))
                assert estimate == pytest.approx(draft.noise_std, rel=0.1)
                assert abs(noise[region].mean()) < 4 * draft.noise_std / np.sqrt(region.sum())  # zero-mean
                measured_any += 1
    assert measured_any > COUNT // 2
