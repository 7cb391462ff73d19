import random

import numpy as np
import pytest
import torch
from PIL import Image

from nemo_imagen.data.transforms import (
    ImageTooSmallError,
    ImageTransform,
    bicubic_pyramid,
    center_crop,
    horizontal_flip,
    passes_resolution_filter,
    random_crop,
    resize_smallest_side,
    to_tensor,
)


def coordinate_image(width: int, height: int) -> Image.Image:
    """Pixel (x, y) = (x, y, 7): every pixel says where it came from."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[..., 0] = np.arange(width)[None, :]
    array[..., 1] = np.arange(height)[:, None]
    array[..., 2] = 7
    return Image.fromarray(array)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(int)


def test_resolution_filter_larger_keeps_images_with_both_sides_at_least_value():
    assert passes_resolution_filter((64, 64), "larger", 64)
    assert passes_resolution_filter((300, 64), "larger", 64)
    assert not passes_resolution_filter((63, 300), "larger", 64)
    assert not passes_resolution_filter((300, 63), "larger", 64)


def test_resolution_filter_smaller_keeps_images_with_both_sides_at_most_value():
    assert passes_resolution_filter((64, 64), "smaller", 64)
    assert passes_resolution_filter((10, 64), "smaller", 64)
    assert not passes_resolution_filter((65, 10), "smaller", 64)
    with pytest.raises(ValueError, match="bigger"):
        passes_resolution_filter((64, 64), "bigger", 64)


@pytest.mark.parametrize("size, expected", [((100, 50), (128, 64)), ((50, 75), (64, 96)), ((99, 50), (64 * 99 / 50, 64))])
def test_resize_smallest_side_keeps_aspect_and_matches_pil_bicubic(size, expected):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    out = resize_smallest_side(image, 64)
    expected = (round(expected[0]), round(expected[1]))  # 99x50 -> 126.72 -> 127
    assert out.size == expected
    assert min(out.size) == 64
    np.testing.assert_array_equal(pixels(out), pixels(image.resize(expected, Image.BICUBIC)))


def test_resize_smallest_side_returns_an_image_of_the_right_size_unchanged():
    image = coordinate_image(80, 64)
    assert resize_smallest_side(image, 64) is image


def test_center_crop_takes_the_middle_pixels():
    image = coordinate_image(5, 4)
    out = pixels(center_crop(image, 2, 2))
    # left = (5 - 2) // 2 = 1, top = (4 - 2) // 2 = 1
    assert out[..., 0].tolist() == [[1, 2], [1, 2]]
    assert out[..., 1].tolist() == [[1, 1], [2, 2]]
    with pytest.raises(ImageTooSmallError):
        center_crop(image, 5, 5)


def test_random_crop_is_an_unscaled_window_inside_the_image_at_every_offset():
    image = coordinate_image(20, 12)
    rng = random.Random(0)
    lefts, tops = set(), set()
    for _ in range(400):
        out = pixels(random_crop(image, 8, 8, rng))
        left, top = out[0, 0, 0], out[0, 0, 1]
        assert 0 <= left <= 20 - 8 and 0 <= top <= 12 - 8
        # Scale preserved: exactly the 8x8 window of the original at (left, top).
        np.testing.assert_array_equal(out, pixels(image)[top : top + 8, left : left + 8])
        lefts.add(left)
        tops.add(top)
    assert lefts == set(range(13)) and tops == set(range(5))
    with pytest.raises(ImageTooSmallError):
        random_crop(image, 13, 13, rng)


def test_horizontal_flip_mirrors_columns():
    out = pixels(horizontal_flip(coordinate_image(6, 3)))
    assert out[0, :, 0].tolist() == [5, 4, 3, 2, 1, 0]
    assert out[:, 0, 1].tolist() == [0, 1, 2]


def test_to_tensor_maps_0_to_minus_1_and_255_to_1_channels_first():
    array = np.zeros((2, 3, 3), dtype=np.uint8)
    array[..., 0] = 255
    array[0, 0, 2] = 51  # 51 / 127.5 - 1 = -0.6
    tensor = to_tensor(Image.fromarray(array))
    assert tensor.shape == (3, 2, 3) and tensor.dtype == torch.float32
    assert torch.all(tensor[0] == 1.0) and torch.all(tensor[1] == -1.0)
    assert tensor[2, 0, 0].item() == pytest.approx(-0.6)
    assert tensor[2, 1, 1].item() == -1.0


def test_bicubic_pyramid_equals_pil_bicubic_of_the_full_image():
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    levels = bicubic_pyramid(image, [16, 32, 64])
    assert levels[64] is image
    for r in (16, 32):
        assert levels[r].size == (r, r)
        np.testing.assert_array_equal(pixels(levels[r]), pixels(image.resize((r, r), Image.BICUBIC)))
    with pytest.raises(ValueError, match="64x64"):
        bicubic_pyramid(coordinate_image(64, 60), [32, 64])


def test_image_transform_composes_resize_crop_and_pyramid():
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (80, 100, 3), dtype=np.uint8))
    out = ImageTransform([32, 64], resize_smallest_side=64)(image, random.Random(0))
    expected = image.resize((80, 64), Image.BICUBIC).crop((8, 0, 72, 64))
    assert set(out) == {32, 64}
    torch.testing.assert_close(out[64], to_tensor(expected))
    torch.testing.assert_close(out[32], to_tensor(expected.resize((32, 32), Image.BICUBIC)))


def test_image_transform_flips_about_half_the_images():
    image = coordinate_image(64, 64)
    transform = ImageTransform([64], horizontal_flip=True)
    rng = random.Random(0)
    # Pixel (0, 0) has red 0 (-> -1.0) unflipped and red 63 (-> -0.506) flipped.
    flipped = sum(bool(transform(image, rng)[64][0, 0, 0] > -0.9) for _ in range(200))
    assert 70 <= flipped <= 130
