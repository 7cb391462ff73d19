import collections
import io
import itertools
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from nemo_imagen.data.config import AugmentationConfig, FilteringConfig, ResolutionFilterConfig
from nemo_imagen.data.webdataset_pipeline import build_train_dataloader
from nemo_imagen.data.samples import SKIP_KINDS
from nemo_imagen.text.embedding_format import encode_embedding, sample_key


def collect(loader, max_batches=None):
    """All batches of one pass (or the first ``max_batches``), and the summed skip counts."""
    batches = list(itertools.islice(loader, max_batches))
    skipped = collections.Counter()
    for batch in batches:
        skipped.update(batch["skipped"])
    return batches, {kind: n for kind, n in skipped.items() if n}


def captions_of(batches):
    return [caption for batch in batches for caption in batch["captions"]]


def test_batches_follow_the_model_contract(tmp_path, kit):
    paths, captions = kit.write_good_shards(tmp_path, num_shards=1, per_shard=6)
    loader = build_train_dataloader(kit.data_config(paths), kit.cond_config(token_length=4), micro_batch_size=4)
    batches, skipped = collect(loader)
    assert skipped == {}
    assert [len(b["captions"]) for b in batches] == [4, 2]  # the last batch of a finite epoch is partial
    batch = batches[0]
    assert set(batch) == {
        "images", "images_64", "captions", "t5_text", "t5_text_mask", "skipped", "sample_keys", "data_counts"
    }
    assert [b["data_counts"]["samples"] for b in batches] == [4, 6]  # the run's totals up to each batch
    assert batch["sample_keys"] == [f"{paths[0]}/{caption.split()[1]}" for caption in batch["captions"]]
    assert batch["images"] is batch["images_64"]
    assert batch["images"].shape == (4, 3, 64, 64) and batch["images"].dtype == torch.float32
    assert batch["images"].min() >= -1 and batch["images"].max() <= 1
    assert batch["t5_text"].shape == (4, 4, kit.EMBED_DIM) and batch["t5_text"].dtype == torch.float32
    assert batch["t5_text_mask"].dtype == torch.bool
    assert set(batch["skipped"]) == set(SKIP_KINDS)
    # Sample s0_i holds 3 tokens of value i + token position, padded to 4 with a False mask.
    for row, caption in enumerate(batch["captions"]):
        index = int(caption.split("_")[1])
        expected = torch.tensor([index, index + 1, index + 2, 0], dtype=torch.float32)
        torch.testing.assert_close(batch["t5_text"][row, :, 0], expected)
        assert batch["t5_text_mask"][row].tolist() == [True, True, True, False]
    # Colour of sample i is (10 i, 100, 200): the decoded image carries it, scaled to [-1, 1].
    red = batch["images"][:, 0].mean(dim=(1, 2))
    expected_red = torch.tensor([int(c.split("_")[1]) * 10 / 127.5 - 1 for c in batch["captions"]])
    torch.testing.assert_close(red, expected_red, atol=0.02, rtol=0)
    assert sorted(captions_of(batches)) == sorted(captions)


