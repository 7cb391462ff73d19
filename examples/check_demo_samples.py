"""Judge samples of demo-dataset prompts by their pixels: did each image get the prompted colour and shape?

    python examples/sample.py base_ckpt=RUN.nemo prompts_file=examples/demo_prompts.txt output_dir=outputs/demo
    python examples/check_demo_samples.py outputs/demo

Reads the prompts.txt and {prompt_index:05d}_{image_index:02d}.png files that sample.py writes and prints the
fraction of images with the prompted colour and with the prompted shape, overall and per prompt."""
import argparse
import sys
from collections import defaultdict
from pathlib import Path

from nemo_imagen.data.demo_checker import judge, prompt_target
from nemo_imagen.images import read_sample_images, read_sample_prompts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("samples_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        prompts = read_sample_prompts(args.samples_dir)
        samples = read_sample_images(args.samples_dir, len(prompts))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    per_prompt = defaultdict(lambda: [0, 0, 0])  # images, colour right, shape right
    for index, image in samples:
        colour, shape = prompt_target(prompts[index])
        judged_colour, judged_shape = judge(image)
        counts = per_prompt[prompts[index]]
        counts[0] += 1
        counts[1] += judged_colour == colour
        counts[2] += judged_shape == shape
    for prompt, (images, colours, shapes) in per_prompt.items():
        print(f"{prompt:28s} colour {colours}/{images}  shape {shapes}/{images}")
    images, colours, shapes = (sum(column) for column in zip(*per_prompt.values()))
    print(f"images: {images}")
    print(f"colour_accuracy: {colours / images:.3f}")
    print(f"shape_accuracy: {shapes / images:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
