"""Writing generated images: uint8 arrays, sample grids and PNG files. (Reading reference images for
evaluation: evaluation/reference_images.py.)"""
import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """images: [B, C, H, W] in [-1, 1] -> [B, H, W, C] uint8."""
    scaled = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return scaled.permute(0, 2, 3, 1).cpu().numpy()


def image_grid(images: torch.Tensor, nrow: Optional[int] = None, padding: int = 2) -> np.ndarray:
    """images: [B, C, H, W] in [-1, 1] -> one [rows*(H+p)+p, nrow*(W+p)+p, C] uint8 tile, white padding."""
    pictures = to_uint8(images)
    count, height, width, channels = pictures.shape
    nrow = nrow or math.ceil(math.sqrt(count))
    rows = math.ceil(count / nrow)
    grid = np.full(
        (rows * (height + padding) + padding, nrow * (width + padding) + padding, channels), 255, np.uint8
    )
    for index, picture in enumerate(pictures):
        top = padding + (index // nrow) * (height + padding)
        left = padding + (index % nrow) * (width + padding)
        grid[top : top + height, left : left + width] = picture
    return grid


def save_png(array: np.ndarray, path) -> Path:
    """array: [H, W, C] uint8 (C = 1 or 3)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(path)
    return path
