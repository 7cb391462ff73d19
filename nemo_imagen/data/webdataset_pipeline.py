"""The webdataset training pipeline: shards -> split over ranks and workers -> shuffle -> decode -> batches.

``build_train_dataloader`` is the entry point. Each dataloader worker assembles whole batches (so it can
attach the count of samples it dropped since its previous batch, ``batch["skipped"]``); the
``DataLoader`` runs with ``batch_size=None``.

Splitting (``shards.partition_shards``): shards are dealt to data-parallel ranks, then to a rank's workers;
where a level has fewer shards than parts, each part reads them all and keeps every n-th sample instead.
So any number of shards works with any number of ranks and workers, and the ranks x workers partitions
are disjoint and cover the data. In finite mode each worker reads its partition once per epoch, so ranks
can get different numbers of batches when shard sizes or counts are uneven (use ``infinite_sampler`` for
multi-GPU runs bounded by ``max_steps``). In infinite mode each worker draws shards of its partition at
random with replacement, forever.
"""
import logging
import math
import random
import signal
import time
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from nemo_imagen.data.samples import SKIP_KINDS, SampleDecoder, SampleError, collate
from nemo_imagen.data.shards import Partition, ShardReadError, expand_shard_paths, iter_shard, partition_shards
from nemo_imagen.data.transforms import ImageTransform
from nemo_imagen.text.config import SERVER
from nemo_imagen.text.embedding_client import EmbeddingClient, build_embedding_client

logger = logging.getLogger(__name__)

_INDIVIDUAL_WARNINGS = 20  # per worker and epoch, each naming its shard and sample key
_SUMMARY_EVERY = 1000  # afterwards, one warning with the totals every this many skips
_MAIN_LOG_INTERVAL_S = 60.0  # the main process logs the running totals at most this often


class SkipCounter:
    """Counts the samples one worker drops and logs them (rate-limited)."""

    def __init__(self, where: str):
        self.where = where
        self.pending = dict.fromkeys(SKIP_KINDS, 0)
        self.total = dict.fromkeys(SKIP_KINDS, 0)
        self.count = 0

    def record(self, kind: str, shard: str, key: Optional[str], message: str) -> None:
        self.pending[kind] += 1
        self.total[kind] += 1
        self.count += 1
        if self.count <= _INDIVIDUAL_WARNINGS:
            sample = f"sample {key!r} of " if key is not None else ""
            logger.warning("data (%s): skipped %sshard %s [%s]: %s", self.where, sample, shard, kind, message)
            if self.count == _INDIVIDUAL_WARNINGS:
                logger.warning(
                    "data (%s): %d samples skipped; further skips are logged as totals every %d",
                    self.where, self.count, _SUMMARY_EVERY,
                )
        elif self.count % _SUMMARY_EVERY == 0:
            logger.warning("data (%s): %d samples skipped so far: %s", self.where, self.count, _nonzero(self.total))

    def take(self) -> Dict[str, int]:
        """The counts since the previous ``take`` (every kind, zeros included); resets them."""
        taken, self.pending = self.pending, dict.fromkeys(SKIP_KINDS, 0)
        return taken


def _nonzero(counts: Dict[str, int]) -> Dict[str, int]:
    return {kind: n for kind, n in counts.items() if n}


def _worker_seed(seed: int, epoch: int, rank: int, worker_id: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank, worker_id]).generate_state(1, dtype=np.uint64)[0])


def _shuffled(items: Iterator, buffer_size: int, rng: random.Random) -> Iterator:
    """Shuffle a stream with a buffer of ``buffer_size`` items (each output drawn uniformly from the buffer)."""
    buffer: List = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        index = rng.randrange(buffer_size)
        yield buffer[index]
        buffer[index] = item
    rng.shuffle(buffer)
    yield from buffer


