"""Judging a picture of the scenes dataset's kind from its pixels: which two objects, each with which colour and
shape, and how they lie relative to each other; scoring that against a scene prompt.

Finding the objects. As in the demo checker, the background is the median of the border pixels and the
foreground every pixel more than ``demo_checker.FOREGROUND_DISTANCE`` from it. A foreground pixel within
``CORE_DISTANCE`` of a palette colour is a *core* pixel of that colour (anti-aliased edges, halfway between a
colour and the background, are foreground but not core). The 4-connected components of core pixels of one
colour with at least ``MIN_CORE_FRACTION`` of the image are the object seeds, the largest first; two touching
objects of different colours are thus two objects. An object's region is its seed grown by ``GROW`` pixels
into the foreground (taking its edges back), minus other seeds; a region below the demo checker's
``MIN_FOREGROUND_FRACTION`` of the image is a speck, not an object. Its colour is the demo checker's: the
palette entry nearest to the region's median RGB. Its shape is the ideal circle, square or upright triangle
filling the object's bounding box that overlaps the object best (intersection over union of the pixels at
least half-way from the background to the object's colour). The demo checker's fill-ratio rule is not used
for the shape: on the smaller scene objects (18-26 pixels wide, against the demo's 19-38) it called a
triangle a circle in 16 of 1,200 ground-truth scenes, where this rule made no mistake in the same 1,200 (nor
after a Gaussian blur of 1 pixel). The two largest objects are the scene's; more are ignored, fewer count as
missing.

Reading the relation. Between the centres of the two objects' bounding boxes, the larger of the horizontal
and vertical distance gives the axis, its sign the side: ``relation(a, b)`` is "left", "right", "above" or
"below" (a relative to b).

Scoring an image against a prompt "S <relation> T". The two found objects are matched to the prompt's
subject S and other T by the assignment with more right attributes (colour and shape, one point each); on a
tie, the one with more right colours, then found-object order. Per image: ``colour`` and ``shape`` are the
shares of the prompt's two objects whose matched object has the right colour (shape), a missing object
counting wrong; ``relation``: two objects found and the matched subject lies as the prompt says relative to
the matched other; ``fully_right``: both objects exactly right (colour and shape) and the relation right;
``binding_error``: two objects found whose colours are the prompt's two colours and whose shapes are the
prompt's two shapes, but paired differently ("a red circle ... a blue square" drawn as a red square and a blue
circle; only possible when the prompt's shapes differ). ``summarize`` averages them over a set of images.
"""
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from nemo_imagen.data.demo import COLOURS, SHAPES
from nemo_imagen.data.demo_checker import FOREGROUND_DISTANCE, MIN_FOREGROUND_FRACTION
from nemo_imagen.data.scenes import HELD_OUT_PAIRINGS, TRAIN_PAIRINGS, pairing

CORE_DISTANCE = 80.0  # RGB distance to a palette colour for a pixel to count as that colour
MIN_CORE_FRACTION = 0.01  # a seed smaller than this share of the image is noise
GROW = 2  # pixels a seed grows into the foreground to take back its anti-aliased edge
_SUBSAMPLES = 4  # per pixel side, for the coverage of the ideal shapes
RELATION_WORDS = {"to the left of": "left", "to the right of": "right", "above": "above", "below": "below"}

_PALETTE = np.asarray(list(COLOURS.values()), np.float32)
_COLOUR_NAMES = list(COLOURS)
_ARTICLE = r"(?:a|an|the)"
_PROMPT = re.compile(
    rf"\b{_ARTICLE} ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)}) ({'|'.join(RELATION_WORDS)}) "
    rf"{_ARTICLE} ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})\b"
)


@dataclass(frozen=True)
class FoundObject:
    """An object found in an image: its judged colour and shape, its bounding-box centre and its area (pixels)."""

    colour: str
    shape: str
    cx: float
    cy: float
    area: int


@dataclass(frozen=True)
class ScenePrompt:
    """A parsed scene prompt 'S <relation> T': ``subject`` and ``other`` are ``(colour, shape)``, ``relation``
    one of left, right, above, below (how the subject lies relative to the other)."""

    subject: Tuple[str, str]
    relation: str
    other: Tuple[str, str]

    @property
    def held_out(self) -> bool:
        """Whether the prompt's pairing is one of ``scenes.HELD_OUT_PAIRINGS`` (never seen in training)."""
        return pairing(self.subject, self.other) in HELD_OUT_PAIRINGS


