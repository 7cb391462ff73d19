"""Sharded, resumable generation with a stand-in generator whose pixels encode what made them."""
import numpy as np
import pytest
from PIL import Image

from nemo_imagen.evaluation.generation import generate_images, image_path, shard_batches

CAPTIONS = [f"caption {index}" for index in range(23)]


def fake_generator(calls):
    def generate_batch(captions, batch_index):
        calls.append(batch_index)
        # pixel value = position in batch + 10 * batch index: any change of batching would show
        return np.stack([np.full((4, 4, 3), position + 10 * batch_index, np.uint8) for position in range(len(captions))])
    return generate_batch


def pixels(directory):
    return {path.name: np.asarray(Image.open(path)).copy() for path in sorted(directory.glob("*.png"))}


@pytest.mark.parametrize("num_batches, num_shards", [(6, 2), (6, 4), (5, 5), (3, 7)])
def test_shards_partition_the_batches(num_batches, num_shards):
    blocks = [shard_batches(num_batches, shard, num_shards) for shard in range(num_shards)]
    assert [b for block in blocks for b in block] == list(range(num_batches))
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
    with pytest.raises(ValueError, match="shard: 2"):
        shard_batches(num_batches, 2, 2)


def test_shards_add_up_to_the_unsharded_run_and_reruns_skip(tmp_path):
    calls = []
    whole = generate_images(tmp_path / "whole", CAPTIONS, fake_generator(calls), batch_size=5)
    assert (whole.generated, whole.skipped, calls) == (23, 0, [0, 1, 2, 3, 4])
    for shard in range(3):
        generate_images(tmp_path / "sharded", CAPTIONS, fake_generator([]), batch_size=5, shard=shard, num_shards=3)
    whole_pixels, sharded_pixels = pixels(tmp_path / "whole"), pixels(tmp_path / "sharded")
    assert sorted(sharded_pixels) == sorted(whole_pixels) == [f"{i:06d}.png" for i in range(23)]
    assert all(np.array_equal(whole_pixels[name], sharded_pixels[name]) for name in whole_pixels)
    assert int(pixels(tmp_path / "whole")["000017.png"][0, 0, 0]) == 2 + 10 * 3

    calls.clear()
    rerun = generate_images(tmp_path / "whole", CAPTIONS, fake_generator(calls), batch_size=5)
    assert (rerun.generated, rerun.skipped, calls) == (0, 23, [])
    image_path(tmp_path / "whole", 12).unlink()  # a lost file: only its batch runs again, only it is written
    before = image_path(tmp_path / "whole", 11).stat().st_mtime_ns
    resumed = generate_images(tmp_path / "whole", CAPTIONS, fake_generator(calls), batch_size=5)
    assert (resumed.generated, resumed.skipped, calls) == (1, 22, [2])
    assert image_path(tmp_path / "whole", 11).stat().st_mtime_ns == before
    assert int(np.asarray(Image.open(image_path(tmp_path / "whole", 12)))[0, 0, 0]) == 2 + 10 * 2
