"""Captions per second: embedded in-process vs served by examples/embedding_server.py to concurrent clients.

    python examples/benchmark_embedding_server.py --encoder all-MiniLM-L6-v2 --token-length 128 \
        --server 127.0.0.1:8000 --clients 4 --batch 32 --seconds 20

Each client process plays one dataloader worker: it sends batches of `--batch` captions to the server in a loop
(`text.embedding_client.EmbeddingClient`, the trainer's client). The in-process figure is one process calling
`TextEncoder.encode` on the same batches. Captions are synthetic sentences of 6-20 words.
"""
import argparse
import multiprocessing
import random
import time

WORDS = "a the red blue green small large dog cat car house tree river city photo painting of on in with near".split()


def captions(count: int, seed: int):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 20))) for _ in range(count)]


def client_loop(args, index, start_at, queue):
    from nemo_imagen.text.embedding_client import EmbeddingClient

    client = EmbeddingClient([args.server], args.model_name, args.token_length, args.embed_dim, timeout_s=120)
    batch = captions(args.batch, index)
    client.encode(batch)  # connect before the clock starts
    while time.time() < start_at:
        time.sleep(0.01)
    done, deadline = 0, start_at + args.seconds
    while time.time() < deadline:
        client.encode(batch)
        done += len(batch)
    queue.put(done)


def in_process(args) -> float:
    from nemo_imagen.text.encoders import TextEncoder

    encoder = TextEncoder.from_path(args.encoder, batch_size=args.batch)
    batch = captions(args.batch, 0)
    encoder.encode(batch, args.token_length)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < args.seconds:
        encoder.encode(batch, args.token_length)
        done += len(batch)
    return done / (time.perf_counter() - started)


def served(args) -> float:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    start_at = time.time() + 15  # every client connected and warmed up
    workers = [context.Process(target=client_loop, args=(args, i, start_at, queue)) for i in range(args.clients)]
    for worker in workers:
        worker.start()
    total = sum(queue.get() for _ in workers)
    for worker in workers:
        worker.join()
    return total / args.seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoder", default="all-MiniLM-L6-v2")
    parser.add_argument("--embed-dim", type=int, default=384)
    parser.add_argument("--token-length", type=int, default=128)
    parser.add_argument("--server", default="127.0.0.1:8000")
    parser.add_argument("--model-name", default="text_encoder")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--skip-in-process", action="store_true")
    args = parser.parse_args()
    if not args.skip_in_process:
        print(f"in-process: {in_process(args):.1f} captions/s (batch {args.batch})", flush=True)
    print(f"served: {served(args):.1f} captions/s ({args.clients} clients x batch {args.batch})", flush=True)


if __name__ == "__main__":
    main()