class ImagenWebDataset(IterableDataset):
    """Yields batches (see ``samples.collate``) of this rank's part of the shards.

    Args:
        shards: shard files (already expanded).
        decoder: sample entries -> tensors.
        micro_batch_size: samples per batch; in finite mode each worker's last batch of an epoch may be smaller.
        rank, world_size: data-parallel position.
        seed: base seed; shard order, shuffling and augmentations depend on (seed, epoch, rank, worker).
        infinite: resample shards forever instead of one pass per epoch.
        shuffle_buffer: samples in each worker's shuffle buffer (<= 1: no sample shuffling).
        embedding_client: when given (``online_encoding: server``), each batch's captions are embedded by the
            servers from inside the worker and the batch carries ``{out_key}`` and ``{out_key}_mask``.
        out_key: ``conditioning.out_key``.
    """

    def __init__(
        self,
        shards: Sequence[str],
        decoder: SampleDecoder,
        micro_batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 1234,
        infinite: bool = False,
        shuffle_buffer: int = 1000,
        embedding_client: Optional[EmbeddingClient] = None,
        out_key: str = "t5_text",
    ):
        super().__init__()
        if micro_batch_size <= 0:
            raise ValueError(f"micro_batch_size: {micro_batch_size} must be positive")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.shards = list(shards)
        self.decoder = decoder
        self.micro_batch_size = micro_batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.infinite = infinite
        self.shuffle_buffer = shuffle_buffer
        self.embedding_client = embedding_client
        self.out_key = out_key
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Selects the shard order, shuffling and augmentations of the next ``iter()``."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[Dict]:
        info = get_worker_info()
        worker_id, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        partition = partition_shards(self.shards, self.rank, self.world_size, worker_id, num_workers)
        where = f"rank {self.rank} worker {worker_id}"
        rng = random.Random(_worker_seed(self.seed, self.epoch, self.rank, worker_id))
        skips = SkipCounter(where)
        if self.embedding_client is not None:  # spread the workers of all ranks over the servers
            self.embedding_client.prefer(self.rank * num_workers + worker_id)
        stream = self._raw_samples(partition, rng, skips, where)
        if self.shuffle_buffer > 1:
            stream = _shuffled(stream, self.shuffle_buffer, rng)
        # Each batch is held back until the next one is ready, so that the skips after the last sample of the
        # epoch (e.g. an unreadable shard read last) are reported with the final batch instead of lost.
        samples, keys, produced, held = [], [], 0, None
        for shard, key, entries in stream:
            try:
                samples.append(self.decoder(entries, rng))
            except SampleError as error:
                skips.record(error.kind, shard, key, str(error))
                continue
            keys.append(f"{shard}/{key}")
            if len(samples) == self.micro_batch_size:
                produced += len(samples)
                if held is not None:
                    yield held
                held, samples, keys = self._batch(samples, keys, skips), [], []
        if samples:
            produced += len(samples)
            if held is not None:
                yield held
            held = self._batch(samples, keys, skips)
        if held is not None:
            for kind, count in skips.take().items():
                held["skipped"][kind] += count
            yield held
        level = logging.WARNING if skips.count else logging.INFO
        logger.log(
            level, "data (%s): epoch %d done: %d samples, %d skipped %s",
            where, self.epoch, produced, skips.count, _nonzero(skips.total),
        )

    def _batch(self, samples: List[Dict], keys: List[str], skips: SkipCounter) -> Dict:
        batch = collate(samples, skips.take())
        batch["sample_keys"] = keys
        if self.embedding_client is not None:
            batch[self.out_key], batch[f"{self.out_key}_mask"] = self.embedding_client.encode(batch["captions"])
        return batch

    def _raw_samples(
        self, partition: Partition, rng: random.Random, skips: SkipCounter, where: str
    ) -> Iterator[Tuple[str, str, Dict[str, bytes]]]:
        if not self.infinite:
            order = list(partition.shards)
            rng.shuffle(order)
            for shard in order:
                yield from self._read(shard, partition, skips)
            return
        limit = max(16, 4 * len(partition.shards))
        empty_reads = 0
        while True:
            found = False
            for item in self._read(rng.choice(partition.shards), partition, skips):
                found = True
                yield item
            empty_reads = 0 if found else empty_reads + 1
            if empty_reads >= limit:
                raise RuntimeError(
                    f"data ({where}): {limit} shard reads in a row gave this worker no samples; its shards "
                    f"{list(partition.shards)[:4]} are unreadable or hold fewer than {partition.stride} samples each"
                )

    @staticmethod
    def _read(shard: str, partition: Partition, skips: SkipCounter) -> Iterator[Tuple[str, str, Dict[str, bytes]]]:
        try:
            for index, (key, entries) in enumerate(iter_shard(shard)):
                if partition.owns(index):
                    yield shard, key, entries
        except ShardReadError as error:
            skips.record("read_shard", shard, None, str(error))


# Kinds that mean broken data, as opposed to samples removed on purpose by ``data.train.filterings``.
FAULT_KINDS = ("read_shard", "missing_key", "decode_image", "decode_caption", "bad_embedding")


class DataFaultError(RuntimeError):
    """The fraction of faulty samples passed ``data.max_bad_fraction``."""


