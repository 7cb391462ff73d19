"""Image transforms of the training pipeline: pure functions on PIL images, plus their composition.

Order (``ImageTransform``): resize the short side (bicubic, antialiased) -> crop (centre, or at a random
position with the scale kept) -> optional horizontal flip -> bicubic pyramid down to every target
resolution -> tensors in [-1, 1]. The resolution filter runs on the decoded image before all of this.
"""
import random
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from nemo_imagen.data.config import RESOLUTION_FILTER_METHODS


class ImageTooSmallError(ValueError):
    """The image is smaller than the requested crop."""


def passes_resolution_filter(size: Tuple[int, int], method: str, value: int) -> bool:
    """NeMo's resolution filter on an image ``size = (width, height)``.

    ``larger``: keep when both sides are ``>= value``; ``smaller``: keep when both are ``<= value``.
    """
    if method not in RESOLUTION_FILTER_METHODS:
        raise ValueError(f"resolution filter method {method!r} is not one of {', '.join(RESOLUTION_FILTER_METHODS)}")
    width, height = size
    if method == "larger":
        return width >= value and height >= value
    return width <= value and height <= value


def resize_smallest_side(image: Image.Image, size: int) -> Image.Image:
    """Bicubic resize (antialiased when shrinking) so that ``min(width, height) == size``.

    The long side becomes ``round(long * size / short)``, at least ``size``. An image whose short side
    is already ``size`` is returned unchanged.
    """
    width, height = image.size
    short, long = min(width, height), max(width, height)
    if short == size:
        return image
    new_long = max(size, int(round(long * size / short)))
    new_size = (size, new_long) if width <= height else (new_long, size)
    return image.resize(new_size, Image.BICUBIC)


def _check_fits(image: Image.Image, height: int, width: int) -> None:
    if image.width < width or image.height < height:
        raise ImageTooSmallError(f"image {image.width}x{image.height} (WxH) is smaller than the crop {width}x{height}")


def center_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    """Crop ``height x width`` pixels from the middle (offset ``(W - width) // 2``, ``(H - height) // 2``)."""
    _check_fits(image, height, width)
    left = (image.width - width) // 2
    top = (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def random_crop(image: Image.Image, height: int, width: int, rng: random.Random) -> Image.Image:
    """Crop ``height x width`` pixels at a uniformly random position; nothing is rescaled."""
    _check_fits(image, height, width)
    left = rng.randint(0, image.width - width)
    top = rng.randint(0, image.height - height)
    return image.crop((left, top, left + width, top + height))


def horizontal_flip(image: Image.Image) -> Image.Image:
    """Mirror left-right."""
    return image.transpose(Image.FLIP_LEFT_RIGHT)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> ``[3, H, W]`` float32 tensor, 0 -> -1 and 255 -> 1."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).div(127.5).sub(1.0).contiguous()


def bicubic_pyramid(image: Image.Image, resolutions: Sequence[int]) -> Dict[int, Image.Image]:
    """Square ``image`` of side ``max(resolutions)`` -> ``{r: image resized bicubically to r x r}``.

    Each level is downsampled from the full-size image (not from the previous level); the largest
    level is ``image`` itself.
    """
    top = max(resolutions)
    if image.size != (top, top):
        raise ValueError(f"bicubic_pyramid: expected a {top}x{top} image, got {image.width}x{image.height}")
    return {r: image if r == top else image.resize((r, r), Image.BICUBIC) for r in resolutions}


class ImageTransform:
    """Decoded RGB image -> ``{r: [3, r, r] float32 tensor in [-1, 1]}`` for every target resolution.

    Args:
        target_resolutions: ascending square sizes; the crop is ``max(target_resolutions)`` square.
        resize_smallest_side: short side after resizing (None = no resize).
        random_crop: crop at a random position (True) or the centre (False).
        horizontal_flip: flip with probability 0.5.
    """

    def __init__(
        self,
        target_resolutions: Sequence[int],
        resize_smallest_side: Optional[int] = None,
        random_crop: bool = False,
        horizontal_flip: bool = False,
    ):
        self.target_resolutions = sorted(target_resolutions)
        self.crop = self.target_resolutions[-1]
        self.resize_smallest_side = resize_smallest_side
        self.random_crop = random_crop
        self.horizontal_flip = horizontal_flip

    def __call__(self, image: Image.Image, rng: random.Random) -> Dict[int, torch.Tensor]:
        """Raises ``ImageTooSmallError`` when the (resized) image is smaller than the crop."""
        if self.resize_smallest_side is not None:
            image = resize_smallest_side(image, self.resize_smallest_side)
        if self.random_crop:
            image = random_crop(image, self.crop, self.crop, rng)
        else:
            image = center_crop(image, self.crop, self.crop)
        if self.horizontal_flip and rng.random() < 0.5:
            image = horizontal_flip(image)
        return {r: to_tensor(level) for r, level in bicubic_pyramid(image, self.target_resolutions).items()}
