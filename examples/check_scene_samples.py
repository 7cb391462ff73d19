"""Judge samples of scene prompts by their pixels: did each image draw both objects with the right colour and
shape, in the right relation?

    python examples/sample.py base_ckpt=RUN.nemo prompts_file=examples/scene_prompts.txt \
        num_images_per_prompt=8 output_dir=outputs/scenes
    python examples/check_scene_samples.py outputs/scenes

Reads the prompts.txt and {prompt_index:05d}_{image_index:02d}.png files that sample.py writes. Prints, for the
prompts whose pairing of objects was seen in training, for those held out of training
(nemo_imagen/data/scenes.py: HELD_OUT_PAIRINGS) and for all: object-level colour and shape accuracy, relation
accuracy, the share of fully right scenes, the share of binding errors and the share of images where two objects
were found (nemo_imagen/data/scene_checker.py says how each is judged). --per_prompt adds a line per prompt;
--json writes the figures to a file."""
import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from nemo_imagen.data.scene_checker import find_objects, format_summary, parse_scene_prompt, score, summarize
from nemo_imagen.images import read_sample_images, read_sample_prompts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("samples_dir", type=Path)
    parser.add_argument("--per_prompt", action="store_true", help="also print each prompt's figures")
    parser.add_argument("--json", type=Path, help="write the figures of each set to this file")
    args = parser.parse_args(argv)
    try:
        prompts = read_sample_prompts(args.samples_dir)
        try:
            parsed = [parse_scene_prompt(prompt) for prompt in prompts]
        except ValueError as error:
            raise ValueError(f"{args.samples_dir / 'prompts.txt'}: {error}") from None
        samples = read_sample_images(args.samples_dir, len(prompts))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    per_prompt = defaultdict(list)
    for index, image in samples:
        per_prompt[index].append(score(parsed[index], find_objects(image)))
    if args.per_prompt:
        for index in sorted(per_prompt):
            label = "held-out" if parsed[index].held_out else "seen"
            print(format_summary(f"[{label}] {prompts[index]}", summarize(per_prompt[index])))
    sets = {
        "seen": [s for index, scores in per_prompt.items() if not parsed[index].held_out for s in scores],
        "held_out": [s for index, scores in per_prompt.items() if parsed[index].held_out for s in scores],
        "all": [s for scores in per_prompt.values() for s in scores],
    }
    figures = {name: summarize(scores) if scores else None for name, scores in sets.items()}
    for name, summary in figures.items():
        print(format_summary(name, summary))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
