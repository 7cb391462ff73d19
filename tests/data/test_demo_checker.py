"""The demo checker against the demo dataset's own ground truth, and against pictures that must fail."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from nemo_imagen.data.demo import COLOURS, SHAPES, make_demo_dataset
from nemo_imagen.data.demo_checker import judge, prompt_target
from nemo_imagen.data.shards import iter_shard


@pytest.fixture(scope="module")
def val_samples(tmp_path_factory):
    shards = make_demo_dataset(tmp_path_factory.mktemp("demo"), num_samples=10, num_val_samples=300, seed=3)
    samples = []
    for _, entries in iter_shard(shards["val"][0]):
        image = np.asarray(Image.open(io.BytesIO(entries["jpg"])).convert("RGB"))
        truth = json.loads(entries["json"])
        samples.append((image, truth["colour"], truth["shape"]))
    return samples


def test_checker_agrees_with_ground_truth(val_samples):
    colours_right = sum(judge(image)[0] == colour for image, colour, _ in val_samples)
    shapes_right = sum(judge(image)[1] == shape for image, _, shape in val_samples)
    assert len(val_samples) == 300
    assert colours_right == 300
    assert shapes_right >= 297, shapes_right


def test_blank_and_speckled_pictures_show_no_shape():
    blank = np.full((64, 64, 3), 240, np.uint8)
    assert judge(blank) == (None, None)
    speckled = blank.copy()
    speckled[::16, ::16] = COLOURS["red"]  # 16 stray pixels: below the foreground fraction a shape needs
    assert judge(speckled) == (None, None)


def test_filled_shapes_are_named_by_colour_and_shape():
    blank = np.full((64, 64, 3), 240, np.uint8)
    radius = np.hypot(*(np.mgrid[:64, :64] - 32))
    disc = blank.copy()
    disc[radius < 16] = COLOURS["orange"]
    assert judge(disc) == ("orange", "circle")
    square = blank.copy()
    square[10:40, 20:50] = COLOURS["purple"]
    assert judge(square) == ("purple", "square")


def test_a_ring_is_not_taken_for_a_circle():
    """The checker judges filled shapes by how much of their box they fill; a ring (not a demo shape) fills ~1/3
    of its box, so it is classed with the triangles: a sample that draws only an outline does not pass as a
    circle."""
    ring = np.full((64, 64, 3), 240, np.uint8)
    radius = np.hypot(*(np.mgrid[:64, :64] - 32))
    ring[(radius > 14) & (radius < 18)] = COLOURS["blue"]
    assert judge(ring) == ("blue", "triangle")


def test_prompt_target_parses_every_demo_prompt():
    for colour in COLOURS:
        for shape in SHAPES:
            assert prompt_target(f"a photo of a large {colour} {shape} on the left") == (colour, shape)
    with pytest.raises(ValueError, match="names no"):
        prompt_target("a cat")
