"""Reading real reference images for evaluation (a folder or webdataset shards), brought to one square
resolution as uint8 tensors. (Writing generated images: nemo_imagen/images.py.)"""
import hashlib
import io
import tarfile
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def centre_square(image: Image.Image, resolution: int) -> Image.Image:
    """RGB, the largest centred square, resized (bicubic, antialiased by PIL) to resolution x resolution."""
    image = image.convert("RGB")
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return square if side == resolution else square.resize((resolution, resolution), Image.BICUBIC)


def to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL RGB images of one size -> uint8 [B, 3, H, W]."""
    return torch.from_numpy(np.stack([np.asarray(image, dtype=np.uint8) for image in images])).permute(0, 3, 1, 2)


def list_reference_images(paths: Sequence[str]) -> List[Tuple[str, str]]:
    """(container, member) for every image of `paths`: a folder (searched recursively, member "") or webdataset
    `.tar` shards (member = the image's name in the tar). Sorted, so the order never depends on the file system."""
    found: List[Tuple[str, str]] = []
    for path in paths:
        source = Path(path)
        if source.is_dir():
            found += sorted(
                (str(file), "") for file in source.rglob("*") if file.suffix.lower() in IMAGE_SUFFIXES and file.is_file()
            )
        elif source.is_file() and source.suffix == ".tar":
            with tarfile.open(source) as archive:
                found += sorted(
                    (str(source), member.name)
                    for member in archive.getmembers()
                    if member.isfile() and Path(member.name).suffix.lower() in IMAGE_SUFFIXES
                )
        else:
            raise FileNotFoundError(f"fid.reference_images: {path} is neither a folder nor a .tar shard")
    if not found:
        raise ValueError(f"fid.reference_images: no images in {', '.join(map(str, paths))}")
    return found


def fingerprint(entries: Sequence[Tuple[str, str]]) -> str:
    """Identifies a reference set by its names and file sizes (cheap; cached statistics are checked against it)."""
    digest = hashlib.sha256()
    for container, member in entries:
        digest.update(f"{container}\0{member}\0{Path(container).stat().st_size}\n".encode())
    return digest.hexdigest()


def iter_reference_batches(
    entries: Sequence[Tuple[str, str]], resolution: int, batch_size: int
) -> Iterator[torch.Tensor]:
    """uint8 [B, 3, resolution, resolution] batches of the reference images, centre-cropped and resized."""
    batch: List[Image.Image] = []
    open_tars = {}
    try:
        for container, member in entries:
            if member:
                archive = open_tars.get(container) or open_tars.setdefault(container, tarfile.open(container))
                data = archive.extractfile(member).read()
                image = Image.open(io.BytesIO(data))
            else:
                image = Image.open(container)
            batch.append(centre_square(image, resolution))
            if len(batch) == batch_size:
                yield to_tensor(batch)
                batch = []
        if batch:
            yield to_tensor(batch)
    finally:
        for archive in open_tars.values():
            archive.close()

