"""Serve a frozen text encoder with NVIDIA PyTriton: captions in, token states and mask out.

    python examples/embedding_server.py --encoder all-MiniLM-L6-v2 --token-length 128 --http-port 8000

Run it from its own environment (PyTriton pins numpy<2, which the NeMo set does not allow): see the README
("Embedding servers"). Trainers reach it with ``model.conditioning.online_encoding=server`` and
``model.conditioning.server_urls=[host:8000]``; Triton's dynamic batcher merges the requests of all their
dataloader workers into encoder batches of up to ``--max-batch-size`` captions. Stop it with SIGINT (Ctrl-C) or
SIGTERM (both shut Triton down and remove its workspace under ~/.cache/pytriton).

Model ``--model-name`` (default ``text_encoder``): input ``captions`` (BYTES, one UTF-8 caption per row);
outputs ``embeddings`` float32 ``[B, token_length, D]`` (zero at padded positions) and ``mask`` bool
``[B, token_length]``: exactly ``TextEncoder.encode`` of the same captions.
"""
import argparse
import logging
import os
import signal
import sys
import sysconfig
from pathlib import Path

# The repository root, so the script runs from a checkout without installing the package in the server's env.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from nemo_imagen.text.embedding_client import EMBEDDINGS_NAME, INPUT_NAME, MASK_NAME  # noqa: E402
from nemo_imagen.text.encoders import TextEncoder, check_token_length  # noqa: E402

logger = logging.getLogger("embedding_server")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoder", required=True,
                        help="conditioning.encoder_path: a local Hugging Face directory or all-MiniLM-L6-v2")
    parser.add_argument("--token-length", type=int, required=True, help="conditioning.token_length")
    parser.add_argument("--model-name", default="text_encoder", help="conditioning.server_model_name")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 to serve other nodes)")
    parser.add_argument("--http-port", type=int, default=8000, help="conditioning.server_urls port")
    parser.add_argument("--grpc-port", type=int, default=None, help="default: http port + 1")
    parser.add_argument("--metrics-port", type=int, default=None, help="default: http port + 2")
    parser.add_argument("--max-batch-size", type=int, default=256, help="largest batch the dynamic batcher forms")
    parser.add_argument("--max-queue-delay-us", type=int, default=2000,
                        help="how long the batcher waits to fill a batch (microseconds)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="encoder weights (bfloat16 for T5-XXL on GPU; T5 overflows in float16)")
    parser.add_argument("--encoder-batch-size", type=int, default=256, help="captions per encoder forward")
    return parser.parse_args(argv)


def make_infer_function(encoder: TextEncoder, token_length: int):
    from pytriton.decorators import batch

    @batch
    def infer(**inputs):
        captions = [row[0].decode("utf-8") if isinstance(row[0], bytes) else str(row[0]) for row in inputs[INPUT_NAME]]
        embed, mask = encoder.encode(captions, token_length)
        return {EMBEDDINGS_NAME: embed.cpu().numpy().astype(np.float32), MASK_NAME: mask.cpu().numpy()}

    return infer


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # Triton's Python-backend stub can pick up the system's libpython instead of this interpreter's (model load
    # then fails with "'_thread.RLock' object has no attribute '_recursion_count'"): point it at our own.
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [libdir, os.environ.get("LD_LIBRARY_PATH")]))
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    encoder = TextEncoder.from_path(args.encoder, device=args.device, dtype=DTYPES[args.dtype],
                                    batch_size=args.encoder_batch_size)
    check_token_length(encoder, args.token_length)
    config = TritonConfig(
        http_address=args.host,
        http_port=args.http_port,
        grpc_address=args.host,
        grpc_port=args.grpc_port if args.grpc_port is not None else args.http_port + 1,
        metrics_address=args.host,
        metrics_port=args.metrics_port if args.metrics_port is not None else args.http_port + 2,
    )
    # SIGTERM (scancel, the end of a SLURM step) shuts down like SIGINT, so PyTriton removes its workspace.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    with Triton(config=config) as triton:
        triton.bind(
            model_name=args.model_name,
            infer_func=make_infer_function(encoder, args.token_length),
            inputs=[Tensor(name=INPUT_NAME, dtype=bytes, shape=(1,))],
            outputs=[
                Tensor(name=EMBEDDINGS_NAME, dtype=np.float32, shape=(args.token_length, encoder.embed_dim)),
                Tensor(name=MASK_NAME, dtype=np.bool_, shape=(args.token_length,)),
            ],
            config=ModelConfig(
                max_batch_size=args.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_queue_delay_us),
            ),
            strict=True,
        )
        logger.info(
            "serving %s (%d-dim token states, %d tokens) as %r on http://%s:%d (max batch %d, %s, %s)",
            encoder.name, encoder.embed_dim, args.token_length, args.model_name, args.host, args.http_port,
            args.max_batch_size, args.device, args.dtype,
        )
        triton.serve()


if __name__ == "__main__":
    main()
