"""Webdataset shards: expanding ``dataset_path``, reading a shard's samples, splitting shards over ranks and workers.

A shard is a ``.tar`` file whose members ``<key>.<ext>`` are grouped into samples by key (webdataset's
convention: consecutive members with the same key form one sample, the extension starts at the first
dot of the file name).
"""
import os
import tarfile
from dataclasses import dataclass
from typing import Dict, Iterator, List, Sequence, Tuple, Union

from webdataset.shardlists import expand_urls
from webdataset.tariterators import base_plus_ext


class ShardReadError(OSError):
    """A shard could not be opened or its tar stream is corrupt; samples before the damage were yielded."""


def expand_shard_paths(dataset_path: Union[str, Sequence[str]], key: str = "data.train.dataset_path") -> List[str]:
    """Expand brace patterns (``train-{000000..000009}.tar``) and check that every shard exists.

    Args:
        dataset_path: one pattern or a list of patterns / file paths.
        key: the config key named in errors.

    Returns:
        The shard files, in the order given.

    Raises:
        ValueError: nothing to expand. FileNotFoundError: shards are missing (the message names them).
    """
    patterns = [dataset_path] if isinstance(dataset_path, str) else list(dataset_path)
    if not patterns:
        raise ValueError(f"{key}: is empty; list the webdataset shards to train on (brace patterns allowed)")
    paths, missing = [], []
    for pattern in patterns:
        for path in expand_urls(str(pattern)):
            if not os.path.isfile(path):
                missing.append(repr(path) if path == pattern else f"{path!r} (from {pattern!r})")
            paths.append(path)
    if missing:
        listed = ", ".join(missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise FileNotFoundError(f"{key}: {len(missing)} of {len(paths)} shards do not exist: {listed}{more}")
    return paths


def iter_shard(path: str) -> Iterator[Tuple[str, Dict[str, bytes]]]:
    """Read one shard sequentially.

    Yields:
        ``(key, entries)`` per sample in tar order, ``entries`` mapping the extension as stored
        (``jpg``, ``txt``, ``embeddings_t5_xxl.npy``, ...) to the member's bytes.

    Raises:
        ShardReadError: the file cannot be opened or the tar stream is damaged (after yielding the
            samples before the damage; the sample being assembled at that point is lost).
    """
    key, entries = None, {}
    try:
        with open(path, "rb") as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                if not member.isreg():
                    continue
                prefix, ext = base_plus_ext(member.name)
                if prefix is None:
                    continue
                if prefix != key:  # a new sample starts: the previous one is complete, hand it out first
                    if key is not None:
                        yield key, entries
                    key, entries = prefix, {}
                entries[ext] = tar.extractfile(member).read()
                tar.members = []  # a streamed TarFile otherwise keeps every member's header
    except (OSError, tarfile.TarError, EOFError) as error:
        after = f" while reading sample {key!r}" if key is not None else ""
        raise ShardReadError(f"shard {path!r} is unreadable{after}: {type(error).__name__}: {error}") from None
    if key is not None:
        yield key, entries


@dataclass(frozen=True)
class Partition:
    """The part of the data one dataloader worker of one rank owns.

    It reads ``shards`` and, in each, keeps the samples whose position in the shard ``i`` (counting
    every sample, good or bad) satisfies ``i % stride == offset``.
    """

    shards: Tuple[str, ...]
    stride: int
    offset: int

    def owns(self, index: int) -> bool:
        return index % self.stride == self.offset


def partition_shards(shards: Sequence[str], rank: int, world_size: int, worker_id: int, num_workers: int) -> Partition:
    """Split the data over data-parallel ranks, then over a rank's dataloader workers.

    At each level, shards are dealt round-robin (``shards[rank::world_size]``, then
    ``rank_shards[worker_id::num_workers]``) when there are at least as many shards as parts; otherwise
    every part reads all the shards of the level above and keeps every ``parts``-th sample
    (a sample-level split: more reading, same result). Either way, the ``world_size * num_workers``
    partitions are disjoint and together cover every sample exactly once.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    if not 0 <= worker_id < num_workers:
        raise ValueError(f"worker_id {worker_id} is not in [0, {num_workers})")
    if not shards:
        raise ValueError("partition_shards: no shards")
    stride, offset = 1, 0
    for part, parts in ((rank, world_size), (worker_id, num_workers)):
        if len(shards) >= parts:
            shards = shards[part::parts]
        else:
            offset += stride * part
            stride *= parts
    return Partition(tuple(shards), stride, offset)
