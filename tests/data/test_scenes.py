"""The scenes dataset: reproducible shards, held-out pairings kept out of training, objects that never overlap,
and captions that say what the json (and the pixels) show."""
import io
import itertools
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nemo_imagen.data.demo import BACKGROUND_RANGE, COLOURS, IMAGE_SIZE, SHAPES, demo_sample, prepare_demo_dataset
from nemo_imagen.data.scenes import (
    HELD_OUT_PAIRINGS,
    MARGIN,
    MIN_GAP,
    SINGLE_SHARE,
    TRAIN_PAIRINGS,
    make_scenes_dataset,
    pairing,
    render_scene,
    scene_sample,
)
from nemo_imagen.data.shards import iter_shard

REPO = Path(__file__).resolve().parents[2]
COLOUR = "|".join(COLOURS)
SHAPE = "|".join(SHAPES)
SCENE_CAPTION = re.compile(
    r"^(a photo of |a picture of |an image of |a drawing of |a simple illustration of )?"
    rf"(?P<a1>a|an) (?P<c1>{COLOUR}) (?P<s1>{SHAPE}) (?P<rel>to the left of|to the right of|above|below) "
    rf"(?P<a2>a|an) (?P<c2>{COLOUR}) (?P<s2>{SHAPE})( on a plain light background)?$"
)


@pytest.fixture(scope="module")
def scenes_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("scenes")
    shards = make_scenes_dataset(str(directory), num_samples=150, samples_per_shard=60, seed=3, num_val_samples=40)
    return directory, shards


def read_all(paths):
    return [(key, entries) for path in paths for key, entries in iter_shard(path)]


def test_layout_and_same_seed_same_bytes(scenes_dir, tmp_path):
    _, shards = scenes_dir
    assert [Path(p).name for p in shards["train"]] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert [Path(p).name for p in shards["val"]] == ["val-000000.tar"]
    train, val = read_all(shards["train"]), read_all(shards["val"])
    assert len(train) == 150 and len(val) == 40
    assert all(set(entries) == {"jpg", "txt", "json"} for _, entries in train + val)
    again = make_scenes_dataset(str(tmp_path / "again"), num_samples=150, samples_per_shard=60, seed=3,
                                num_val_samples=40)
    for first, second in zip(shards["train"] + shards["val"], again["train"] + again["val"]):
        assert Path(first).read_bytes() == Path(second).read_bytes()
    other = make_scenes_dataset(str(tmp_path / "other"), num_samples=60, samples_per_shard=60, seed=4,
                                num_val_samples=0)
    assert Path(other["train"][0]).read_bytes() != Path(shards["train"][0]).read_bytes()
    assert other["val"] == []


def test_held_out_pairings_are_a_fixed_balanced_set_whose_binding_training_teaches():
    assert len(HELD_OUT_PAIRINGS) == 12 and len(set(HELD_OUT_PAIRINGS)) == 12
    assert len(TRAIN_PAIRINGS) == 135 - 12  # every unordered pair of two objects of two different colours
    assert set(HELD_OUT_PAIRINGS).isdisjoint(TRAIN_PAIRINGS)
    slots = [obj for held in HELD_OUT_PAIRINGS for obj in held]
    assert Counter(colour for colour, _ in slots) == {colour: 4 for colour in COLOURS}
    assert Counter(shape for _, shape in slots) == {shape: 8 for shape in SHAPES}
    for held in HELD_OUT_PAIRINGS:
        (c1, s1), (c2, s2) = sorted(held)
        assert c1 != c2
        if s1 != s2:  # the same colours and shapes, bound the other way round, are trained on
            assert pairing((c1, s2), (c2, s1)) in TRAIN_PAIRINGS
    trained_objects = {obj for pair in TRAIN_PAIRINGS for obj in pair}
    assert trained_objects == set(itertools.product(COLOURS, SHAPES))


