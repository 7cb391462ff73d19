"""The scenes dataset: two coloured shapes per image and a caption that binds each colour to its shape and says
where one is relative to the other; a test of whether a text-to-image model binds words to objects.

Each 64x64 image shows two objects of the demo dataset's kind (``demo.COLOURS`` x ``demo.SHAPES``, drawn by
``demo.render``) in two different colours, side by side (``axis`` horizontal) or stacked (vertical), on the
demo's light background. Along the axis the two never overlap: at least ``MIN_GAP`` pixels lie between their
boxes, so each object is its own connected blob. Across the axis their centres are at most ``2 * JITTER``
pixels apart, so the axis of the relation is plain (the centres are at least ``MIN_GAP + MIN_SIZE`` pixels
apart along it). Object widths lie in ``[SIZE_RANGE[0], SIZE_RANGE[1]] * 64``.

Captions name both objects with their relation, the subject being either object (varied word order):
"a red circle to the left of a blue square", "a blue square to the right of a red circle", "a red circle above
a green triangle", "a purple triangle below an orange circle"; sometimes with one of the demo's framings
("a photo of ...") or " on a plain light background" after it. ``SINGLE_SHARE`` (20%) of the training images are
instead one-shape images with their demo caption (``demo.demo_sample``), so the single-object skill stays.

**Pairings.** An object is its ``(colour, shape)``; a scene's *pairing* is the unordered pair of its two
objects, whatever their positions, relation and word order: "a red circle left of a blue square" and "a blue
square above a red circle" have the same pairing ``{red circle, blue square}``. The 12 pairings of
``HELD_OUT_PAIRINGS`` (of the 135 with two different colours) never appear in the training split; every colour
is in four of them, every shape in eight object slots, and for each one with two different shapes the pairing
with the shapes exchanged (``{red square, green circle}`` for ``{red circle, green square}``) is a training
pairing, so a held-out scene needs exactly the binding that the training scenes teach. Every single object
appears in training in other pairings.

**Splits.** ``train``: 80% scenes of the 123 training pairings (uniform), 20% one-shape images. ``val``: scenes
only, even indices a training pairing, odd indices a held-out pairing.

Everything is derived from ``(seed, split, index)``: same arguments, byte-identical shards, written like the
demo's (``train-000000.tar ...``, ``val-000000.tar``; ``jpg``, ``txt``, ``json``). The ``json`` sidecar:
``kind`` ("scene" or "single"), ``objects`` (each ``colour, shape, size, cx, cy`` in pixels of the 64x64
image, as in the demo; a scene's first object is the left or the upper one), ``axis``, ``subject`` (the index
of the object the caption names first), ``relation`` (the caption's phrase: how ``subject`` lies relative to
the other), ``held_out``, ``background``, ``caption``.
"""
import itertools
import json
import math
from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Optional, Tuple

import numpy as np
from PIL import Image
from webdataset import TarWriter

from nemo_imagen.data.demo import (
    _FRAMINGS,
    _TAR_MTIME,
    BACKGROUND_RANGE,
    COLOURS,
    IMAGE_SIZE,
    SHAPES,
    SPLITS,
    DemoSample,
    _with_article,
    demo_sample,
    encode_jpeg,
    render,
    write_shards,
)

SceneObjectKey = Tuple[str, str]  # (colour, shape)
Pairing = FrozenSet[SceneObjectKey]

SIZE_RANGE = (0.28, 0.40)  # object width / image width: two fit side by side with room to move
MIN_GAP = 3.0  # pixels between the two objects' boxes along the axis
JITTER = 4.0  # each centre lies within this of a shared line across the axis
MARGIN = 2.0  # pixels kept free between an object and the image border
SINGLE_SHARE = 0.2  # of the training images: one shape with a demo caption
FRAMING_SHARE = 0.3  # of the scene captions: a demo framing ("a photo of ...") before them
BACKGROUND_SUFFIX_SHARE = 0.1  # of the scene captions: " on a plain light background" after them
# The caption's phrase for how the subject lies relative to the other object, by axis and by whether the
# subject is the first (left / upper) object.
RELATIONS = {
    ("horizontal", True): "to the left of",
    ("horizontal", False): "to the right of",
    ("vertical", True): "above",
    ("vertical", False): "below",
}
_SCENES_STREAM = 16  # appended to (seed, split, index): scene draws never reuse the demo's random numbers


def pairing(first: SceneObjectKey, second: SceneObjectKey) -> Pairing:
    """The unordered pair of two objects, each ``(colour, shape)``."""
    return frozenset((tuple(first), tuple(second)))


