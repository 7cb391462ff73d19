import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from webdataset import TarWriter

from nemo_imagen.data.webdataset_pipeline import build_train_dataloader
from nemo_imagen.data.demo import make_demo_dataset
from nemo_imagen.data.precache import PARTIAL_SUFFIX, precache_embeddings
from nemo_imagen.data.shards import iter_shard
from nemo_imagen.text.config import ConditioningConfig

REPO = Path(__file__).resolve().parents[2]
KEY = "embeddings_minilm"


@pytest.fixture(scope="module")
def source_shards(tmp_path_factory):
    """Two demo shards of 6 samples, the second with one caption removed."""
    directory = tmp_path_factory.mktemp("source")
    shards = make_demo_dataset(str(directory), num_samples=12, samples_per_shard=6, seed=5, num_val_samples=0)["train"]
    samples = list(iter_shard(shards[1]))
    del samples[2][1]["txt"]
    with TarWriter(shards[1], encoder=False) as writer:
        for key, entries in samples:
            writer.write({"__key__": key, **entries})
    return shards


@pytest.fixture(scope="module")
def precached(source_shards, minilm, tmp_path_factory):
    out = tmp_path_factory.mktemp("precached")
    summary = precache_embeddings(
        source_shards, str(out), precached_key=KEY, token_length=32, batch_size=4, encoder=minilm, progress=False
    )
    return out, summary


def test_writes_a_copy_of_every_sample_with_the_embedding_added(source_shards, precached):
    out, summary = precached
    assert [Path(p).name for p in summary.written] == ["train-000000.tar", "train-000001.tar"]
    assert (summary.samples, summary.without_caption, summary.failed) == (12, 1, [])
    assert not list(out.glob(f"*{PARTIAL_SUFFIX}"))
    for source in source_shards:
        before, after = list(iter_shard(source)), list(iter_shard(str(out / Path(source).name)))
        assert [k for k, _ in before] == [k for k, _ in after]
        for (_, old), (_, new) in zip(before, after):
            assert {k: v for k, v in new.items() if k != f"{KEY}.npy"} == old  # every entry byte-identical
            assert (f"{KEY}.npy" in new) == ("txt" in old)


@pytest.mark.parametrize("token_length", [32, 8])
def test_loader_reads_exactly_what_the_tool_wrote(precached, minilm, kit, token_length):
    """Written with token_length 32: a config with 32 gets TextEncoder.encode(captions, 32); one with 8 gets
    its first 8 positions (trimmed, not re-encoded)."""
    out, _ = precached
    cond = ConditioningConfig(embed_dim=384, token_length=token_length, precached_key=KEY)
    loader = build_train_dataloader(kit.data_config(sorted(map(str, out.glob("*.tar"))), num_workers=2), cond, 4)
    seen, skipped = 0, 0
    for batch in loader:
        embed, mask = minilm.encode(batch["captions"], 32)
        embed, mask = embed[:, :token_length], mask[:, :token_length]
        torch.testing.assert_close(batch["t5_text"], embed, rtol=2e-3, atol=2e-3)  # float16 storage
        assert torch.equal(batch["t5_text_mask"], mask)
        assert batch["t5_text_mask"].sum() > 0
        seen += len(batch["captions"])
        skipped += batch["skipped"]["missing_key"]
    assert (seen, skipped) == (11, 1)  # the caption-less sample is skipped by the loader, counted


def test_rerun_skips_finished_shards_without_loading_an_encoder(source_shards, precached):
    out, _ = precached
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    summary = precache_embeddings(source_shards, str(out), encoder_path=None, precached_key=KEY, progress=False)
    assert summary.written == [] and len(summary.already_done) == 2
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.tar")} == mtimes


def test_rerun_redoes_only_the_missing_shard_and_replaces_a_stale_partial(source_shards, minilm, tmp_path):
    summary = precache_embeddings(source_shards[:1], str(tmp_path), precached_key=KEY, encoder=minilm, progress=False)
    done = tmp_path / "train-000000.tar"
    mtime = done.stat().st_mtime_ns
    (tmp_path / f"train-000001.tar{PARTIAL_SUFFIX}").write_bytes(b"left by a killed run")
    summary = precache_embeddings(source_shards, str(tmp_path), precached_key=KEY, encoder=minilm, progress=False)
    assert [Path(p).name for p in summary.written] == ["train-000001.tar"]
    assert done.stat().st_mtime_ns == mtime
    assert len(list(iter_shard(str(tmp_path / "train-000001.tar")))) == 6
    assert not (tmp_path / f"train-000001.tar{PARTIAL_SUFFIX}").exists()


def test_a_damaged_input_shard_gives_no_output_and_is_reported(source_shards, minilm, tmp_path):
    damaged = tmp_path / "in" / "damaged.tar"
    damaged.parent.mkdir()
    data = Path(source_shards[0]).read_bytes()
    damaged.write_bytes(data[: len(data) // 2])
    summary = precache_embeddings([str(damaged)], str(tmp_path / "out"), precached_key=KEY, encoder=minilm, progress=False)
    assert summary.failed == [str(damaged)] and summary.written == [] and summary.samples == 0
    assert os.listdir(tmp_path / "out") == []


def test_refuses_to_overwrite_its_input(source_shards, minilm):
    with pytest.raises(ValueError, match="overwrite its input"):
        precache_embeddings(source_shards, str(Path(source_shards[0]).parent), encoder=minilm, progress=False)


def test_cli_on_finished_output_skips_everything(source_shards, precached):
    out, _ = precached
    result = subprocess.run(
        [sys.executable, str(REPO / "examples/precache_embeddings.py"), "--input", *source_shards,
         "--output_dir", str(out), "--encoder_path", "all-MiniLM-L6-v2", "--precached_key", KEY],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "written 0 shards" in result.stdout and "already done 2" in result.stdout