def test_held_out_pairings_never_in_train_and_both_kinds_in_val():
    train = [scene_sample(0, "train", index) for index in range(3000)]
    scenes = [s for s in train if s.kind == "scene"]
    assert not any(s.held_out for s in scenes)
    assert all(pairing(s.objects[0].key, s.objects[1].key) in TRAIN_PAIRINGS for s in scenes)
    assert abs(len(scenes) / len(train) - (1 - SINGLE_SHARE)) < 0.03
    seen_pairings = {pairing(s.objects[0].key, s.objects[1].key) for s in scenes}
    assert len(seen_pairings) > 110  # of 123: training covers its pairings
    val = [scene_sample(0, "val", index) for index in range(240)]
    assert all(s.kind == "scene" for s in val)
    assert all(s.held_out == bool(index % 2) for index, s in enumerate(val))
    assert {pairing(s.objects[0].key, s.objects[1].key) for s in val if s.held_out} == set(HELD_OUT_PAIRINGS)


def test_shards_json_and_captions_agree(scenes_dir):
    _, shards = scenes_dir
    kinds = Counter()
    for key, entries in read_all(shards["train"] + shards["val"]):
        truth = json.loads(entries["json"])
        assert truth["caption"] == entries["txt"].decode("utf-8")
        kinds[truth["kind"]] += 1
        split = key.split("-")[0]
        assert truth["held_out"] == (split == "val" and int(key.split("-")[1]) % 2 == 1)
        if truth["kind"] == "scene":
            assert len(truth["objects"]) == 2 and truth["axis"] in ("horizontal", "vertical")
            assert truth["relation"] in ("to the left of", "to the right of", "above", "below")
            assert set(truth["objects"][0]) == {"colour", "shape", "size", "cx", "cy"}
        else:
            assert len(truth["objects"]) == 1 and truth["relation"] is None
    assert kinds["scene"] > 100 and kinds["single"] > 10


def test_captions_are_truthful_and_vary_their_word_order():
    relations, subjects, framings = Counter(), Counter(), Counter()
    for index in range(1500):
        sample = scene_sample(2, "train", index)
        if sample.kind == "single":  # the demo's image and caption (tests/data/test_demo_data.py checks those)
            demo = demo_sample(2, "train", index)
            assert sample.caption == demo.caption and sample.objects[0].key == (demo.colour, demo.shape)
            continue
        match = SCENE_CAPTION.match(sample.caption)
        assert match, sample.caption
        for article, colour in ((match["a1"], match["c1"]), (match["a2"], match["c2"])):
            assert article == ("an" if colour[0] in "aeiou" else "a"), sample.caption
        subject, other = sample.objects[sample.subject], sample.objects[1 - sample.subject]
        assert (match["c1"], match["s1"]) == subject.key and (match["c2"], match["s2"]) == other.key
        assert match["rel"] == sample.relation
        # the relation holds in the drawn geometry
        if match["rel"] == "to the left of":
            assert subject.bbox()[2] + MIN_GAP <= other.bbox()[0] + 1e-6
        elif match["rel"] == "to the right of":
            assert other.bbox()[2] + MIN_GAP <= subject.bbox()[0] + 1e-6
        elif match["rel"] == "above":
            assert subject.bbox()[3] + MIN_GAP <= other.bbox()[1] + 1e-6
        else:
            assert other.bbox()[3] + MIN_GAP <= subject.bbox()[1] + 1e-6
        relations[match["rel"]] += 1
        subjects[sample.subject] += 1
        framings[match.group(1)] += 1
    assert len(relations) == 4 and min(relations.values()) > 200
    assert min(subjects.values()) > 500  # either object comes first
    assert len(framings) == 6  # plain, and the five demo framings


