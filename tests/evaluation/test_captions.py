"""Captions: the three file kinds and the seeded draw."""
import io
import json
import tarfile

import numpy as np
import pytest

from nemo_imagen.evaluation.captions import draw_captions, read_captions


def test_reads_coco_json_text_file_and_shards(tmp_path):
    coco = tmp_path / "captions_val2014.json"
    coco.write_text(json.dumps({"images": [], "annotations": [
        {"image_id": 1, "id": 7, "caption": "A man riding\n a horse. "}, {"image_id": 2, "id": 8, "caption": "Two dogs"}]}))
    text = tmp_path / "prompts.txt"
    text.write_text("a red circle\n\n  a blue square  \n")
    shard = tmp_path / "val-000000.tar"
    with tarfile.open(shard, "w") as archive:
        for key, caption in (("a", "first caption"), ("b", "second caption")):
            for suffix, data in (("txt", caption.encode()), ("jpg", b"not read")):
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    assert read_captions([str(coco), str(text), str(shard)]) == [
        "A man riding a horse.", "Two dogs", "a red circle", "a blue square", "first caption", "second caption"]


def test_bad_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="captions: .*missing.json"):
        read_captions([str(tmp_path / "missing.json")])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="no 'annotations' list"):
        read_captions([str(bad)])


def test_seeded_draw_is_reproducible_without_replacement():
    captions = [f"caption {index}" for index in range(1000)]
    first = draw_captions(captions, 300, seed=0)
    assert first == draw_captions(captions, 300, seed=0)
    assert len(set(first)) == 300
    assert first != draw_captions(captions, 300, seed=1)
    # the documented generator: numpy PCG64 choice without replacement
    assert first[:3] == [captions[i] for i in np.random.default_rng(0).choice(1000, 300, replace=False)[:3]]
    with pytest.raises(ValueError, match="num_images: 1001 is more than the 1000"):
        draw_captions(captions, 1001, seed=0)
