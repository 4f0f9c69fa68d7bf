import pytest
import torch

from endtoend.errors import UsageError
from endtoend.relax import affine_crop


def images(batch: int = 2, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(batch, 3, 8, 10, generator=torch.Generator().manual_seed(0), dtype=dtype)


def test_whole_image_box_is_the_identity():
    x = images()
    boxes = torch.tensor([[0.0, 0.0, 10.0, 8.0]]).expand(2, 4)
    torch.testing.assert_close(affine_crop(x, boxes, size=(8, 10)), x)


def test_integer_boxes_reproduce_integer_slicing():
    x = images()
    boxes = torch.tensor([[2.0, 1.0, 6.0, 4.0], [5.0, 3.0, 9.0, 6.0]])  # same size, different places
    crops = affine_crop(x, boxes, size=(3, 4))
    torch.testing.assert_close(crops[0], x[0, :, 1:4, 2:6])
    torch.testing.assert_close(crops[1], x[1, :, 3:6, 5:9])


def test_resizing_a_constant_region_keeps_it_constant():
    x = torch.full((1, 1, 8, 8), 0.7)
    crop = affine_crop(x, torch.tensor([[1.3, 2.1, 6.2, 7.4]]), size=(5, 3))
    assert crop.shape == (1, 1, 5, 3)
    torch.testing.assert_close(crop, torch.full((1, 1, 5, 3), 0.7))


def test_gradient_reaches_the_box_with_the_right_sign():
    x = torch.linspace(0, 1, 10).expand(1, 1, 8, 10)  # brighter to the right
    boxes = torch.tensor([[2.0, 2.0, 5.0, 6.0]], requires_grad=True)
    affine_crop(x, boxes, size=(4, 3)).mean().backward()
    assert boxes.grad[0, 0] > 0 and boxes.grad[0, 2] > 0  # moving either x edge right brightens
    assert boxes.grad[0, 1].abs() < 1e-6 and boxes.grad[0, 3].abs() < 1e-6  # no vertical change


def test_affine_crop_gradcheck_in_images_and_boxes():
    x = images(batch=1, dtype=torch.float64)[:, :1, :5, :6].requires_grad_(True)
    # Sample points fall between pixel centres, away from the kinks of bilinear interpolation.
    boxes = torch.tensor([[0.7, 1.1, 4.3, 3.7]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda i, b: affine_crop(i, b, size=(3, 2)), (x, boxes))


def test_an_int_size_means_a_square_crop():
    x = images()
    boxes = torch.tensor([[1.3, 0.4, 7.1, 6.0], [0.0, 2.0, 5.0, 7.5]], requires_grad=True)
    square = affine_crop(x, boxes, size=5)
    assert square.shape == (2, 3, 5, 5)
    assert torch.equal(square, affine_crop(x, boxes, size=(5, 5)))
    (grad,) = torch.autograd.grad(square.sum(), boxes)
    (grad_pair,) = torch.autograd.grad(affine_crop(x, boxes, size=(5, 5)).sum(), boxes)
    assert torch.equal(grad, grad_pair) and grad.abs().sum() > 0


def test_shapes_are_checked_and_device_follows_the_input():
    with pytest.raises(UsageError, match=r"\(B, 4\)"):
        affine_crop(images(), torch.zeros(3, 4), size=(2, 2))
    meta = affine_crop(torch.zeros(2, 3, 8, 8, device="meta"), torch.zeros(2, 4, device="meta"), size=(4, 4))
    assert meta.device.type == "meta" and meta.shape == (2, 3, 4, 4)