def parse_scene_prompt(prompt: str) -> ScenePrompt:
    """'a photo of a red circle to the left of a blue square' -> ScenePrompt(('red', 'circle'), 'left',
    ('blue', 'square')). The prompt must name two objects of different colours, both from the scenes dataset
    (whose pairings are either training or held-out ones), with one of the four relation phrases."""
    found = _PROMPT.search(prompt.lower())
    if not found:
        raise ValueError(
            f"prompt {prompt!r} is not a scene prompt '<a|an> <colour> <shape> <relation> <a|an> <colour> <shape>' "
            f"with colour in {_COLOUR_NAMES}, shape in {list(SHAPES)}, relation in {list(RELATION_WORDS)}"
        )
    subject, other = (found.group(1), found.group(2)), (found.group(4), found.group(5))
    if pairing(subject, other) not in TRAIN_PAIRINGS and pairing(subject, other) not in HELD_OUT_PAIRINGS:
        raise ValueError(f"prompt {prompt!r}: the scenes dataset has no two objects of the same colour")
    return ScenePrompt(subject, RELATION_WORDS[found.group(3)], other)


def _components(mask: np.ndarray) -> List[np.ndarray]:
    """The 4-connected components of a boolean [H, W] mask, each an array of flat pixel indices."""
    height, width = mask.shape
    todo = mask.ravel().copy()
    components = []
    for start in np.flatnonzero(todo):
        if not todo[start]:
            continue
        todo[start] = False
        stack, members = [int(start)], []
        while stack:
            index = stack.pop()
            members.append(index)
            row, col = divmod(index, width)
            for neighbour, inside in (
                (index - width, row > 0),
                (index + width, row < height - 1),
                (index - 1, col > 0),
                (index + 1, col < width - 1),
            ):
                if inside and todo[neighbour]:
                    todo[neighbour] = False
                    stack.append(neighbour)
        components.append(np.asarray(members))
    return components


