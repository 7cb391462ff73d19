"""The scene checker against the scenes dataset's own ground truth (held-out and seen pairings, through the
stored JPEGs), and against pictures that must fail: colours swapped between the objects (a binding error),
the two objects' places exchanged (the relation reversed), one object, blank and noise images."""
import importlib.util
import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from nemo_imagen.data.demo import COLOURS
from nemo_imagen.data.scene_checker import (
    FoundObject,
    ScenePrompt,
    find_objects,
    format_summary,
    judge_scene,
    parse_scene_prompt,
    score,
    summarize,
)
from nemo_imagen.data.scenes import (
    HELD_OUT_PAIRINGS,
    SceneObject,
    SceneSample,
    make_scenes_dataset,
    pairing,
    render_scene,
    scene_sample,
)
from nemo_imagen.data.shards import iter_shard

REPO = Path(__file__).resolve().parents[2]


def cli_main():
    """examples/check_scene_samples.py's main (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location("check_scene_samples", REPO / "examples" / "check_scene_samples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


NUM_EACH = 300  # ground-truth scenes of held-out pairings, and as many of seen ones


@pytest.fixture(scope="module")
def val_scenes(tmp_path_factory):
    """The val split's 600 first scenes as stored (JPEG): odd indices held-out pairings, even indices seen."""
    shards = make_scenes_dataset(str(tmp_path_factory.mktemp("scenes")), num_samples=1, num_val_samples=2 * NUM_EACH,
                                 seed=11)
    scenes = []
    for _, entries in iter_shard(shards["val"][0]):
        truth = json.loads(entries["json"])
        scenes.append((truth, np.asarray(Image.open(io.BytesIO(entries["jpg"])).convert("RGB"))))
    return scenes


def figures_of(scenes, held_out):
    scores = [judge_scene(truth["caption"], image) for truth, image in scenes if truth["held_out"] == held_out]
    return summarize(scores)


@pytest.mark.parametrize("held_out", [True, False], ids=["held-out", "seen"])
def test_checker_agrees_with_ground_truth(val_scenes, held_out):
    """Measured (seed 11, 300 each): held-out and seen both 1.000 for every figure, binding errors 0.000."""
    figures = figures_of(val_scenes, held_out)
    print(format_summary("ground truth, " + ("held-out" if held_out else "seen"), figures))
    assert figures["images"] == NUM_EACH
    assert figures["two_objects"] == 1.0
    assert figures["colour"] >= 0.995 and figures["shape"] >= 0.995 and figures["relation"] >= 0.995, figures
    assert figures["fully_right"] >= 0.99, figures  # at most 3 of 300 wrong
    assert figures["binding_error"] == 0.0


def _swapped_colours(sample):
    first, second = sample.objects
    objects = (replace(first, colour=second.colour), replace(second, colour=first.colour))
    return replace(sample, objects=objects)


def _swapped_places(sample):
    first, second = sample.objects  # exchanged centres: the first object now lies right of / below the second
    objects = (replace(first, cx=second.cx, cy=second.cy), replace(second, cx=first.cx, cy=first.cy))
    return replace(sample, objects=objects)


def _val(indices, seed=12):
    return [scene_sample(seed, "val", index) for index in indices]


def test_swapped_colours_are_binding_errors():
    """The prompt's colours and shapes, each colour on the other object: never fully right, a binding error
    wherever the two shapes differ (with equal shapes, swapping colours just mirrors the scene)."""
    samples = [s for s in _val(range(200)) if s.objects[0].shape != s.objects[1].shape]
    assert len(samples) > 100
    scores = [judge_scene(s.caption, np.asarray(render_scene(_swapped_colours(s)))) for s in samples]
    figures = summarize(scores)
    print(format_summary("colours swapped", figures))  # measured: binding_error 1.000, fully_right 0.000 (154)
    assert figures["fully_right"] == 0.0
    assert figures["binding_error"] >= 0.98, figures
    assert figures["colour"] >= 0.98 and figures["two_objects"] == 1.0  # the matching binds by colour ...
    assert figures["shape"] <= 0.02  # ... so both shapes are wrong
    # the same scenes unswapped: no binding error
    assert summarize([judge_scene(s.caption, np.asarray(render_scene(s))) for s in samples])["binding_error"] == 0


