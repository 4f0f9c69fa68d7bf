"""endtoend.data.read_image: any Pillow mode and size -> (1, H, W) float32 in [0, 1], light on dark."""

import numpy as np
import pytest
import torch
from PIL import Image

from endtoend import UsageError
from endtoend.data import read_image, read_rgb


def figure(side: int, dtype=np.uint8, high: int = 255) -> np.ndarray:
    """A light square (the middle half) on a black background."""
    pixels = np.zeros((side, side), dtype=dtype)
    pixels[side // 4: side - side // 4, side // 4: side - side // 4] = high
    return pixels


def as_mode(pixels: np.ndarray, mode: str) -> Image.Image:
    if mode == "I;16":
        return Image.fromarray((pixels.astype(np.uint32) * 257).astype(np.uint16))
    gray = Image.fromarray(pixels)
    if mode == "RGBA":
        image = gray.convert("RGBA")
        image.putalpha(255)
        return image
    return gray.convert(mode)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16"])
@pytest.mark.parametrize("side", [28, 56, 8])
def test_modes_and_sizes_give_one_grayscale_channel_in_0_1(tmp_path, mode, side):
    path = tmp_path / f"figure-{mode.replace(';', '')}-{side}.png"
    as_mode(figure(side), mode).save(path)
    image = read_image(path, (28, 28))
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert image[0, 14, 14] == pytest.approx(1.0, abs=1e-3)  # the light figure stays light
    assert image[0, 0, 0] == pytest.approx(0.0, abs=1e-3)    # on a dark background: not inverted


def test_same_size_is_read_exactly(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    pixels[0, :] = pixels[-1, :] = pixels[:, 0] = pixels[:, -1] = 0  # a dark border
    Image.fromarray(pixels).save(tmp_path / "noise.png")
    image = read_image(tmp_path / "noise.png", (28, 28))
    assert torch.equal(image[0], torch.from_numpy(pixels.astype(np.float32) / 255.0))


def test_sixteen_bit_is_scaled_by_65535(tmp_path):
    pixels = figure(8, np.uint16, 65535)
    pixels[3, 3] = 32768
    Image.fromarray(pixels).save(tmp_path / "deep.png")
    image = read_image(tmp_path / "deep.png", (8, 8))
    assert image[0, 2, 2] == 1.0 and image[0, 3, 3] == pytest.approx(32768 / 65535)


def test_colour_becomes_luminance(tmp_path):
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    pixels[2:6, 2:6] = (255, 0, 0)
    Image.fromarray(pixels).save(tmp_path / "red.png")
    assert read_image(tmp_path / "red.png", (8, 8))[0, 4, 4] == pytest.approx(0.299, abs=0.01)


def test_dark_figure_on_light_background_is_inverted(tmp_path):
    Image.fromarray(255 - figure(56)).save(tmp_path / "ink.png")
    image = read_image(tmp_path / "ink.png", (28, 28))
    assert image[0, 14, 14] == pytest.approx(1.0, abs=1e-3) and image[0, 0, 0] == pytest.approx(0.0, abs=1e-3)


def test_transparency_is_composited_on_black(tmp_path):
    """A white, fully transparent background reads as black (so no inversion); half alpha, half."""
    rgba = np.full((8, 8, 4), 255, dtype=np.uint8)
    rgba[..., 3] = 0
    rgba[2:6, 2:6, 3] = 255
    rgba[2, 2, 3] = 128
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    image = read_image(tmp_path / "alpha.png", (8, 8))
    assert image[0, 0, 0] == 0.0 and image[0, 4, 4] == 1.0
    assert image[0, 2, 2] == pytest.approx(128 / 255, abs=1e-3)


def test_resize_takes_height_then_width_with_antialiasing(tmp_path):
    pixels = np.zeros((84, 84), dtype=np.uint8)
    pixels[:, ::3] = 255  # one light column in three: shrunk by 3, every pixel is about 1/3
    Image.fromarray(pixels).save(tmp_path / "stripes.png")
    assert read_image(tmp_path / "stripes.png", (20, 30)).shape == (1, 20, 30)
    shrunk = read_image(tmp_path / "stripes.png", (28, 28))
    assert shrunk[0, 5:-5, 5:-5].min() > 0.2 and shrunk[0, 5:-5, 5:-5].max() < 0.45  # not aliased to 0 or 1


def test_jpeg(tmp_path):
    Image.fromarray(figure(56)).convert("RGB").save(tmp_path / "figure.jpg", quality=95)
    image = read_image(tmp_path / "figure.jpg", (28, 28))
    assert image.shape == (1, 28, 28) and image[0, 14, 14] > 0.9 and image[0, 0, 0] < 0.1


def one_line_error(path, size=(28, 28)) -> str:
    with pytest.raises(UsageError) as raised:
        read_image(path, size)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_missing_file_is_one_line_naming_it(tmp_path):
    path = tmp_path / "nowhere.png"
    assert one_line_error(path) == f"no such image file: {path}"


def test_not_an_image_is_one_line_naming_it(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image\n")
    message = one_line_error(path)
    assert str(path) in message and "not an image file that Pillow can open" in message


def test_truncated_image_is_one_line_naming_it(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    assert one_line_error(path).startswith(f"cannot read image {path}: ")


def test_a_folder_and_a_bad_size_are_refused(tmp_path):
    assert "it is a folder" in one_line_error(tmp_path)
    Image.fromarray(figure(8)).save(tmp_path / "ok.png")
    assert "two positive integers" in one_line_error(tmp_path / "ok.png", size=(28,))
    assert "two positive integers" in one_line_error(tmp_path / "ok.png", size=(0, 28))


def test_read_rgb_keeps_colour_as_uint8_channels_first_and_resizes(tmp_path):
    rgb = np.zeros((40, 50, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 2] = 200, 30
    Image.fromarray(rgb).save(tmp_path / "wide.png")
    image = read_rgb(tmp_path / "wide.png", 64)
    assert image.shape == (3, 64, 64) and image.dtype == torch.uint8
    assert image[:, 32, 32].tolist() == [200, 0, 30]
    exact = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(exact).save(tmp_path / "exact.png")
    assert np.array_equal(read_rgb(tmp_path / "exact.png", 64).numpy().transpose(1, 2, 0), exact)


def test_read_rgb_composites_transparency_on_black_and_takes_grey_and_palette(tmp_path):
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[..., :3], rgba[:32, :, 3] = 255, 255  # opaque white top half, transparent bottom half
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "half.png")
    image = read_rgb(tmp_path / "half.png", 64)
    assert int(image[:, :32].min()) == 255 and int(image[:, 32:].max()) == 0
    Image.fromarray(np.full((64, 64), 90, dtype=np.uint8), mode="L").convert("P").save(tmp_path / "grey.png")
    assert set(read_rgb(tmp_path / "grey.png", 64).unique().tolist()) == {90}


def test_read_rgb_names_a_missing_or_unreadable_file(tmp_path):
    with pytest.raises(UsageError, match="no such image file: .*nope.png"):
        read_rgb(tmp_path / "nope.png", 64)
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(UsageError, match="bad.png"):
        read_rgb(tmp_path / "bad.png", 64)
