"""Fixtures for the data tests: small shards written by hand, config shortcuts, and the real
all-MiniLM-L6-v2 encoder.

The helpers reach the tests through the ``kit`` fixture (a namespace), not an import: a ``tests``
package installed in site-packages by a dependency shadows this repository's ``tests`` directory."""
import io
import types

import numpy as np
import pytest
from PIL import Image
from webdataset import TarWriter

from nemo_imagen.data.config import DataConfig, TrainDataConfig, WebdatasetConfig
from nemo_imagen.text.config import ConditioningConfig
from nemo_imagen.text.embedding_format import encode_embedding, sample_key
from nemo_imagen.text.encoders import MINILM_NAME, TextEncoder

EMBED_DIM = 8
PRECACHED_KEY = "embeddings_test"


def jpeg_bytes(colour, size=(64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def good_sample(key: str, index: int, size=(64, 64), num_tokens: int = 3) -> dict:
    """A valid sample: a plain image, caption ``caption <key>``, embedding ``[num_tokens, EMBED_DIM]`` of ``index``."""
    tokens = np.full((num_tokens, EMBED_DIM), index, dtype=np.float32) + np.arange(num_tokens)[:, None]
    return {
        "__key__": key,
        "jpg": jpeg_bytes((index * 10 % 256, 100, 200), size),
        "txt": f"caption {key}".encode(),
        sample_key(PRECACHED_KEY): encode_embedding(tokens),
    }


def write_shard(path, samples) -> str:
    with TarWriter(str(path), encoder=False) as writer:
        for sample in samples:
            writer.write(sample)
    return str(path)


def write_good_shards(directory, num_shards: int, per_shard: int):
    """``num_shards`` shards of ``per_shard`` good samples keyed ``s{shard}_{i}``; returns (paths, captions)."""
    paths, captions = [], []
    for shard in range(num_shards):
        samples = [good_sample(f"s{shard}_{i}", shard * per_shard + i) for i in range(per_shard)]
        paths.append(write_shard(directory / f"shard-{shard:03d}.tar", samples))
        captions += [f"caption s{shard}_{i}" for i in range(per_shard)]
    return paths, captions


def data_config(paths, num_workers=0, infinite=False, shuffle_buffer=0, **train) -> DataConfig:
    return DataConfig(
        num_workers=num_workers,
        train=TrainDataConfig(dataset_path=list(paths), **train),
        webdataset=WebdatasetConfig(infinite_sampler=infinite, shuffle_buffer=shuffle_buffer),
    )


def cond_config(token_length=4, **overrides) -> ConditioningConfig:
    values = dict(embed_dim=EMBED_DIM, token_length=token_length, precached_key=PRECACHED_KEY)
    values.update(overrides)
    return ConditioningConfig(**values)


@pytest.fixture
def kit():
    """The helpers above, as ``kit.good_sample(...)`` etc."""
    return types.SimpleNamespace(
        EMBED_DIM=EMBED_DIM,
        PRECACHED_KEY=PRECACHED_KEY,
        jpeg_bytes=jpeg_bytes,
        good_sample=good_sample,
        write_shard=write_shard,
        write_good_shards=write_good_shards,
        data_config=data_config,
        cond_config=cond_config,
    )


@pytest.fixture(scope="session")
def minilm() -> TextEncoder:
    """The real all-MiniLM-L6-v2 encoder (packaged, offline), loaded once."""
    return TextEncoder.from_path(MINILM_NAME)
