"""Judging a picture of the demo dataset's kind from its pixels: which palette colour, which shape.

The foreground is every pixel far from the background colour (the median of the border pixels). Its
colour is the palette entry nearest to the foreground's median RGB. Its shape comes from how much of its
bounding box it fills: a square fills all of it, a circle pi/4 = 0.785, an upright triangle 1/2.
"""
import re
from typing import Optional, Tuple

import numpy as np

from nemo_imagen.data.demo import COLOURS, SHAPES

FOREGROUND_DISTANCE = 60.0  # RGB distance from the background that counts as shape
MIN_FOREGROUND_FRACTION = 0.02  # less than this of the image: no shape drawn
# fill-ratio boundaries halfway between triangle (0.5), circle (0.785) and square (1.0)
TRIANGLE_BELOW = 0.64
SQUARE_ABOVE = 0.89


def judge(image: np.ndarray) -> Tuple[Optional[str], Optional[str]]:
    """image: [H, W, 3] uint8 -> (colour, shape), each None when the image shows no shape."""
    pixels = image.astype(np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = np.median(border, axis=0)
    foreground = np.linalg.norm(pixels - background, axis=-1) > FOREGROUND_DISTANCE
    if foreground.mean() < MIN_FOREGROUND_FRACTION:
        return None, None
    median_rgb = np.median(pixels[foreground], axis=0)
    colour = min(COLOURS, key=lambda name: np.linalg.norm(median_rgb - np.asarray(COLOURS[name], np.float32)))
    rows, cols = np.nonzero(foreground)
    # 1st-99th percentile extent, so a few stray pixels do not inflate the box
    top, bottom = np.percentile(rows, [1, 99])
    left, right = np.percentile(cols, [1, 99])
    box_area = (bottom - top + 1) * (right - left + 1)
    inside = foreground[int(top) : int(bottom) + 1, int(left) : int(right) + 1].sum()
    fill = inside / box_area
    shape = "triangle" if fill < TRIANGLE_BELOW else "square" if fill > SQUARE_ABOVE else "circle"
    return colour, shape


def prompt_target(prompt: str) -> Tuple[str, str]:
    """The (colour, shape) a prompt asks for: 'a photo of a red circle' -> ('red', 'circle')."""
    pattern = rf"\b({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})\b"
    found = re.search(pattern, prompt.lower())
    if not found:
        raise ValueError(f"prompt {prompt!r} names no '<colour> <shape>' of the demo dataset")
    return found.group(1), found.group(2)
