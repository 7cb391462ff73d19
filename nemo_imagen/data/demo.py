"""The demo dataset: one coloured shape per image, with a caption saying which.

Each 64x64 image shows one shape (``SHAPES``: circle, axis-aligned square, upright triangle) in one of
``COLOURS`` (six named RGB values), between ``MIN_SIZE_FRACTION`` and ``MAX_SIZE_FRACTION`` of the image
wide, at a random position fully inside the image, on a light plain background (every channel in
``BACKGROUND_RANGE``). Captions always contain ``"<colour> <shape>"`` (``"a red circle"``), with optional
truthful phrasing around it: a size word, the position, a framing ("a photo of ..."), the background.

Everything is derived from ``(seed, split, index)``, so the same arguments give byte-identical shards.
Shards: ``train-000000.tar ...`` and a held-out ``val-000000.tar``; each sample has ``jpg`` (quality 95,
no chroma subsampling), ``txt`` and ``json`` (the drawn parameters, for checkers).
"""
import io
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw
from webdataset import TarWriter

from nemo_imagen.config_checks import ConfigError

COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 80, 220),
    "yellow": (240, 215, 20),
    "purple": (140, 50, 180),
    "orange": (245, 125, 15),
}
SHAPES: Tuple[str, ...] = ("circle", "square", "triangle")
IMAGE_SIZE = 64
MIN_SIZE_FRACTION = 0.3  # shape width / image width (the spec asks for at least a quarter)
MAX_SIZE_FRACTION = 0.6
BACKGROUND_RANGE = (220, 255)  # every background channel lies in this closed range
SPLITS = {"train": 0, "val": 1}
JPEG_QUALITY = 95

_SUPERSAMPLE = 4  # draw at 4x and box-filter down: antialiased edges
_MARGIN = 2.0  # pixels kept free between the shape and the image border
_FRAMINGS = ("", "a photo of ", "a picture of ", "an image of ", "a drawing of ", "a simple illustration of ")
_TAR_MTIME = 0.0  # fixed tar timestamps: reproducible shards


@dataclass(frozen=True)
class DemoSample:
    """The drawn parameters of one demo image (pixel units of the ``IMAGE_SIZE`` image).

    ``size`` is the shape's width (circle: diameter; square: side; triangle: base, height
    ``size * sqrt(3) / 2``); ``(cx, cy)`` is the centre of its bounding box.
    """

    colour: str
    shape: str
    size: float
    cx: float
    cy: float
    background: Tuple[int, int, int]
    caption: str

    def bbox(self) -> Tuple[float, float, float, float]:
        """``(left, top, right, bottom)`` of the shape."""
        height = self.size * math.sqrt(3) / 2 if self.shape == "triangle" else self.size
        return (self.cx - self.size / 2, self.cy - height / 2, self.cx + self.size / 2, self.cy + height / 2)


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _caption(rng: np.random.Generator, colour: str, shape: str, size: float, cx: float, cy: float) -> str:
    words = [colour, shape]
    size_word = "small" if size < 0.4 * IMAGE_SIZE else "large" if size > 0.5 * IMAGE_SIZE else None
    if size_word and rng.random() < 0.5:
        words.insert(0, size_word)
    caption = _FRAMINGS[rng.integers(len(_FRAMINGS))] + _with_article(" ".join(words))
    if rng.random() < 0.5:
        horizontal = "left" if cx < 0.4 * IMAGE_SIZE else "right" if cx > 0.6 * IMAGE_SIZE else None
        vertical = "top" if cy < 0.4 * IMAGE_SIZE else "bottom" if cy > 0.6 * IMAGE_SIZE else None
        if horizontal and vertical:
            caption += f" in the {vertical} {horizontal}"
        elif horizontal:
            caption += f" on the {horizontal}"
        elif vertical:
            caption += f" at the {vertical}"
        else:
            caption += " in the middle"
    if rng.random() < 0.2:
        caption += " on a plain light background"
    return caption


def demo_sample(seed: int, split: str, index: int) -> DemoSample:
    """The parameters of sample ``index`` of ``split`` ('train' or 'val'); a pure function of its arguments."""
    rng = np.random.default_rng([seed, SPLITS[split], index])
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    shape = SHAPES[rng.integers(len(SHAPES))]
    size = float(rng.uniform(MIN_SIZE_FRACTION, MAX_SIZE_FRACTION)) * IMAGE_SIZE
    height = size * math.sqrt(3) / 2 if shape == "triangle" else size
    cx = float(rng.uniform(_MARGIN + size / 2, IMAGE_SIZE - _MARGIN - size / 2))
    cy = float(rng.uniform(_MARGIN + height / 2, IMAGE_SIZE - _MARGIN - height / 2))
    low, high = BACKGROUND_RANGE
    base = int(rng.integers(low + 5, high - 4))
    background = tuple(int(np.clip(base + rng.integers(-5, 6), low, high)) for _ in range(3))
    return DemoSample(colour, shape, size, cx, cy, background, _caption(rng, colour, shape, size, cx, cy))


def render(sample: DemoSample, image_size: int = IMAGE_SIZE) -> Image.Image:
    """Draw ``sample`` as an ``image_size`` x ``image_size`` RGB image. The drawn parameters are in pixels
    of the ``IMAGE_SIZE`` image and scale with ``image_size``, so the same sample at 64 and at 256 (for
    super-resolution stages) shows the same picture at two resolutions."""
    if image_size % IMAGE_SIZE:
        raise ValueError(f"image_size: {image_size} must be a multiple of {IMAGE_SIZE}")
    scale = _SUPERSAMPLE * image_size // IMAGE_SIZE
    image = Image.new("RGB", (IMAGE_SIZE * scale, IMAGE_SIZE * scale), sample.background)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = (v * scale for v in sample.bbox())
    fill = COLOURS[sample.colour]
    # PIL's box coordinates are inclusive: the last covered pixel is right - 1.
    if sample.shape == "circle":
        draw.ellipse((left, top, right - 1, bottom - 1), fill=fill)
    elif sample.shape == "square":
        draw.rectangle((left, top, right - 1, bottom - 1), fill=fill)
    else:
        draw.polygon([((left + right) / 2, top), (left, bottom), (right, bottom)], fill=fill)
    return image.resize((image_size, image_size), Image.BOX)


