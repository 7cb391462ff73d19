"""Shared by the fault-injection tests: tiny shards with chosen faults, launching a training run as a separate
process (so it can be killed), and reading its checkpoints."""
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from webdataset import TarWriter

from nemo_imagen.text.embedding_format import encode_embedding, sample_key
from tests.tiny import REPO, TINY_CONDITIONING, tiny_overrides

EMBED_DIM = TINY_CONDITIONING["embed_dim"]
EMBED_ENTRY = sample_key("embeddings_t5_xxl")


def jpeg(seed: int, size: int = 64) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def good_sample(index: int) -> dict:
    tokens = np.random.default_rng(index).standard_normal((3, EMBED_DIM)).astype(np.float32)
    return {"__key__": f"{index:05d}", "jpg": jpeg(index), "txt": f"sample {index}".encode(), EMBED_ENTRY: encode_embedding(tokens)}


def write_shard(path, samples) -> Path:
    with TarWriter(str(path), encoder=False) as writer:
        for entries in samples:
            writer.write({key: value for key, value in entries.items() if value is not None})
    return Path(path)


def shard_overrides(exp_dir, shards, max_steps, extra=()):
    """Tiny model on real shards: finite epochs, micro batch 2, global batch 4 (accumulation 2)."""
    return tiny_overrides(exp_dir, max_steps=max_steps, synthetic=False, extra=[
        f"model.data.train.dataset_path=[{','.join(str(shard) for shard in shards)}]",
        "model.data.webdataset.infinite_sampler=False",
        "model.sample_log.every_n_steps=0",
        *extra,
    ])


def start_training(*args, **popen_kwargs) -> subprocess.Popen:
    """examples/train.py in a new process and process group (stdout and stderr merged into .stdout)."""
    return subprocess.Popen(
        [sys.executable, str(REPO / "examples" / "train.py"), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)},
        start_new_session=True,
        **popen_kwargs,
    )


def checkpoint_step(path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def last_checkpoints(exp_dir):
    return sorted(Path(exp_dir).glob("**/checkpoints/*last.ckpt"))


def wait_for(predicate, process: subprocess.Popen, timeout: float = 240.0, poll: float = 0.02):
    """Polls until predicate() is truthy; fails if the process ends first or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if process.poll() is not None:
            raise AssertionError(f"training ended ({process.returncode}) before the awaited state:\n{process.stdout.read()[-4000:]}")
        time.sleep(poll)
    process.kill()
    raise AssertionError("timed out")
