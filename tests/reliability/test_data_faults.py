"""Data faults of every kind, about 10% of the samples: each one is skipped and counted by kind (in the loader and
in TensorBoard) and training goes on; past model.data.max_bad_fraction the run stops with a message naming it."""
import io
import tarfile

import numpy as np
import pytest
from omegaconf import OmegaConf

from nemo_imagen.data.config import DataConfig
from nemo_imagen.data.webdataset_pipeline import DataFaultError, build_train_dataloader
from nemo_imagen.text.config import ConditioningConfig
from tests.reliability.helpers import EMBED_DIM, EMBED_ENTRY, good_sample, jpeg, shard_overrides, write_shard
from tests.tiny import TINY_CONDITIONING, run_example, tensorboard_scalars


def npy_bytes(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


# one bad sample of each fault, as (kind it must be counted as, entries to change; None removes the entry)
BAD_SAMPLES = [
    ("decode_image", {"jpg": jpeg(1)[:300]}),  # truncated JPEG
    ("decode_image", {"jpg": b"<html>not an image</html>" * 20}),  # not an image at all
    ("missing_key", {"txt": None}),  # no caption
    ("missing_key", {EMBED_ENTRY: None}),  # no precached embedding
    ("bad_embedding", {EMBED_ENTRY: npy_bytes(np.ones((3, EMBED_DIM + 3), np.float16))}),  # wrong width
    ("bad_embedding", {EMBED_ENTRY: npy_bytes(np.full((3, EMBED_DIM), np.nan, np.float16))}),  # NaN states
    ("decode_caption", {"txt": b"caf\xe9 \xff\xfe"}),  # not UTF-8
]
GOOD_PER_SHARD = 22
TRUNCATED_KEEPS = 5  # the damaged shard's samples before the cut


def make_faulty_shards(tmp_path):
    """3 shards of 22 good samples with the 7 bad ones spread among them, 1 unreadable file, 1 shard cut in
    the middle of its 6th sample: 71 good samples, 9 faults (about 11% of what is read)."""
    bad = list(BAD_SAMPLES)
    shards = []
    for number in range(3):
        samples = []
        for index in range(GOOD_PER_SHARD):
            samples.append(good_sample(number * 100 + index))
            if index % 7 == 3 and bad:
                kind, changes = bad.pop(0)
                samples.append({**good_sample(1000 + len(bad)), "__key__": f"bad{len(bad):02d}", **changes})
        shards.append(write_shard(tmp_path / f"train-{number:06d}.tar", samples))
    assert not bad
    garbage = tmp_path / "train-000003.tar"
    garbage.write_bytes(np.random.default_rng(0).bytes(5000))
    shards.append(garbage)
    cut = write_shard(tmp_path / "train-000004.tar", [good_sample(400 + i) for i in range(10)])
    with tarfile.open(cut) as archive:
        member = next(m for m in archive.getmembers() if m.name.startswith(f"{400 + TRUNCATED_KEEPS:05d}."))
    cut.write_bytes(cut.read_bytes()[: member.offset_data + 10])
    shards.append(cut)
    return shards


EXPECTED = {"decode_image": 2, "missing_key": 2, "bad_embedding": 2, "decode_caption": 1, "read_shard": 2}
GOOD = 3 * GOOD_PER_SHARD + TRUNCATED_KEEPS


def loader(shards, **data_changes):
    data = OmegaConf.structured(DataConfig)
    data.train.dataset_path = [str(shard) for shard in shards]
    data.webdataset.shuffle_buffer = 0
    data.num_workers = 2
    for key, value in data_changes.items():
        OmegaConf.update(data, key, value)
    cond = OmegaConf.merge(OmegaConf.structured(ConditioningConfig), TINY_CONDITIONING)
    return build_train_dataloader(OmegaConf.to_object(data), OmegaConf.to_object(cond), micro_batch_size=2)


def test_every_fault_is_counted_by_kind_and_a_vanished_shard_too(tmp_path):
    shards = make_faulty_shards(tmp_path)
    vanished = write_shard(tmp_path / "train-000005.tar", [good_sample(500 + i) for i in range(4)])
    dataloader = loader([*shards, vanished], max_bad_fraction=0.2, bad_fraction_min_samples=60)
    vanished.unlink()  # deleted after the run started (e.g. a bucket rotated away)
    delivered = sum(len(batch["captions"]) for batch in dataloader)
    assert delivered == GOOD
    counted = {kind: n for kind, n in dataloader.skipped_total.items() if n}
    assert counted == {**EXPECTED, "read_shard": EXPECTED["read_shard"] + 1}
    assert dataloader.bad_fraction() == pytest.approx(10 / (GOOD + 10))


def test_bad_fraction_over_the_threshold_stops_with_a_clear_message(tmp_path):
    dataloader = loader(make_faulty_shards(tmp_path), max_bad_fraction=0.05, bad_fraction_min_samples=20)
    with pytest.raises(DataFaultError, match=r"faulty .* more than model.data.max_bad_fraction = 0.05"):
        for _ in dataloader:
            pass


def test_training_on_faulty_shards_counts_every_fault_in_tensorboard_and_goes_on(tmp_path):
    shards = make_faulty_shards(tmp_path)
    overrides = shard_overrides(tmp_path / "exp", shards, max_steps=18, extra=[
        "trainer.max_epochs=1",
        "model.data.webdataset.shuffle_buffer=0",
        "model.data.max_bad_fraction=0.2",
        "model.data.bad_fraction_min_samples=60",
    ])
    run_example("train.py", "--config-name", "base64-500m-edm", *overrides)
    scalars = tensorboard_scalars(tmp_path / "exp")
    for kind, count in EXPECTED.items():
        assert max(value for _, value in scalars[f"data/skipped_{kind}"]) == count, kind
    # 71 good samples = 36 micro batches = 18 optimizer steps: the whole epoch was trained on
    assert max(value for _, value in scalars["global_step"]) == 17
    final_fraction = max(scalars["data/bad_fraction"])[1]  # the value logged at the last step
    assert final_fraction == pytest.approx(9 / (GOOD + 9))


def test_training_stops_past_the_bad_fraction_with_the_message(tmp_path):
    overrides = shard_overrides(tmp_path / "exp", make_faulty_shards(tmp_path), max_steps=18, extra=[
        "trainer.max_epochs=1",
        "model.data.max_bad_fraction=0.05",
        "model.data.bad_fraction_min_samples=20",
    ])
    result = run_example("train.py", "--config-name", "base64-500m-edm", *overrides, check=False)
    assert result.returncode == 3, result.stderr[-3000:]
    assert "error: the run stopped: data:" in result.stderr
    assert "more than model.data.max_bad_fraction = 0.05" in result.stderr
