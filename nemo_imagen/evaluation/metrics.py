"""FID and CLIP score of a folder of generated images, against cached reference statistics."""
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from PIL import Image
from tqdm import tqdm

from nemo_imagen.evaluation.clip_score import ClipScorer
from nemo_imagen.evaluation.fid import FeatureStats, GaussianStats, frechet_distance, load_stats
from nemo_imagen.evaluation.generation import image_path
from nemo_imagen.evaluation.reference_images import centre_square, fingerprint, iter_reference_batches, list_reference_images, to_tensor


def _feature_dim(extractor, device) -> int:
    return extractor(torch.zeros(1, 3, 64, 64, dtype=torch.uint8, device=device)).shape[-1]


def reference_stats(
    paths: Sequence[str], resolution: int, extractor, cache_file, *, batch_size: int = 64, device="cpu"
) -> GaussianStats:
    """Feature statistics of the real images, computed once and kept in `cache_file`; recomputed when the
    reference set (names, file sizes), the resolution or the extractor differ from the cached ones."""
    entries = list_reference_images(paths)
    metadata = {"fingerprint": fingerprint(entries), "resolution": str(resolution), "extractor": extractor.name}
    cached = load_stats(cache_file, **metadata)
    if cached is not None:
        return cached
    stats = FeatureStats(_feature_dim(extractor, device))
    batches = iter_reference_batches(entries, resolution, batch_size)
    for batch in tqdm(batches, total=-(-len(entries) // batch_size), desc="reference features", unit="batch"):
        stats.add(extractor(batch.to(device)))
    stats.save(cache_file, **metadata)
    return load_stats(cache_file, **metadata)


@dataclass
class FolderScores:
    fid: float
    clip_score: float
    count: int


def score_folder(
    directory,
    captions: Sequence[str],
    reference: GaussianStats,
    extractor,
    clip: ClipScorer,
    *,
    resolution: int,
    batch_size: int = 64,
    device="cpu",
    desc: Optional[str] = None,
) -> FolderScores:
    """FID (features of the images at `resolution`) and mean CLIP cosine of `{directory}/{i:06d}.png` with
    caption i, for every caption; a missing image is an error naming it."""
    missing = [str(image_path(directory, i)) for i in range(len(captions)) if not image_path(directory, i).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} generated images missing, e.g. {missing[0]} (run the missing shards)")
    stats = FeatureStats(reference.mu.shape[0])
    similarity_sum = 0.0
    for start in tqdm(range(0, len(captions), batch_size), desc=desc or f"scoring {directory}", unit="batch"):
        indices = range(start, min(start + batch_size, len(captions)))
        images = []
        for index in indices:
            with Image.open(image_path(directory, index)) as image:
                images.append(image.convert("RGB"))
        stats.add(extractor(to_tensor([centre_square(image, resolution) for image in images]).to(device)))
        similarity_sum += float(clip.similarities(images, [captions[index] for index in indices]).sum())
    fid = frechet_distance(stats.mean, stats.cov, reference.mu, reference.sigma)
    return FolderScores(fid=fid, clip_score=similarity_sum / len(captions), count=len(captions))