def test_objects_never_overlap_and_stay_inside_the_image():
    for index in range(2000):
        sample = scene_sample(1, "train" if index % 3 else "val", index)
        if sample.kind == "single":
            continue
        first, second = sample.objects
        assert first.colour != second.colour
        for obj in sample.objects:
            left, top, right, bottom = obj.bbox()
            assert left >= MARGIN - 1e-6 and top >= MARGIN - 1e-6
            assert right <= IMAGE_SIZE - MARGIN + 1e-6 and bottom <= IMAGE_SIZE - MARGIN + 1e-6
        along = 0 if sample.axis == "horizontal" else 1
        assert first.bbox()[along + 2] + MIN_GAP <= second.bbox()[along] + 1e-6
        across = [obj.cy if sample.axis == "horizontal" else obj.cx for obj in sample.objects]
        centres = [obj.cx if sample.axis == "horizontal" else obj.cy for obj in sample.objects]
        assert abs(across[0] - across[1]) < abs(centres[0] - centres[1]) / 2  # the axis is plain


def test_rendering_shows_each_object_in_its_box_and_nothing_else():
    for index in range(40):
        sample = scene_sample(5, "val", index)
        image = np.asarray(render_scene(sample)).astype(int)
        background = np.asarray(sample.background)
        assert BACKGROUND_RANGE[0] <= background.min() and background.max() <= BACKGROUND_RANGE[1]
        covered = np.zeros(image.shape[:2], bool)
        for obj in sample.objects:
            left, top, right, bottom = obj.bbox()
            box = (slice(int(top), int(np.ceil(bottom))), slice(int(left), int(np.ceil(right))))
            covered[box] = True
            # the bottom-centre of every shape (upright triangles included) has the object's colour
            row, col = int(top + 0.8 * (bottom - top)), int(obj.cx)
            assert np.abs(image[row, col] - COLOURS[obj.colour]).max() <= 2, (index, obj)
        assert (image[~covered] == background).all()  # no ink outside the two boxes
        assert covered.sum() < image.shape[0] * image.shape[1] / 2


def test_stored_jpeg_is_the_rendering(scenes_dir):
    _, shards = scenes_dir
    for key, entries in read_all(shards["val"])[:10]:
        stored = np.asarray(Image.open(io.BytesIO(entries["jpg"])).convert("RGB"), dtype=float)
        rendered = np.asarray(render_scene(scene_sample(3, "val", int(key.split("-")[1]))), dtype=float)
        assert np.abs(stored - rendered).mean() < 2.0


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="num_samples"):
        make_scenes_dataset(str(tmp_path), num_samples=0)
    with pytest.raises(ValueError, match="image_size"):
        make_scenes_dataset(str(tmp_path), num_samples=4, image_size=100)
    with pytest.raises(ValueError, match="split"):
        scene_sample(0, "test", 0)
    with pytest.raises(ValueError, match="demo_data.kind: 'scene'"):
        prepare_demo_dataset(str(tmp_path / "x"), num_samples=4, kind="scene")


def test_prepare_with_kind_scenes_writes_scene_shards(tmp_path):
    prepare_demo_dataset(str(tmp_path / "scenes"), num_samples=8, seed=2, kind="scenes")
    samples = read_all([str(tmp_path / "scenes" / "train-000000.tar")])
    assert len(samples) == 8
    assert [json.loads(entries["json"])["caption"] for _, entries in samples] == [
        scene_sample(2, "train", index).caption for index in range(8)
    ]


def test_cli_writes_scene_shards(tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, str(REPO / "examples/make_demo_data.py"), "--kind", "scenes", "--output_dir", str(out),
         "--num_samples", "30", "--samples_per_shard", "20", "--num_val_samples", "6", "--seed", "3"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["train-000000.tar", "train-000001.tar", "val-000000.tar"]
    first = read_all([str(out / "train-000000.tar")])
    assert json.loads(first[0][1]["json"])["caption"] == scene_sample(3, "train", 0).caption
    bad = subprocess.run(
        [sys.executable, str(REPO / "examples/make_demo_data.py"), "--kind", "scenes", "--output_dir", str(out),
         "--num_samples", "0"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert bad.returncode == 2 and "num_samples 0" in bad.stderr
