"""Captions for evaluation: read from a COCO captions JSON, a text file or webdataset shards; a seeded draw."""
import json
import tarfile
from pathlib import Path
from typing import List, Sequence

import numpy as np


def _clean(caption: str) -> str:
    return " ".join(caption.split())  # COCO captions hold stray newlines and double spaces


def read_captions(paths: Sequence[str]) -> List[str]:
    """All captions of `paths`, in order. Each path is one of:
    - a COCO-style JSON (`{"annotations": [{"caption": ...}, ...]}`, e.g. captions_val2014.json);
    - a webdataset shard `.tar` (every `.txt` member is one caption, in the tar's order);
    - a text file, one caption per line (empty lines skipped)."""
    captions: List[str] = []
    for path in paths:
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"captions: {path} not found")
        if file.suffix == ".json":
            data = json.loads(file.read_text(encoding="utf-8"))
            annotations = data.get("annotations") if isinstance(data, dict) else None
            if not isinstance(annotations, list):
                raise ValueError(f"captions: {path} has no 'annotations' list (expected COCO captions JSON)")
            found = [_clean(str(item.get("caption", ""))) for item in annotations if isinstance(item, dict)]
        elif file.suffix == ".tar":
            with tarfile.open(file) as archive:
                found = [
                    _clean(archive.extractfile(member).read().decode("utf-8", errors="replace"))
                    for member in archive.getmembers()
                    if member.isfile() and member.name.endswith(".txt")
                ]
        else:
            text = file.read_bytes().decode("utf-8", errors="replace")
            found = [_clean(line) for line in text.splitlines()]
        captions += [caption for caption in found if caption]
    if not captions:
        raise ValueError(f"captions: no captions found in {', '.join(map(str, paths))}")
    return captions


def draw_captions(captions: Sequence[str], num_images: int, seed: int) -> List[str]:
    """`num_images` captions drawn without replacement with numpy's PCG64 seeded by `seed`: the same
    arguments give the same list on every machine and numpy 1.17+."""
    if num_images <= 0:
        raise ValueError(f"num_images: must be positive, got {num_images}")
    if num_images > len(captions):
        raise ValueError(f"num_images: {num_images} is more than the {len(captions)} captions available")
    order = np.random.default_rng(seed).choice(len(captions), size=num_images, replace=False)
    return [captions[index] for index in order]