HELD_OUT_PAIRINGS: Tuple[Pairing, ...] = tuple(
    pairing(first, second)
    for first, second in (
        (("red", "circle"), ("green", "square")),
        (("red", "square"), ("blue", "triangle")),
        (("red", "triangle"), ("yellow", "circle")),
        (("red", "circle"), ("purple", "circle")),
        (("orange", "triangle"), ("green", "circle")),
        (("orange", "square"), ("blue", "circle")),
        (("orange", "circle"), ("yellow", "square")),
        (("orange", "triangle"), ("purple", "square")),
        (("green", "triangle"), ("blue", "square")),
        (("green", "square"), ("purple", "triangle")),
        (("yellow", "triangle"), ("blue", "triangle")),
        (("yellow", "circle"), ("purple", "square")),
    )
)
ALL_PAIRINGS: Tuple[Pairing, ...] = tuple(
    pairing(first, second)
    for first, second in itertools.combinations(itertools.product(COLOURS, SHAPES), 2)
    if first[0] != second[0]
)
TRAIN_PAIRINGS: Tuple[Pairing, ...] = tuple(p for p in ALL_PAIRINGS if p not in set(HELD_OUT_PAIRINGS))


def is_held_out(first: SceneObjectKey, second: SceneObjectKey) -> bool:
    """Whether the pairing of the two objects is one of ``HELD_OUT_PAIRINGS``."""
    return pairing(first, second) in HELD_OUT_PAIRINGS


@dataclass(frozen=True)
class SceneObject:
    """One object, in pixels of the ``IMAGE_SIZE`` image; ``size`` and ``(cx, cy)`` as in ``DemoSample``."""

    colour: str
    shape: str
    size: float
    cx: float
    cy: float

    @property
    def key(self) -> SceneObjectKey:
        return (self.colour, self.shape)

    @property
    def height(self) -> float:
        return self.size * math.sqrt(3) / 2 if self.shape == "triangle" else self.size

    def bbox(self) -> Tuple[float, float, float, float]:
        """``(left, top, right, bottom)``."""
        return (self.cx - self.size / 2, self.cy - self.height / 2, self.cx + self.size / 2, self.cy + self.height / 2)

    def phrase(self) -> str:
        """'a red circle', 'an orange square'."""
        return _with_article(f"{self.colour} {self.shape}")


@dataclass(frozen=True)
class SceneSample:
    """The drawn parameters of one image of the scenes dataset.

    kind: "scene" (two objects, ``objects[0]`` the left / upper one) or "single" (one object, demo caption);
    axis: "horizontal" or "vertical" (None for single); subject: the index of the object the caption names
    first; relation: the caption's phrase for how ``objects[subject]`` lies relative to the other (None for
    single).
    """

    kind: str
    objects: Tuple[SceneObject, ...]
    axis: Optional[str]
    subject: int
    background: Tuple[int, int, int]
    caption: str

    @property
    def relation(self) -> Optional[str]:
        return RELATIONS[(self.axis, self.subject == 0)] if self.kind == "scene" else None

    @property
    def held_out(self) -> bool:
        return self.kind == "scene" and is_held_out(self.objects[0].key, self.objects[1].key)

    def to_json(self) -> Dict[str, object]:
        return {
            "kind": self.kind,
            "objects": [vars(obj).copy() for obj in self.objects],
            "axis": self.axis,
            "subject": self.subject,
            "relation": self.relation,
            "held_out": self.held_out,
            "background": list(self.background),
            "caption": self.caption,
        }


def _background(rng: np.random.Generator) -> Tuple[int, int, int]:
    low, high = BACKGROUND_RANGE  # the demo's draw: a light grey with a slight tint
    base = int(rng.integers(low + 5, high - 4))
    return tuple(int(np.clip(base + rng.integers(-5, 6), low, high)) for _ in range(3))