def _grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Dilation of a boolean mask by a (2 * pixels + 1) square."""
    padded = np.pad(mask, pixels)
    height, width = mask.shape
    grown = np.zeros_like(mask)
    for dy in range(2 * pixels + 1):
        for dx in range(2 * pixels + 1):
            grown |= padded[dy : dy + height, dx : dx + width]
    return grown


def _templates(box: Tuple[float, float, float, float], shape: Tuple[int, int]) -> Dict[str, np.ndarray]:
    """Coverage [H, W] of an ideal circle, square and upright triangle filling ``box`` = (left, top, right,
    bottom) in pixel edges, each pixel sampled at ``_SUBSAMPLES`` x ``_SUBSAMPLES`` points."""
    left, top, right, bottom = box
    offsets = (np.arange(_SUBSAMPLES) + 0.5) / _SUBSAMPLES
    ys = (np.arange(shape[0])[:, None] + offsets[None, :]).ravel()[:, None]  # [H * S, 1]
    xs = (np.arange(shape[1])[:, None] + offsets[None, :]).ravel()[None, :]  # [1, W * S]
    cx, cy, half_w, half_h = (left + right) / 2, (top + bottom) / 2, (right - left) / 2, (bottom - top) / 2
    in_box = (xs >= left) & (xs < right) & (ys >= top) & (ys < bottom)
    circle = ((xs - cx) / half_w) ** 2 + ((ys - cy) / half_h) ** 2 <= 1
    triangle = in_box & (np.abs(xs - cx) <= (ys - top) / (bottom - top) * half_w)

    def coverage(inside):
        return inside.reshape(shape[0], _SUBSAMPLES, shape[1], _SUBSAMPLES).mean(axis=(1, 3))

    return {"circle": coverage(circle), "square": coverage(in_box), "triangle": coverage(triangle)}


def _judge_object(pixels: np.ndarray, background: np.ndarray, region: np.ndarray):
    """(colour, shape, box) of the object in ``region`` ([H, W] bool): its colour by the demo checker's rule
    (the palette entry nearest to the median RGB); its shape the ideal shape, filling the object's box, that
    overlaps best (intersection over union) the object's pixels at least halfway from the background to that
    colour. The half-way contour of a blurred edge stays where the edge is, so a soft sample is judged by its
    outline, not by its blur. ``shape`` and ``box`` are None when no pixel is half-way."""
    median_rgb = np.median(pixels[region], axis=0)
    colour = _COLOUR_NAMES[int(np.linalg.norm(_PALETTE - median_rgb, axis=-1).argmin())]
    ink = np.asarray(COLOURS[colour], np.float32) - background
    inside = ((pixels - background) @ ink / max(float(ink @ ink), 1.0) >= 0.5) & region
    columns, rows = np.flatnonzero(inside.any(axis=0)), np.flatnonzero(inside.any(axis=1))
    if not len(columns):
        return colour, None, None
    box = (float(columns[0]), float(rows[0]), float(columns[-1] + 1), float(rows[-1] + 1))
    overlaps = {
        name: np.minimum(inside, template).sum() / np.maximum(inside, template).sum()
        for name, template in _templates(box, inside.shape).items()
    }
    return colour, max(overlaps, key=overlaps.get), box


def find_objects(image: np.ndarray, max_objects: int = 2) -> List[FoundObject]:
    """image: [H, W, 3] uint8 -> up to ``max_objects`` objects, the largest first."""
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image: shape {image.shape} is not [H, W, 3]")
    pixels = image.astype(np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = np.median(border, axis=0)
    foreground = np.linalg.norm(pixels - background, axis=-1) > FOREGROUND_DISTANCE
    distances = np.linalg.norm(pixels[:, :, None, :] - _PALETTE, axis=-1)  # [H, W, colours]
    nearest = distances.argmin(axis=-1)
    core = foreground & (distances.min(axis=-1) < CORE_DISTANCE)
    min_core = MIN_CORE_FRACTION * foreground.size
    seeds = []
    for label in np.unique(nearest[core]):
        for component in _components(core & (nearest == label)):
            if len(component) >= min_core:
                seed = np.zeros(foreground.size, bool)
                seed[component] = True
                seeds.append(seed.reshape(foreground.shape))
    seeds.sort(key=lambda seed: -int(seed.sum()))
    all_seeds = np.any(seeds, axis=0) if seeds else np.zeros_like(foreground)
    found = []
    for seed in seeds:
        region = (_grow(seed, GROW) & foreground & ~(all_seeds & ~seed)) | seed
        if region.sum() < MIN_FOREGROUND_FRACTION * foreground.size:
            continue  # a speck: what the demo checker calls no shape
        colour, shape, box = _judge_object(pixels, background, region)
        if shape is None:
            continue
        left, top, right, bottom = box
        found.append(FoundObject(colour, shape, (left + right) / 2, (top + bottom) / 2, int(region.sum())))
        if len(found) == max_objects:
            break
    return found


def relation(a: FoundObject, b: FoundObject) -> str:
    """How ``a`` lies relative to ``b``: left, right, above or below (the dominant axis between their centres)."""
    dx, dy = b.cx - a.cx, b.cy - a.cy
    if abs(dx) >= abs(dy):
        return "left" if dx > 0 else "right"
    return "above" if dy > 0 else "below"


@dataclass(frozen=True)
class SceneScore:
    """One image judged against one prompt (see the module docstring)."""

    objects_found: int
    colour: float
    shape: float
    relation: bool
    fully_right: bool
    binding_error: bool


def score(prompt: ScenePrompt, found: Sequence[FoundObject]) -> SceneScore:
    """Judge the objects ``find_objects`` found in one image against a parsed prompt."""
    wanted = [prompt.subject, prompt.other]
    found = list(found)[:2]

    def points(assignment):  # (right attributes, right colours) of wanted[i] matched to assignment[i]
        colours = sum(obj is not None and obj.colour == want[0] for want, obj in zip(wanted, assignment))
        shapes = sum(obj is not None and obj.shape == want[1] for want, obj in zip(wanted, assignment))
        return colours + shapes, colours

    padded = found + [None] * (2 - len(found))
    candidates = [padded, padded[::-1]]
    best = max(candidates, key=points)  # max keeps the first of equals: found-object order on a full tie
    colours = sum(obj is not None and obj.colour == want[0] for want, obj in zip(wanted, best))
    shapes = sum(obj is not None and obj.shape == want[1] for want, obj in zip(wanted, best))
    subject, other = best
    relation_right = subject is not None and other is not None and relation(subject, other) == prompt.relation
    exact = colours == 2 and shapes == 2
    binding = (
        len(found) == 2
        and not exact
        and sorted(obj.colour for obj in found) == sorted(want[0] for want in wanted)
        and sorted(obj.shape for obj in found) == sorted(want[1] for want in wanted)
    )
    return SceneScore(len(found), colours / 2, shapes / 2, relation_right, exact and relation_right, binding)


def judge_scene(prompt: str, image: np.ndarray) -> SceneScore:
    """Parse ``prompt``, find the objects in ``image`` ([H, W, 3] uint8) and score them."""
    return score(parse_scene_prompt(prompt), find_objects(image))


FIGURES = ("colour", "shape", "relation", "fully_right", "binding_error", "two_objects")


def summarize(scores: Sequence[SceneScore]) -> Dict[str, float]:
    """Means over images: colour and shape (object level), relation, fully_right, binding_error, and
    two_objects (the share of images where two objects were found); plus ``images``."""
    if not scores:
        raise ValueError("summarize: no scores")
    count = len(scores)
    return {
        "images": count,
        "colour": sum(s.colour for s in scores) / count,
        "shape": sum(s.shape for s in scores) / count,
        "relation": sum(s.relation for s in scores) / count,
        "fully_right": sum(s.fully_right for s in scores) / count,
        "binding_error": sum(s.binding_error for s in scores) / count,
        "two_objects": sum(s.objects_found == 2 for s in scores) / count,
    }


def format_summary(name: str, summary: Optional[Dict[str, float]]) -> str:
    """One line of figures for a prompt set (``name``), or a line saying it had no images."""
    if summary is None:
        return f"{name}: no images"
    figures = "  ".join(f"{key} {summary[key]:.3f}" for key in FIGURES)
    return f"{name}: images {summary['images']}  {figures}"