def encode_jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buffer.getvalue()


def _write_shard(path: str, seed: int, split: str, indices: range, image_size: int) -> None:
    with TarWriter(path, mtime=_TAR_MTIME, encoder=False) as writer:
        for index in indices:
            sample = demo_sample(seed, split, index)
            writer.write(
                {
                    "__key__": f"{split}-{index:07d}",
                    "jpg": encode_jpeg(render(sample, image_size)),
                    "txt": sample.caption.encode("utf-8"),
                    "json": json.dumps(asdict(sample), sort_keys=True).encode("utf-8"),
                }
            )


def make_demo_dataset(
    output_dir: str,
    num_samples: int = 6000,
    samples_per_shard: int = 1000,
    seed: int = 0,
    num_val_samples: int = 256,
    image_size: int = IMAGE_SIZE,
) -> Dict[str, List[str]]:
    """Write the demo shards.

    Args:
        output_dir: created if missing; existing shards of the same names are overwritten.
        num_samples: training samples, in ``ceil(num_samples / samples_per_shard)`` shards
            ``train-000000.tar ...``.
        samples_per_shard: samples per training shard (the last may hold fewer).
        seed: everything is a function of it.
        num_val_samples: held-out samples in ``val-000000.tar`` (0 = none).
        image_size: side of the stored images, a multiple of 64 (256 for super-resolution stages, which
            downsample it to their low-resolution input).

    Returns:
        ``{"train": [shard paths], "val": [shard paths]}``.
    """
    return write_shards(_write_shard, "make_demo_dataset", output_dir, num_samples, samples_per_shard, seed,
                        num_val_samples, image_size)


def write_shards(
    write_shard: Callable[[str, int, str, range, int], None],
    caller: str,
    output_dir: str,
    num_samples: int,
    samples_per_shard: int,
    seed: int,
    num_val_samples: int,
    image_size: int,
) -> Dict[str, List[str]]:
    """The shard layout of the demo and scenes datasets: ``write_shard(path, seed, split, indices, image_size)``
    writes the samples ``indices`` of ``split``; ``caller`` names the function in error messages."""
    if num_samples <= 0 or samples_per_shard <= 0 or num_val_samples < 0:
        raise ValueError(
            f"{caller}: num_samples {num_samples} and samples_per_shard {samples_per_shard} must be "
            f"positive and num_val_samples {num_val_samples} non-negative"
        )
    if image_size <= 0 or image_size % IMAGE_SIZE:
        raise ValueError(f"{caller}: image_size {image_size} must be a positive multiple of {IMAGE_SIZE}")
    os.makedirs(output_dir, exist_ok=True)
    shards: Dict[str, List[str]] = {"train": [], "val": []}
    for shard_index, start in enumerate(range(0, num_samples, samples_per_shard)):
        path = os.path.join(output_dir, f"train-{shard_index:06d}.tar")
        write_shard(path, seed, "train", range(start, min(start + samples_per_shard, num_samples)), image_size)
        shards["train"].append(path)
    if num_val_samples:
        path = os.path.join(output_dir, "val-000000.tar")
        write_shard(path, seed, "val", range(num_val_samples), image_size)
        shards["val"].append(path)
    return shards


def prepare_demo_dataset(
    output_dir: str,
    num_samples: int = 6000,
    seed: int = 0,
    image_size: int = IMAGE_SIZE,
    precache_dir: Optional[str] = None,
    encoder_path: Optional[str] = None,
    precached_key: Optional[str] = None,
    token_length: int = 128,
    kind: str = "demo",
) -> None:
    """Makes the demo shards in ``output_dir`` unless they exist; with ``precache_dir``, also copies of them
    carrying each caption's embedding by ``encoder_path`` under ``precached_key`` (embedded once here
    instead of at every training step); an interrupted precache resumes with the shards it had not written.
    ``kind``: "demo" (one shape an image, this module) or "scenes" (two shapes and their relation,
    ``nemo_imagen.data.scenes``)."""
    if kind not in ("demo", "scenes"):
        raise ConfigError(f"demo_data.kind: {kind!r} is not one of 'demo', 'scenes'")
    if not any(Path(output_dir).glob("train-*.tar")):
        if kind == "scenes":
            from nemo_imagen.data.scenes import make_scenes_dataset  # imports this module

            make_scenes_dataset(output_dir, num_samples=num_samples, seed=seed, image_size=image_size)
        else:
            make_demo_dataset(output_dir, num_samples=num_samples, seed=seed, image_size=image_size)
    if precache_dir:  # shards already written are skipped, and the encoder is loaded only if one is left
        from nemo_imagen.data.precache import precache_embeddings  # loads transformers: only when needed

        if not (encoder_path and precached_key):
            raise ValueError(
                "demo_data.precache_dir: precaching needs model.conditioning.encoder_path and precached_key"
            )
        shards = sorted(str(path) for path in Path(output_dir).glob("*.tar"))
        precache_embeddings(
            shards, precache_dir, encoder_path, precached_key=precached_key, token_length=token_length, progress=False
        )