def test_swapped_places_reverse_the_relation():
    samples = _val(range(200))
    figures = summarize([judge_scene(s.caption, np.asarray(render_scene(_swapped_places(s)))) for s in samples])
    print(format_summary("places swapped", figures))  # measured: relation 0.000, colour and shape 1.000 (200)
    assert figures["relation"] <= 0.01 and figures["fully_right"] <= 0.01, figures
    assert figures["colour"] >= 0.99 and figures["shape"] >= 0.98  # the objects themselves are right
    assert figures["binding_error"] == 0.0


def test_a_soft_outline_is_judged_by_its_outline():
    """Samples of a small model are softer than the data: after a Gaussian blur of 1 pixel (measured: every
    figure 1.000 on these 200 scenes) the checker still reads the scenes."""
    samples = _val(range(200), seed=5)
    blurred = [np.asarray(render_scene(s).filter(ImageFilter.GaussianBlur(1))) for s in samples]
    figures = summarize([judge_scene(s.caption, image) for s, image in zip(samples, blurred)])
    print(format_summary("blurred 1 px", figures))
    assert figures["fully_right"] >= 0.97, figures


def test_blank_noise_and_one_object_fail():
    blank = np.full((64, 64, 3), 240, np.uint8)
    prompt = "a red circle to the left of a blue square"
    assert find_objects(blank) == []
    assert judge_scene(prompt, blank) == score(parse_scene_prompt(prompt), [])
    empty = judge_scene(prompt, blank)
    assert (empty.colour, empty.shape, empty.relation, empty.fully_right, empty.binding_error) == (0, 0, False,
                                                                                                   False, False)
    rng = np.random.default_rng(0)
    noise_scores = [judge_scene(prompt, rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(20)]
    assert not any(s.fully_right or s.relation for s in noise_scores)
    one = blank.copy()
    yy, xx = np.mgrid[:64, :64]
    one[np.hypot(yy - 32, xx - 20) < 10] = COLOURS["red"]
    found = find_objects(one)
    assert [(o.colour, o.shape) for o in found] == [("red", "circle")]
    single = judge_scene(prompt, one)
    assert (single.objects_found, single.colour, single.shape, single.relation, single.fully_right) == (
        1, 0.5, 0.5, False, False)


def test_touching_objects_of_two_colours_are_two_objects():
    image = np.full((64, 64, 3), 235, np.uint8)
    image[20:40, 10:30] = COLOURS["green"]
    image[20:40, 30:50] = COLOURS["orange"]  # no gap at all
    found = find_objects(image)
    assert sorted((o.colour, o.shape) for o in found) == [("green", "square"), ("orange", "square")]
    assert judge_scene("a green square to the left of an orange square", image).fully_right
    assert not judge_scene("a green square to the right of an orange square", image).relation


def test_scoring_rules_on_hand_made_objects():
    red_circle, blue_square = FoundObject("red", "circle", 16, 30, 300), FoundObject("blue", "square", 48, 32, 300)
    prompt = ScenePrompt(("red", "circle"), "left", ("blue", "square"))
    right = score(prompt, [blue_square, red_circle])  # found order does not matter
    assert right.fully_right and right.relation and (right.colour, right.shape) == (1, 1)
    wrong_shape = score(prompt, [replace(red_circle, shape="triangle"), blue_square])
    assert (wrong_shape.colour, wrong_shape.shape, wrong_shape.relation) == (1, 0.5, True)
    assert not wrong_shape.fully_right and not wrong_shape.binding_error
    vertical = score(prompt, [replace(red_circle, cx=30, cy=10), replace(blue_square, cx=34, cy=50)])
    assert not vertical.relation  # above, not left of: the larger distance decides the axis
    assert score(ScenePrompt(("red", "circle"), "above", ("blue", "square")),
                 [replace(red_circle, cx=30, cy=10), replace(blue_square, cx=34, cy=50)]).fully_right


def test_prompt_parsing():
    assert parse_scene_prompt("A photo of an orange triangle below a purple square on a plain light background") == \
        ScenePrompt(("orange", "triangle"), "below", ("purple", "square"))
    assert parse_scene_prompt("a red circle to the right of a blue square").relation == "right"
    for index in range(300):  # every caption of the data parses to its json truth
        sample = scene_sample(4, "val", index)
        parsed = parse_scene_prompt(sample.caption)
        assert parsed.subject == sample.objects[sample.subject].key
        assert parsed.other == sample.objects[1 - sample.subject].key
        assert parsed.held_out == sample.held_out
    with pytest.raises(ValueError, match="not a scene prompt"):
        parse_scene_prompt("a red circle")
    with pytest.raises(ValueError, match="not a scene prompt"):
        parse_scene_prompt("a red circle next to a blue square")
    with pytest.raises(ValueError, match="same colour"):
        parse_scene_prompt("a red circle above a red square")


def test_the_fixed_prompt_file_covers_every_held_out_pairing_and_seen_controls():
    prompts = (REPO / "examples" / "scene_prompts.txt").read_text().splitlines()
    parsed = [parse_scene_prompt(prompt) for prompt in prompts]
    held = [p for p in parsed if p.held_out]
    seen = [p for p in parsed if not p.held_out]
    assert len(held) == 12 and len(seen) == 24
    assert {pairing(p.subject, p.other) for p in held} == set(HELD_OUT_PAIRINGS)
    for p in held:  # each held-out pairing has a seen prompt with the same two colours
        assert any({p.subject[0], p.other[0]} == {q.subject[0], q.other[0]} for q in seen)
    for group in (held, seen):
        assert {p.relation for p in group} == {"left", "right", "above", "below"}


def test_cli_reports_seen_and_held_out(tmp_path):
    main = cli_main()
    prompts = ["a red square above a green circle", "a green square to the left of a red circle"]  # seen, held-out
    assert [parse_scene_prompt(p).held_out for p in prompts] == [False, True]
    (tmp_path / "prompts.txt").write_text("".join(f"{p}\n" for p in prompts))
    blank = Image.new("RGB", (64, 64), (238, 238, 238))
    for image_index in range(3):
        blank.save(tmp_path / f"00000_{image_index:02d}.png")  # the seen prompt: blank images
    objects = (SceneObject("green", "square", 20, 16, 32), SceneObject("red", "circle", 20, 46, 32))
    scene = SceneSample("scene", objects, "horizontal", 0, (238, 238, 238), prompts[1])
    for image_index in range(2):
        render_scene(scene).save(tmp_path / f"00001_{image_index:02d}.png")  # the held-out prompt: drawn right
    json_path = tmp_path / "figures.json"
    assert main([str(tmp_path), "--per_prompt", "--json", str(json_path)]) == 0
    figures = json.loads(json_path.read_text())
    assert figures["seen"]["images"] == 3 and figures["seen"]["fully_right"] == 0.0
    assert figures["held_out"]["images"] == 2 and figures["held_out"]["fully_right"] == 1.0
    assert figures["all"]["images"] == 5 and figures["all"]["fully_right"] == pytest.approx(0.4)


def test_cli_errors(tmp_path, capsys):
    main = cli_main()

    assert main([str(tmp_path)]) == 2
    assert "prompts.txt not found" in capsys.readouterr().err
    (tmp_path / "prompts.txt").write_text("a red circle\n")
    assert main([str(tmp_path)]) == 2
    assert "not a scene prompt" in capsys.readouterr().err
    (tmp_path / "prompts.txt").write_text("a red circle above a blue square\n")
    assert main([str(tmp_path)]) == 2
    assert "no sample PNGs" in capsys.readouterr().err
    Image.new("RGB", (64, 64), (238, 238, 238)).save(tmp_path / "00003_00.png")
    assert main([str(tmp_path)]) == 2
    assert "prompt 3 is not in" in capsys.readouterr().err
