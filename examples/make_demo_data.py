"""Write the demo dataset (coloured shapes with captions) as webdataset shards.

    python examples/make_demo_data.py --output_dir demo_data
    # -> demo_data/train-000000.tar ... train-000005.tar (6000 samples), demo_data/val-000000.tar
    python examples/make_demo_data.py --kind scenes
    # -> scenes_data/train-000000.tar ... train-000009.tar (10000 samples), scenes_data/val-000000.tar (512)

Same arguments, same bytes. See nemo_imagen/data/demo.py for what is drawn, and nemo_imagen/data/scenes.py for
the scenes (two shapes and their relation, with held-out pairings of objects).
"""
import argparse
import time

from nemo_imagen.data.demo import make_demo_dataset

# per kind: output_dir, num_samples, num_val_samples
DEFAULTS = {"demo": ("demo_data", 6000, 256), "scenes": ("scenes_data", 10000, 512)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=sorted(DEFAULTS), default="demo",
                        help="demo: one shape an image; scenes: two shapes and their relation")
    parser.add_argument("--output_dir", help="where the shards go (created if missing); default demo_data or "
                        "scenes_data")
    parser.add_argument("--num_samples", type=int, help="training samples (default 6000 demo, 10000 scenes)")
    parser.add_argument("--samples_per_shard", type=int, default=1000)
    parser.add_argument("--num_val_samples", type=int,
                        help="held-out samples in val-000000.tar (default 256 demo, 512 scenes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image_size", type=int, default=64, help="image side, a multiple of 64 (256 for SR stages)")
    args = parser.parse_args()
    output_dir, num_samples, num_val_samples = DEFAULTS[args.kind]
    output_dir = args.output_dir if args.output_dir is not None else output_dir
    num_samples = args.num_samples if args.num_samples is not None else num_samples
    num_val_samples = args.num_val_samples if args.num_val_samples is not None else num_val_samples
    if args.kind == "scenes":
        from nemo_imagen.data.scenes import make_scenes_dataset as make
    else:
        make = make_demo_dataset
    start = time.perf_counter()
    try:
        shards = make(output_dir, num_samples, args.samples_per_shard, args.seed, num_val_samples, args.image_size)
    except ValueError as error:
        parser.error(str(error))
    print(
        f"wrote {num_samples} training samples in {len(shards['train'])} shards and {num_val_samples} "
        f"held-out samples to {output_dir} in {time.perf_counter() - start:.1f} s"
    )
    print(f"train: {shards['train'][0]} ... {shards['train'][-1]}")


if __name__ == "__main__":
    main()
