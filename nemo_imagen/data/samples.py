"""One webdataset sample -> training tensors, and a list of those -> a batch.

A sample needs an image (``jpg``, ``jpeg``, ``png`` or ``webp``), a caption (``txt``, UTF-8) and, when the
model reads precached text embeddings, the entry ``{precached_key}.npy`` (format:
``nemo_imagen.text.embedding_format``). Anything wrong with a sample raises ``SampleError`` carrying one
of ``SKIP_KINDS``; the dataset counts and logs it and moves on.
"""
import io
import random
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
from PIL import Image

from nemo_imagen.data.transforms import ImageTooSmallError, ImageTransform, passes_resolution_filter
from nemo_imagen.text.embedding_format import EmbeddingFormatError, decode_embedding, pad_or_trim, sample_key

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXTENSION = "txt"

# Why a sample can be dropped. read_shard: a shard could not be opened or its tar stream is damaged
# (counted once per shard per reading worker); missing_key: no image, caption or embedding entry;
# decode_image / decode_caption / bad_embedding: an entry that does not decode (or has the wrong
# embedding width); resolution_filter: rejected by data.train.filterings.resolution; too_small: the
# image is smaller than the crop (possible only without resize_smallest_side).
SKIP_KINDS = (
    "read_shard",
    "missing_key",
    "decode_image",
    "decode_caption",
    "bad_embedding",
    "resolution_filter",
    "too_small",
)


class SampleError(Exception):
    """A sample that cannot be used; ``kind`` is one of ``SKIP_KINDS``."""

    def __init__(self, kind: str, message: str):
        if kind not in SKIP_KINDS:
            raise ValueError(f"unknown skip kind {kind!r}")
        super().__init__(message)
        self.kind = kind


def decode_image(data: bytes) -> Image.Image:
    """Fully decode image bytes to RGB (transparent pixels composited over white).

    Raises whatever PIL raises for corrupt or truncated data (``OSError``, ``ValueError``, ...).
    """
    image = Image.open(io.BytesIO(data))
    image.load()
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


class SampleDecoder:
    """Turns a sample's entries into tensors.

    Args:
        transform: resize / crop / flip / pyramid (``ImageTransform``).
        resolution_filter: ``(method, value)`` of ``data.train.filterings.resolution``, or None.
        precached_key: read the embedding ``{precached_key}.npy`` (None: captions only, for online encoding).
        embed_dim: D, the expected embedding width.
        token_length: L, the padded/trimmed number of tokens.
        out_key: the batch key of the embedding (``conditioning.out_key``); its mask is ``{out_key}_mask``.
    """

    def __init__(
        self,
        transform: ImageTransform,
        resolution_filter: Optional[Tuple[str, int]],
        precached_key: Optional[str],
        embed_dim: int,
        token_length: int,
        out_key: str = "t5_text",
    ):
        self.transform = transform
        self.out_key = out_key
        self.resolution_filter = resolution_filter
        self.embedding_entry = sample_key(precached_key).lower() if precached_key else None
        self.embed_dim = embed_dim
        self.token_length = token_length

    def __call__(self, entries: Mapping[str, bytes], rng: random.Random) -> Dict:
        """Decode one sample.

        Returns:
            ``{"images_{r}": [3, r, r] float32 in [-1, 1] for every target resolution r,
            "captions": str}`` plus, with a precached key, ``out_key: [L, D] float32`` and
            ``"{out_key}_mask": [L] bool``.

        Raises:
            SampleError: the sample is unusable (its ``kind`` says why).
        """
        entries = {name.lower(): data for name, data in entries.items()}  # webdataset matches extensions case-blind
        image_ext = next((ext for ext in IMAGE_EXTENSIONS if ext in entries), None)
        required = [image_ext or "/".join(IMAGE_EXTENSIONS), CAPTION_EXTENSION]
        if self.embedding_entry:
            required.append(self.embedding_entry)
        missing = [name for name in required if name not in entries]
        if missing:
            raise SampleError("missing_key", f"no {', '.join(missing)} entry (entries: {sorted(entries)})")

        try:
            caption = entries[CAPTION_EXTENSION].decode("utf-8").strip()
        except UnicodeDecodeError as error:
            raise SampleError("decode_caption", f"caption is not UTF-8: {error}") from None

        sample = {"captions": caption}
        if self.embedding_entry:
            try:
                tokens = decode_embedding(entries[self.embedding_entry], self.embed_dim)
            except EmbeddingFormatError as error:
                raise SampleError("bad_embedding", f"{self.embedding_entry}: {error}") from None
            sample[self.out_key], sample[f"{self.out_key}_mask"] = pad_or_trim(tokens, self.token_length)

        try:
            image = decode_image(entries[image_ext])
        except Exception as error:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
            raise SampleError("decode_image", f"{image_ext}: {type(error).__name__}: {error}") from None
        if self.resolution_filter is not None and not passes_resolution_filter(image.size, *self.resolution_filter):
            method, value = self.resolution_filter
            raise SampleError("resolution_filter", f"{image.width}x{image.height} fails resolution filter {method} {value}")
        try:
            levels = self.transform(image, rng)
        except ImageTooSmallError as error:
            raise SampleError("too_small", str(error)) from None
        for resolution, tensor in levels.items():
            sample[f"images_{resolution}"] = tensor
        return sample


def collate(samples: Sequence[Dict], skipped: Dict[str, int]) -> Dict:
    """Stack decoded samples into the batch the model reads.

    Returns:
        ``images_{r}``: ``[B, 3, r, r]`` for every target resolution r; ``images``: the largest of them
        (the same tensor); ``captions``: list of B str; the precached text embedding ``[B, L, D]`` float32
        and its mask ``[B, L]`` bool under ``conditioning.out_key`` and ``{out_key}_mask`` when the samples
        carry them; ``skipped``: ``{kind: count}``.
    """
    batch: Dict = {}
    image_keys = sorted((key for key in samples[0] if key.startswith("images_")), key=lambda k: int(k.split("_")[1]))
    for key in image_keys:
        batch[key] = torch.stack([sample[key] for sample in samples])
    batch["images"] = batch[image_keys[-1]]
    batch["captions"] = [sample["captions"] for sample in samples]
    for key, value in samples[0].items():
        if not key.startswith("images_") and isinstance(value, torch.Tensor):  # the text embedding and mask
            batch[key] = torch.stack([sample[key] for sample in samples])
    batch["skipped"] = dict(skipped)
    return batch