def _place(rng: np.random.Generator, first: SceneObjectKey, second: SceneObjectKey, axis: str):
    """Sizes and centres of two objects, ``first`` left of (horizontal) or above (vertical) ``second``."""
    sizes = [float(rng.uniform(*SIZE_RANGE)) * IMAGE_SIZE for _ in range(2)]
    probes = [SceneObject(colour, shape, size, 0.0, 0.0) for (colour, shape), size in zip((first, second), sizes)]
    # extent along the axis and across it
    along = [obj.size if axis == "horizontal" else obj.height for obj in probes]
    across = [obj.height if axis == "horizontal" else obj.size for obj in probes]
    slack = IMAGE_SIZE - 2 * MARGIN - along[0] - along[1] - MIN_GAP
    cut_low, cut_high = sorted(rng.uniform(0.0, slack, size=2))  # free space before, between and after
    start_first = MARGIN + cut_low
    start_second = start_first + along[0] + MIN_GAP + (cut_high - cut_low)
    centres_along = (start_first + along[0] / 2, start_second + along[1] / 2)
    reach = max(across) / 2 + JITTER
    line = float(rng.uniform(MARGIN + reach, IMAGE_SIZE - MARGIN - reach))
    centres_across = [line + float(rng.uniform(-JITTER, JITTER)) for _ in range(2)]
    objects = []
    for probe, c_along, c_across in zip(probes, centres_along, centres_across):
        cx, cy = (c_along, c_across) if axis == "horizontal" else (c_across, c_along)
        objects.append(SceneObject(probe.colour, probe.shape, probe.size, float(cx), float(cy)))
    return tuple(objects)


def scene_caption(objects: Tuple[SceneObject, SceneObject], axis: str, subject: int) -> str:
    """The core caption: '<subject> <relation> <other>' ('a red circle to the left of a blue square')."""
    relation = RELATIONS[(axis, subject == 0)]
    return f"{objects[subject].phrase()} {relation} {objects[1 - subject].phrase()}"


def scene_sample(seed: int, split: str, index: int) -> SceneSample:
    """The parameters of sample ``index`` of ``split`` ('train' or 'val'); a pure function of its arguments."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {sorted(SPLITS)}")
    rng = np.random.default_rng([seed, SPLITS[split], index, _SCENES_STREAM])
    if split == "train" and rng.random() < SINGLE_SHARE:
        single = demo_sample(seed, split, index)
        obj = SceneObject(single.colour, single.shape, single.size, single.cx, single.cy)
        return SceneSample("single", (obj,), None, 0, single.background, single.caption)
    if split == "train":
        pool = TRAIN_PAIRINGS
    else:
        pool = HELD_OUT_PAIRINGS if index % 2 else TRAIN_PAIRINGS
    pair = sorted(pool[rng.integers(len(pool))])  # sorted: a fixed order before the draw of which goes first
    if rng.random() < 0.5:
        pair.reverse()
    axis = "horizontal" if rng.random() < 0.5 else "vertical"
    objects = _place(rng, pair[0], pair[1], axis)
    subject = int(rng.integers(2))
    caption = scene_caption(objects, axis, subject)
    if rng.random() < FRAMING_SHARE:
        caption = _FRAMINGS[1 + rng.integers(len(_FRAMINGS) - 1)] + caption
    if rng.random() < BACKGROUND_SUFFIX_SHARE:
        caption += " on a plain light background"
    return SceneSample("scene", objects, axis, subject, _background(rng), caption)


def render_scene(sample: SceneSample, image_size: int = IMAGE_SIZE) -> Image.Image:
    """Draw ``sample`` as an ``image_size`` x ``image_size`` RGB image with ``demo.render``.

    Each object is rendered alone on the background and the two are added: the objects are at least
    ``MIN_GAP`` pixels apart, so no output pixel is touched by both, and the sum is the joint rendering."""
    layers = [
        np.asarray(render(DemoSample(o.colour, o.shape, o.size, o.cx, o.cy, sample.background, ""), image_size))
        for o in sample.objects
    ]
    background = np.asarray(sample.background, dtype=np.int16)
    picture = sum(layer.astype(np.int16) - background for layer in layers) + background
    return Image.fromarray(picture.astype(np.uint8), "RGB")


def _write_shard(path: str, seed: int, split: str, indices: range, image_size: int) -> None:
    with TarWriter(path, mtime=_TAR_MTIME, encoder=False) as writer:
        for index in indices:
            sample = scene_sample(seed, split, index)
            writer.write(
                {
                    "__key__": f"{split}-{index:07d}",
                    "jpg": encode_jpeg(render_scene(sample, image_size)),
                    "txt": sample.caption.encode("utf-8"),
                    "json": json.dumps(sample.to_json(), sort_keys=True).encode("utf-8"),
                }
            )


def make_scenes_dataset(
    output_dir: str,
    num_samples: int = 10000,
    samples_per_shard: int = 1000,
    seed: int = 0,
    num_val_samples: int = 512,
    image_size: int = IMAGE_SIZE,
) -> Dict[str, List[str]]:
    """Write the scenes shards; the arguments and the layout are those of ``demo.make_demo_dataset``.

    Returns:
        ``{"train": [shard paths], "val": [shard paths]}``.
    """
    return write_shards(_write_shard, "make_scenes_dataset", output_dir, num_samples, samples_per_shard, seed,
                        num_val_samples, image_size)