def bad_samples(kit):
    """One sample per skip kind, as (kind, sample)."""
    truncated = kit.good_sample("bad_jpeg", 50)
    truncated["jpg"] = truncated["jpg"][: len(truncated["jpg"]) // 2]
    no_caption = kit.good_sample("no_caption", 51)
    del no_caption["txt"]
    wrong_width = kit.good_sample("wrong_width", 52)
    wrong_width[sample_key(kit.PRECACHED_KEY)] = encode_embedding(np.ones((3, kit.EMBED_DIM + 1), np.float32))
    not_utf8 = kit.good_sample("not_utf8", 53)
    not_utf8["txt"] = b"\xff\xfe caption"
    small = kit.good_sample("small", 54, size=(32, 48))
    return [
        ("decode_image", truncated),
        ("missing_key", no_caption),
        ("bad_embedding", wrong_width),
        ("decode_caption", not_utf8),
        ("resolution_filter", small),
    ]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_bad_samples_are_skipped_counted_and_logged(tmp_path, kit, caplog, num_workers):
    good = [kit.good_sample(f"good{i}", i) for i in range(8)]
    bad = bad_samples(kit)
    samples = good[:2] + [sample for _, sample in bad[:3]] + good[2:5] + [sample for _, sample in bad[3:]] + good[5:]
    path = kit.write_shard(tmp_path / "mixed.tar", samples)
    cfg = kit.data_config(
        [path],
        num_workers=num_workers,
        shuffle_buffer=4,
        filterings=FilteringConfig(resolution=ResolutionFilterConfig(method="larger", value=64)),
    )
    loader = build_train_dataloader(cfg, kit.cond_config(), micro_batch_size=3)
    with caplog.at_level(logging.WARNING, logger="nemo_imagen.data"):
        batches, skipped = collect(loader)
    assert sorted(captions_of(batches)) == sorted(f"caption good{i}" for i in range(8))
    assert skipped == {kind: 1 for kind, _ in bad}
    assert {k: n for k, n in loader.skipped_total.items() if n} == skipped
    if num_workers == 0:  # worker processes' log records do not reach caplog
        for kind, sample in bad:
            assert any(
                sample["__key__"] in r.getMessage() and "mixed.tar" in r.getMessage() and kind in r.getMessage()
                for r in caplog.records
            ), f"no warning names {sample['__key__']}"


def test_an_unreadable_shard_is_counted_and_the_others_still_read(tmp_path, kit):
    paths, captions = kit.write_good_shards(tmp_path, num_shards=2, per_shard=3)
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"this is not a tar file" * 100)
    loader = build_train_dataloader(kit.data_config(paths + [str(broken)]), kit.cond_config(), micro_batch_size=2)
    batches, skipped = collect(loader)
    assert sorted(captions_of(batches)) == sorted(captions)
    assert skipped == {"read_shard": 1}


def test_an_image_smaller_than_the_crop_is_skipped_without_resize(tmp_path, kit):
    samples = [kit.good_sample("ok", 1, size=(70, 64)), kit.good_sample("tiny", 2, size=(40, 40))]
    path = kit.write_shard(tmp_path / "a.tar", samples)
    cfg = kit.data_config([path], augmentations=AugmentationConfig(resize_smallest_side=None, center_crop_h_w="64, 64"))
    batches, skipped = collect(build_train_dataloader(cfg, kit.cond_config(), micro_batch_size=2))
    assert captions_of(batches) == ["caption ok"]
    assert skipped == {"too_small": 1}


def caption_sets_per_rank(paths, kit, world_size, num_workers, epoch_passes=1):
    per_rank = []
    for rank in range(world_size):
        loader = build_train_dataloader(
            kit.data_config(paths, num_workers=num_workers, shuffle_buffer=3),
            kit.cond_config(),
            micro_batch_size=2,
            rank=rank,
            world_size=world_size,
        )
        per_rank.append([captions_of(collect(loader)[0]) for _ in range(epoch_passes)])
    return per_rank


@pytest.mark.parametrize("num_shards", [1, 5])  # 1: samples split at both levels; 5: shards dealt at both
def test_two_ranks_with_two_workers_see_disjoint_samples_covering_the_data(tmp_path, kit, num_shards):
    paths, captions = kit.write_good_shards(tmp_path, num_shards=num_shards, per_shard=12 // num_shards + 1)
    (rank0,), (rank1,) = caption_sets_per_rank(paths, kit, world_size=2, num_workers=2)
    assert len(rank0) == len(set(rank0)) and len(rank1) == len(set(rank1))
    assert not set(rank0) & set(rank1)
    assert sorted(rank0 + rank1) == sorted(captions)


def test_each_epoch_has_the_same_samples_in_a_new_order(tmp_path, kit):
    paths, captions = kit.write_good_shards(tmp_path, num_shards=3, per_shard=6)
    ((first, second),) = caption_sets_per_rank(paths, kit, world_size=1, num_workers=0, epoch_passes=2)
    assert sorted(first) == sorted(second) == sorted(captions)
    assert first != second


def test_infinite_mode_keeps_yielding_past_one_epoch(tmp_path, kit):
    paths, captions = kit.write_good_shards(tmp_path, num_shards=2, per_shard=5)
    loader = build_train_dataloader(kit.data_config(paths, infinite=True, shuffle_buffer=4), kit.cond_config(), micro_batch_size=4)
    batches, skipped = collect(loader, max_batches=15)
    seen = captions_of(batches)
    assert len(batches) == 15 and len(seen) == 60  # six epochs' worth of 10 samples, all in full batches
    assert set(seen) == set(captions)
    assert skipped == {}


def test_infinite_mode_with_only_unreadable_shards_raises_instead_of_hanging(tmp_path, kit):
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"garbage" * 100)
    loader = build_train_dataloader(kit.data_config([str(broken)], infinite=True), kit.cond_config(), micro_batch_size=2)
    with pytest.raises(RuntimeError, match="gave this worker no samples"):
        next(iter(loader))