def _ignore_stop_signals(worker_id: int) -> None:
    """Dataloader workers leave SIGUSR1 (SLURM's pre-emption warning, `--signal=USR1@120`, sent to every
    process of the job) to the training process, which checkpoints and then shuts them down. SIGTERM keeps its
    default: multiprocessing stops daemonic workers with it at exit, and a worker ignoring it hangs the exit of
    a run that failed (e.g. on a dead embedding server)."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def bad_fraction(samples: int, skipped: Dict[str, int]) -> float:
    """Faulty samples / samples read, from ``samples`` delivered and ``skipped`` counts per kind."""
    read = samples + sum(skipped.values())
    return sum(skipped.get(kind, 0) for kind in FAULT_KINDS) / read if read else 0.0


class ImagenDataLoader(DataLoader):
    """``DataLoader`` over an ``ImagenWebDataset`` (which yields whole batches).

    Each ``iter()`` starts a new epoch (``set_epoch`` chooses the next one and how many of its batches to
    skip, e.g. when resuming). The ``skipped`` counts of all batches are summed in ``skipped_total`` and
    logged from the main process, and the run stops with ``DataFaultError`` when more than
    ``max_bad_fraction`` of the samples read were faulty (checked from ``min_samples`` samples on).
    Each batch carries ``data_counts``, the run's totals up to and including it (``samples``, and
    ``skipped`` per kind): the model logs them and keeps the last trained batch's totals in its checkpoints
    (the loader itself runs a batch ahead of training).
    """

    def __init__(
        self, dataset: ImagenWebDataset, num_workers: int = 0, max_bad_fraction: float = 1.0, min_samples: int = 1000
    ):
        super().__init__(
            dataset,
            batch_size=None,
            num_workers=num_workers,
            pin_memory=torch.cuda.is_available(),
            worker_init_fn=_ignore_stop_signals if num_workers > 0 else None,
        )
        self.skipped_total = dict.fromkeys(SKIP_KINDS, 0)
        self.samples_total = 0
        self.max_bad_fraction = max_bad_fraction
        self.min_samples = min_samples
        self._next_epoch = 0
        self._skip_batches = 0
        self._last_log = -math.inf

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """The next ``iter()`` reads epoch ``epoch`` and drops its first ``skip_batches`` batches uncounted
        (they were consumed before a resume; the stream is deterministic, so the rest continues exactly)."""
        self._next_epoch = epoch
        self._skip_batches = skip_batches

    def restore_counts(self, samples: int, skipped: Dict[str, int]) -> None:
        """Continue the totals of a resumed run: samples delivered and samples skipped per kind."""
        self.samples_total = int(samples)
        self.skipped_total = {kind: int(skipped.get(kind, 0)) for kind in SKIP_KINDS}

    def __iter__(self) -> Iterator[Dict]:
        epoch, skip = self._next_epoch, self._skip_batches
        self.dataset.set_epoch(epoch)
        self._next_epoch, self._skip_batches = epoch + 1, 0
        return self._count_skips(super().__iter__(), epoch, skip)

    def _count_skips(self, batches: Iterator[Dict], epoch: int, skip: int) -> Iterator[Dict]:
        num_batches = num_samples = skipped_in_epoch = 0
        for batch in batches:
            num_batches += 1
            if num_batches <= skip:
                continue
            num_samples += len(batch["captions"])
            self.samples_total += len(batch["captions"])
            new = sum(batch["skipped"].values())
            if new:
                skipped_in_epoch += new
                for kind, n in batch["skipped"].items():
                    self.skipped_total[kind] += n
                now = time.monotonic()
                if now - self._last_log >= _MAIN_LOG_INTERVAL_S:
                    self._last_log = now
                    logger.warning(
                        "data: %d samples skipped so far: %s",
                        sum(self.skipped_total.values()), _nonzero(self.skipped_total),
                    )
                self._check_bad_fraction()
            batch["data_counts"] = {"samples": self.samples_total, "skipped": dict(self.skipped_total)}
            yield batch
        if skip > num_batches:
            raise DataFaultError(
                f"data: resuming epoch {epoch} at batch {skip}, but the epoch now has only {num_batches} batches; "
                "the shards changed since the checkpoint was written"
            )
        logger.info(
            "data: epoch %d: %d batches, %d samples, %d skipped in the batches' workers (all epochs: %s)",
            epoch, num_batches - skip, num_samples, skipped_in_epoch, _nonzero(self.skipped_total),
        )

    def bad_fraction(self) -> float:
        """Faulty samples / samples read (delivered + faulty), over the whole run."""
        return bad_fraction(self.samples_total, self.skipped_total)

    def _check_bad_fraction(self) -> None:
        read = self.samples_total + sum(self.skipped_total.values())
        fraction = self.bad_fraction()
        if read >= self.min_samples and fraction > self.max_bad_fraction:
            faults = {kind: self.skipped_total[kind] for kind in FAULT_KINDS if self.skipped_total[kind]}
            raise DataFaultError(
                f"data: {fraction:.1%} of the {read} samples read were faulty {faults}, more than "
                f"model.data.max_bad_fraction = {self.max_bad_fraction} (checked from "
                f"model.data.bad_fraction_min_samples = {self.min_samples} samples on); the warnings above name "
                "the shards and samples. Fix or drop those shards, or raise max_bad_fraction"
            )


def build_train_dataloader(
    data_cfg, cond_cfg, micro_batch_size: int, *, rank: int = 0, world_size: int = 1, seed: int = 1234
) -> ImagenDataLoader:
    """The training dataloader of one data-parallel rank.

    Args:
        data_cfg: ``DataConfig`` (``model.data``), or a DictConfig of the same shape.
        cond_cfg: ``ConditioningConfig`` (``model.conditioning``): with ``online_encoding`` False the
            samples must carry ``{precached_key}.npy`` (read and padded/trimmed to ``token_length``);
            with True only captions are read; with ``server`` each worker also embeds its batches' captions
            through ``text.embedding_client`` (``conditioning.server_urls``).
        micro_batch_size: B.
        rank, world_size: data-parallel position (each rank reads a disjoint part of the data).
        seed: base seed of shard order, shuffling and augmentations.

    Returns:
        An ``ImagenDataLoader`` yielding dicts: ``images`` ``[B, 3, R, R]`` in [-1, 1]
        (R = max target resolution), ``images_{r}`` ``[B, 3, r, r]`` for every r in
        ``data.train.target_resolutions`` (bicubic downsamples of ``images``; ``images_{R}`` is
        ``images``), ``captions`` (B str), ``{out_key}`` ``[B, L, D]`` float32 and ``{out_key}_mask``
        ``[B, L]`` bool (precached or server embeddings), ``sample_keys`` (B str ``{shard}/{key}``: which sample
        each row is; keys the training noise), ``skipped`` ``{kind: count}`` (samples the
        producing worker dropped since its previous batch; kinds in ``samples.SKIP_KINDS``).

    Raises:
        ValueError / FileNotFoundError: bad settings or a missing shard (the message names the key).
    """
    if data_cfg.synthetic_data:
        raise ValueError("data.synthetic_data: is True; build the synthetic dataloader (nemo_imagen.data.synthetic)")
    train = data_cfg.train
    shards = expand_shard_paths(list(train.dataset_path))
    augment = train.augmentations
    transform = ImageTransform(
        list(train.target_resolutions), augment.resize_smallest_side, augment.random_crop, augment.horizontal_flip
    )
    resolution = train.filterings.resolution if train.filterings is not None else None
    resolution_filter = (resolution.method, resolution.value) if resolution is not None else None
    precached_key = None if cond_cfg.online_encoding else cond_cfg.precached_key
    if not cond_cfg.online_encoding and not precached_key:
        raise ValueError("conditioning.precached_key: must be set to read precached embeddings (or set online_encoding)")
    decoder = SampleDecoder(
        transform, resolution_filter, precached_key, cond_cfg.embed_dim, cond_cfg.token_length, cond_cfg.out_key
    )
    dataset = ImagenWebDataset(
        shards,
        decoder,
        micro_batch_size,
        rank=rank,
        world_size=world_size,
        seed=seed,
        infinite=data_cfg.webdataset.infinite_sampler,
        shuffle_buffer=data_cfg.webdataset.shuffle_buffer,
        embedding_client=build_embedding_client(cond_cfg),
        out_key=cond_cfg.out_key,
    )
    logger.info(
        "data: rank %d/%d reads %d shards (%s) with %d workers, %s mode, target resolutions %s, %s",
        rank, world_size, len(shards), shards[0] if len(shards) == 1 else f"{shards[0]} ... {shards[-1]}",
        data_cfg.num_workers, "infinite" if data_cfg.webdataset.infinite_sampler else "finite",
        list(train.target_resolutions),
        f"embeddings from {precached_key}.npy" if precached_key
        else f"captions embedded by the servers {list(cond_cfg.server_urls)}" if cond_cfg.online_encoding == SERVER
        else "captions only (online encoding)",
    )
    return ImagenDataLoader(
        dataset,
        num_workers=data_cfg.num_workers,
        max_bad_fraction=data_cfg.max_bad_fraction,
        min_samples=data_cfg.bad_fraction_min_samples,
    )
