"""Generating one image per caption, in fixed batches, split into shards, skipping images that exist.

Image i belongs to batch i // batch_size, and batch b is always generated from the same captions with the
noise seed `seed + b`. So an image depends only on (captions, batch_size, seed, sampling settings), never on
which shard or rerun made it: shards run in any order, on any number of machines, add up to the unsharded run.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm


def image_path(directory: Path, index: int) -> Path:
    return Path(directory) / f"{index:06d}.png"


def shard_batches(num_batches: int, shard: int, num_shards: int) -> range:
    """The contiguous block of batch indices shard `shard` of `num_shards` makes (sizes differ by at most 1)."""
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"shard: {shard} is not in 0..num_shards-1 (num_shards {num_shards})")
    return range(shard * num_batches // num_shards, (shard + 1) * num_batches // num_shards)


@dataclass
class GenerationResult:
    generated: int
    skipped: int


def generate_images(
    directory,
    captions: Sequence[str],
    generate_batch: Callable[[List[str], int], np.ndarray],
    *,
    batch_size: int,
    shard: int = 0,
    num_shards: int = 1,
    desc: str = "generating",
) -> GenerationResult:
    """Writes `{directory}/{i:06d}.png` for caption i of this shard's batches. A batch whose images all exist
    is skipped; a partly written one is generated again (same noise, same images) and only the missing files
    written. generate_batch(captions, batch_index) -> uint8 [B, H, W, C]."""
    if batch_size < 1:
        raise ValueError(f"batch_size: must be positive, got {batch_size}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    num_batches = -(-len(captions) // batch_size)
    generated = skipped = 0
    for batch_index in tqdm(shard_batches(num_batches, shard, num_shards), desc=desc, unit="batch"):
        indices = range(batch_index * batch_size, min((batch_index + 1) * batch_size, len(captions)))
        missing = [index for index in indices if not image_path(directory, index).is_file()]
        skipped += len(indices) - len(missing)
        if not missing:
            continue
        pictures = generate_batch([captions[index] for index in indices], batch_index)
        if len(pictures) != len(indices):
            raise RuntimeError(f"generate_batch returned {len(pictures)} images for {len(indices)} captions")
        for index in missing:
            picture = pictures[index - indices.start]
            target = image_path(directory, index)
            temporary = target.with_name(target.stem + ".tmp.png")  # a killed run never leaves a truncated PNG
            Image.fromarray(picture.squeeze(-1) if picture.shape[-1] == 1 else picture).save(temporary)
            temporary.replace(target)
            generated += 1
    return GenerationResult(generated, skipped)
