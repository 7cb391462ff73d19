"""Atomic checkpoint writes and the tidying of what a killed run leaves in its checkpoint directory."""
import pytest
import torch

from nemo_imagen.models import reliability
from nemo_imagen.models.reliability import AtomicCheckpointIO, tidy_checkpoint_dir


def test_a_crash_during_a_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "run--step=4-last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 4, "w": torch.arange(1000.0)}, path)
    real_save = torch.save

    def dying_save(obj, stream):
        real_save({"global_step": 5, "w": torch.zeros(100_000)}, stream)
        stream.flush()
        raise KeyboardInterrupt("killed in the middle of the write")

    monkeypatch.setattr(reliability.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"global_step": 5}, path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left either
    loaded = torch.load(path, weights_only=False)
    assert loaded["global_step"] == 4 and torch.equal(loaded["w"], torch.arange(1000.0))


def test_tidy_keeps_the_newest_complete_last_and_drops_temporaries(tmp_path):
    for step in (6, 8):
        torch.save({"global_step": step}, tmp_path / f"run--loss=0.5-step={step}-consumed_samples={4 * step}.0-last.ckpt")
    torch.save({"global_step": 8}, tmp_path / "run--loss=0.5-step=8-consumed_samples=32.0.ckpt")  # a top-k file
    (tmp_path / ".run--step=10-last.ckpt.tmp-1234").write_bytes(b"half")
    unfinished = tmp_path / "run--loss=0.5-step=10-consumed_samples=40.0-last.ckpt"
    torch.save({"global_step": 10}, unfinished)
    (tmp_path / "run--loss=0.5-step=10-consumed_samples=40.0-last-unfinished").write_text("")
    tidy_checkpoint_dir(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    # the unfinished step-10 file is left for NeMo (which removes it); of the complete ones step 8 wins
    assert names == [
        "run--loss=0.5-step=10-consumed_samples=40.0-last-unfinished",
        "run--loss=0.5-step=10-consumed_samples=40.0-last.ckpt",
        "run--loss=0.5-step=8-consumed_samples=32.0-last.ckpt",
        "run--loss=0.5-step=8-consumed_samples=32.0.ckpt",
    ]
