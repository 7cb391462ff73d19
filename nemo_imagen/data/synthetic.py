"""Random images and text embeddings, so every config can train and be benchmarked without data."""
from typing import Dict, Iterator, List

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info


def synthetic_text(token_length: int, embed_dim: int, generator: torch.Generator):
    """One sample's random text: (embedding [L, D], mask [L] bool) with a random number (1..L) of real tokens,
    each standard normal, and zeros in the padding tail (as an encoder's padded output)."""
    num_tokens = int(torch.randint(1, token_length + 1, (1,), generator=generator))
    text_embed = torch.zeros(token_length, embed_dim)
    text_embed[:num_tokens] = torch.randn(num_tokens, embed_dim, generator=generator)
    return text_embed, torch.arange(token_length) < num_tokens


def synthetic_text_batch(batch_size: int, token_length: int, embed_dim: int, generator: torch.Generator):
    """`synthetic_text` for a batch: (text_embed [B, L, D], text_mask [B, L] bool), drawn sample after sample."""
    embeds, masks = zip(*(synthetic_text(token_length, embed_dim, generator) for _ in range(batch_size)))
    return torch.stack(embeds), torch.stack(masks)


class SyntheticImageTextDataset(IterableDataset):
    """Yields `length` samples per rank: random images in [-1, 1] and random token embeddings.

    Each sample: `images` [C, R, R] at the largest of `resolutions` plus `images_{r}` [C, r, r] for every
    r (area-downsampled from the largest), the text embedding [L, D] under `out_key` and its mask [L] under
    `{out_key}_mask` (a random number of real tokens, at least one), `captions` (a placeholder naming the sample),
    `sample_keys` (`synthetic/{index}`: the sample's identity, which keys its training noise).
    """

    def __init__(
        self,
        resolutions: List[int],
        channels: int,
        token_length: int,
        embed_dim: int,
        length: int,
        seed: int = 1234,
        rank: int = 0,
        world_size: int = 1,
        out_key: str = "t5_text",
    ):
        super().__init__()
        self.out_key = out_key
        self.resolutions = sorted(resolutions)
        self.channels = channels
        self.token_length = token_length
        self.embed_dim = embed_dim
        self.length = length
        self.seed = seed
        self.rank = rank
        self.world_size = world_size

    def __iter__(self) -> Iterator[Dict]:
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        stream = self.rank * num_workers + worker_id
        streams = self.world_size * num_workers
        for index in range(stream, self.length * self.world_size, streams):
            yield self._sample(index)

    def _sample(self, index: int) -> Dict:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        top = self.resolutions[-1]
        image = torch.rand(self.channels, top, top, generator=generator) * 2 - 1
        text_embed, text_mask = synthetic_text(self.token_length, self.embed_dim, generator)
        sample = {
            "images": image,
            self.out_key: text_embed,
            f"{self.out_key}_mask": text_mask,
            "captions": f"synthetic sample {index}",
            "sample_keys": f"synthetic/{index}",
        }
        for resolution in self.resolutions:
            factor = top // resolution
            sample[f"images_{resolution}"] = torch.nn.functional.avg_pool2d(image[None], factor)[0]
        return sample


class SyntheticDataLoader(DataLoader):
    """``DataLoader`` with the resume interface of ``ImagenDataLoader``: every epoch yields the same
    deterministic batches, and ``set_epoch(epoch, skip_batches)`` drops the first batches of the next one."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._skip_batches = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self._skip_batches = skip_batches

    def __iter__(self):
        skip, self._skip_batches = self._skip_batches, 0
        batches = super().__iter__()
        for _ in range(skip):
            next(batches, None)
        return batches


def build_synthetic_dataloader(
    resolutions: List[int],
    channels: int,
    token_length: int,
    embed_dim: int,
    micro_batch_size: int,
    length: int,
    num_workers: int = 0,
    seed: int = 1234,
    rank: int = 0,
    world_size: int = 1,
    out_key: str = "t5_text",
) -> DataLoader:
    dataset = SyntheticImageTextDataset(
        resolutions, channels, token_length, embed_dim, length, seed, rank, world_size, out_key
    )
    return SyntheticDataLoader(dataset, batch_size=micro_batch_size, num_workers=num_workers, drop_last=True)