def test_sr_batches_carry_the_bicubic_pyramid(tmp_path, kit):
    rng = np.random.default_rng(0)
    source = Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    source.save(buffer, format="PNG")
    sample = kit.good_sample("sr", 1)
    del sample["jpg"]
    sample["png"] = buffer.getvalue()
    path = kit.write_shard(tmp_path / "sr.tar", [sample])
    cfg = kit.data_config(
        [path],
        target_resolutions=[16, 32, 64],
        augmentations=AugmentationConfig(resize_smallest_side=64, center_crop_h_w="64, 64"),
    )
    (batch,), _ = collect(build_train_dataloader(cfg, kit.cond_config(), micro_batch_size=1))
    crop = source.resize((77, 64), Image.BICUBIC).crop((6, 0, 70, 64))  # 96 * 64 / 80 = 76.8 -> 77; (77 - 64) // 2 = 6
    assert batch["images"] is batch["images_64"]
    for r in (16, 32, 64):
        level = crop if r == 64 else crop.resize((r, r), Image.BICUBIC)
        expected = torch.from_numpy(np.asarray(level, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
        torch.testing.assert_close(batch[f"images_{r}"][0], expected)


def test_online_encoding_reads_captions_only(tmp_path, kit):
    sample = kit.good_sample("no_embedding", 1)
    del sample[sample_key(kit.PRECACHED_KEY)]
    path = kit.write_shard(tmp_path / "a.tar", [sample, kit.good_sample("with_embedding", 2)])
    cond = kit.cond_config(online_encoding=True, encoder_path="all-MiniLM-L6-v2")
    (batch,), skipped = collect(build_train_dataloader(kit.data_config([path]), cond, micro_batch_size=2))
    assert sorted(batch["captions"]) == ["caption no_embedding", "caption with_embedding"]
    assert "t5_text" not in batch and "t5_text_mask" not in batch
    assert skipped == {}


def test_build_names_missing_shards_and_refuses_synthetic_configs(tmp_path, kit):
    paths, _ = kit.write_good_shards(tmp_path, num_shards=1, per_shard=1)
    (tmp_path / "nope-0.tar").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"1 of 3 shards do not exist: '[^']*nope-1\.tar' \(from"):
        build_train_dataloader(kit.data_config(paths + [str(tmp_path / "nope-{0..1}.tar")]), kit.cond_config(), 2)
    cfg = kit.data_config(paths)
    cfg.synthetic_data = True
    with pytest.raises(ValueError, match="data.synthetic_data"):
        build_train_dataloader(cfg, kit.cond_config(), 2)


def test_entry_names_match_case_blind(tmp_path, kit):
    sample = kit.good_sample("upper", 1)
    sample["JPG"] = sample.pop("jpg")
    sample["Embeddings_Mixed.npy"] = sample.pop(sample_key(kit.PRECACHED_KEY))
    path = kit.write_shard(tmp_path / "a.tar", [sample])
    cond = kit.cond_config(precached_key="Embeddings_Mixed")
    (batch,), skipped = collect(build_train_dataloader(kit.data_config([path]), cond, micro_batch_size=1))
    assert batch["captions"] == ["caption upper"] and skipped == {}
    assert batch["t5_text_mask"][0].tolist() == [True, True, True, False]
