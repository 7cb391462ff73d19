"""Writing generated images: uint8 arrays, image grids and PNG files; and reading back the folder that
examples/sample.py writes (`prompts.txt` and `{prompt_index:05d}_{image_index:02d}.png`) for the pixel
checkers. Plain numpy and PIL, used by the model's sample grids (models/sample_grid.py) and the entry points.
(Reading reference images for evaluation: evaluation/reference_images.py.)"""
import math
from pathlib import Path
from typing import List, Optional, Tuple

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


def read_sample_prompts(folder) -> List[str]:
    """The prompts of `folder`/prompts.txt, in index order. Raises ValueError when there is none."""
    prompts_file = Path(folder) / "prompts.txt"
    if not prompts_file.is_file():
        raise ValueError(f"{prompts_file} not found (write it with examples/sample.py)")
    return prompts_file.read_text(encoding="utf-8").splitlines()


def read_sample_images(folder, num_prompts: int) -> List[Tuple[int, np.ndarray]]:
    """[(prompt index, image [H, W, 3] uint8)] of `folder`'s sample PNGs, in file-name order. Raises ValueError
    naming what is wrong: no sample PNG, or an image of a prompt index beyond `num_prompts`."""
    folder = Path(folder)
    samples = []
    for path in sorted(folder.glob("[0-9]*_[0-9]*.png")):
        index = int(path.stem.split("_")[0])
        if index >= num_prompts:
            raise ValueError(f"{path.name}: prompt {index} is not in {folder / 'prompts.txt'} ({num_prompts} prompts)")
        samples.append((index, np.asarray(Image.open(path).convert("RGB"))))
    if not samples:
        raise ValueError(f"no sample PNGs in {folder}")
    return samples
