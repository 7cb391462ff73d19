"""Add precached text embeddings to webdataset shards.

    python examples/precache_embeddings.py --input 'demo_data/train-{000000..000005}.tar' \
        --output_dir demo_data_minilm --encoder_path all-MiniLM-L6-v2 --precached_key embeddings_minilm

Writes a copy of every input shard to --output_dir with each caption's encoder states added as
'<precached_key>.npy'. Re-running skips shards already written. Then train with
model.data.train.dataset_path pointing at the new shards, model.conditioning.precached_key set to the
same key and model.conditioning.embed_dim to the encoder's width (384 for MiniLM).
"""
import argparse
import logging
import sys

import torch

from nemo_imagen.data.precache import precache_embeddings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True, help="input shards or brace patterns")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument(
        "--encoder_path", required=True, help="local Hugging Face encoder directory (e.g. T5) or all-MiniLM-L6-v2"
    )
    parser.add_argument("--precached_key", default="embeddings_t5_xxl")
    parser.add_argument("--token_length", type=int, default=128, help="captions are truncated to this many tokens")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    summary = precache_embeddings(
        args.input,
        args.output_dir,
        args.encoder_path,
        precached_key=args.precached_key,
        token_length=args.token_length,
        batch_size=args.batch_size,
        device=args.device,
    )
    print(
        f"written {len(summary.written)} shards ({summary.samples} samples, {summary.without_caption} without a "
        f"caption), already done {len(summary.already_done)}, failed {len(summary.failed)}: {summary.failed}"
    )
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
