"""Write the demo dataset (coloured shapes with captions) as webdataset shards.

    python examples/make_demo_data.py --output_dir demo_data
    # -> demo_data/train-000000.tar ... train-000005.tar (6000 samples), demo_data/val-000000.tar

Same arguments, same bytes. See nemo_imagen/data/demo.py for what is drawn.
"""
import argparse
import time

from nemo_imagen.data.demo import make_demo_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="demo_data", help="where the shards go (created if missing)")
    parser.add_argument("--num_samples", type=int, default=6000, help="training samples")
    parser.add_argument("--samples_per_shard", type=int, default=1000)
    parser.add_argument("--num_val_samples", type=int, default=256, help="held-out samples in val-000000.tar")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image_size", type=int, default=64, help="image side, a multiple of 64 (256 for SR stages)")
    args = parser.parse_args()
    start = time.perf_counter()
    shards = make_demo_dataset(
        args.output_dir, args.num_samples, args.samples_per_shard, args.seed, args.num_val_samples, args.image_size
    )
    print(
        f"wrote {args.num_samples} training samples in {len(shards['train'])} shards and {args.num_val_samples} "
        f"held-out samples to {args.output_dir} in {time.perf_counter() - start:.1f} s"
    )
    print(f"train: {shards['train'][0]} ... {shards['train'][-1]}")


if __name__ == "__main__":
    main()
