"""Training on real shards with a truncated JPEG, a sample without caption and a wrong-width embedding: the run
goes on and TensorBoard shows each bad sample counted by kind."""
import io

import numpy as np
from PIL import Image
from webdataset import TarWriter

from nemo_imagen.text.embedding_format import encode_embedding, sample_key
from tests.tiny import TINY_CONDITIONING, run_example, tensorboard_scalars, tiny_overrides

EMBED_DIM = TINY_CONDITIONING["embed_dim"]


def jpeg(seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def sample(index, **changes):
    entries = {
        "__key__": f"{index:04d}",
        "jpg": jpeg(index),
        "txt": f"sample {index}".encode(),
        sample_key("embeddings_t5_xxl"): encode_embedding(np.ones((3, EMBED_DIM), np.float32) * index),
    }
    entries.update(changes)
    return {key: value for key, value in entries.items() if value is not None}


def test_bad_samples_are_skipped_counted_and_training_goes_on(tmp_path):
    shard = tmp_path / "train-000000.tar"
    with TarWriter(str(shard), encoder=False) as writer:
        bad = [
            sample(100, jpg=jpeg(100)[:300]),  # truncated JPEG
            sample(101, txt=None),  # no caption
            sample(102, **{sample_key("embeddings_t5_xxl"): encode_embedding(np.ones((3, 5), np.float32))}),
        ]
        for index in range(12):  # the bad ones among the good, so a later batch reports them
            writer.write(sample(index))
            if index in (3, 5, 7):
                writer.write(bad.pop(0))
    overrides = tiny_overrides(tmp_path / "exp", max_steps=3, synthetic=False, extra=[
        f"model.data.train.dataset_path=[{shard}]",
        "model.data.webdataset.infinite_sampler=False",
        "model.data.webdataset.shuffle_buffer=0",
        "model.sample_log.every_n_steps=0",
    ])
    run_example("train.py", "--config-name", "base64-500m-edm", *overrides)
    scalars = tensorboard_scalars(tmp_path / "exp")
    # 12 good samples = 6 micro batches of 2 = 3 optimizer steps (accumulation 2): one epoch, every bad one seen once
    assert max(step for step, _ in scalars["global_step"]) >= 2
    for kind in ("decode_image", "missing_key", "bad_embedding"):
        assert max(value for _, value in scalars[f"data/skipped_{kind}"]) == 1.0, kind
