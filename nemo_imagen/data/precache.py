"""Precache text embeddings: copy webdataset shards, adding each caption's encoder states.

For every input shard ``<dir>/<name>.tar`` this writes ``<output_dir>/<name>.tar`` with every entry of
every sample unchanged plus ``{precached_key}.npy`` (format: ``nemo_imagen.text.embedding_format``, the
module the training loader reads it with). A shard is written to ``<name>.tar.partial`` and renamed when
complete, so an existing output shard is always whole and a re-run skips it (the encoder is loaded only
if some shard is left to do). A repeated caption is encoded once (recent embeddings are kept, up to
``CACHE_BYTES``).

A sample without a readable caption is copied without an embedding (the loader then skips it as
``missing_key``) and counted. An input shard that cannot be read to its end produces no output and is
reported in ``PrecacheSummary.failed``.
"""
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

from tqdm import tqdm
from webdataset import TarWriter

from nemo_imagen.data.samples import CAPTION_EXTENSION
from nemo_imagen.data.shards import ShardReadError, expand_shard_paths, iter_shard
from nemo_imagen.text.embedding_format import encode_embedding, sample_key
from nemo_imagen.text.encoders import TextEncoder

logger = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
CACHE_BYTES = 256 * 2**20  # embeddings of repeated captions kept for reuse


@dataclass
class PrecacheSummary:
    """What a run did: output shards ``written`` now, ``already_done`` (skipped), input shards that
    ``failed`` to read, ``samples`` copied, of which ``without_caption`` got no embedding."""

    written: List[str] = field(default_factory=list)
    already_done: List[str] = field(default_factory=list)
    failed: List[str] = field(default_factory=list)
    samples: int = 0
    without_caption: int = 0


def output_paths(input_shards: Sequence[str], output_dir: str) -> List[str]:
    """``<output_dir>/<basename>`` of every input shard; raises ValueError on clashes or in-place writes."""
    outputs = [os.path.join(output_dir, os.path.basename(shard)) for shard in input_shards]
    seen: Dict[str, str] = {}
    for shard, out in zip(input_shards, outputs):
        if os.path.abspath(out) == os.path.abspath(shard):
            raise ValueError(f"precache: output {out!r} would overwrite its input; choose another output_dir")
        if out in seen:
            raise ValueError(f"precache: input shards {seen[out]!r} and {shard!r} would both be written to {out!r}")
        seen[out] = shard
    return outputs


def _caption(entries: Dict[str, bytes]) -> Optional[str]:
    try:
        return entries[CAPTION_EXTENSION].decode("utf-8").strip()
    except (KeyError, UnicodeDecodeError):
        return None


class _EmbeddingCache:
    """Encoded embeddings of recent captions (repeated captions are encoded once), at most ``max_bytes``."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.entries: "OrderedDict[str, bytes]" = OrderedDict()

    def get(self, caption: str) -> Optional[bytes]:
        data = self.entries.get(caption)
        if data is not None:
            self.entries.move_to_end(caption)
        return data

    def put(self, caption: str, data: bytes) -> None:
        if caption in self.entries or len(data) > self.max_bytes:
            return
        self.entries[caption] = data
        self.bytes += len(data)
        while self.bytes > self.max_bytes:
            _, evicted = self.entries.popitem(last=False)
            self.bytes -= len(evicted)


def _write_batch(
    writer: TarWriter,
    batch: List[Tuple[str, Dict[str, bytes]]],
    encoder: TextEncoder,
    cache: _EmbeddingCache,
    entry: str,
    token_length: int,
    shard: str,
    summary: PrecacheSummary,
) -> None:
    captions = [_caption(entries) for _, entries in batch]
    embeddings = {caption: cache.get(caption) for caption in captions if caption is not None}
    missing = [caption for caption, data in embeddings.items() if data is None]
    for caption, tokens in zip(missing, encoder.encode_tokens(missing, token_length) if missing else []):
        embeddings[caption] = encode_embedding(tokens)
        cache.put(caption, embeddings[caption])
    for caption, (key, entries) in zip(captions, batch):
        sample = dict(entries)
        if caption is not None:
            sample[entry] = embeddings[caption]
        else:
            summary.without_caption += 1
            logger.warning("precache: sample %r of %s has no readable caption; copied without an embedding", key, shard)
        writer.write({"__key__": key, **sample})
    summary.samples += len(batch)


def precache_embeddings(
    input_shards: Union[str, Sequence[str]],
    output_dir: str,
    encoder_path: Optional[str] = None,
    *,
    precached_key: str = "embeddings_t5_xxl",
    token_length: int = 128,
    batch_size: int = 64,
    device: str = "cpu",
    encoder: Optional[TextEncoder] = None,
    progress: bool = True,
) -> PrecacheSummary:
    """Write copies of ``input_shards`` carrying each caption's embedding under ``precached_key``.

    Args:
        input_shards: shard paths or brace patterns (``data/train-{000000..000009}.tar``).
        output_dir: where the new shards go (same file names); created if missing.
        encoder_path: ``TextEncoder.from_path`` argument: a local Hugging Face directory (e.g. a T5
            encoder) or ``all-MiniLM-L6-v2``. Not needed when ``encoder`` is given.
        precached_key: the sample entry is ``{precached_key}.npy``; set ``conditioning.precached_key``
            to the same name (and ``conditioning.embed_dim`` to the encoder's width).
        token_length: captions are truncated to this many tokens; shards serve any
            ``conditioning.token_length`` up to it exactly.
        batch_size: captions per encoder call.
        device: where the encoder runs.
        encoder: an already loaded encoder (then ``encoder_path`` and ``device`` are not used).
        progress: show a tqdm progress bar.

    Returns:
        A ``PrecacheSummary``.
    """
    shards = expand_shard_paths(input_shards, key="precache input")
    outputs = output_paths(shards, output_dir)
    os.makedirs(output_dir, exist_ok=True)
    entry = sample_key(precached_key)
    summary = PrecacheSummary()
    todo = []
    for shard, out in zip(shards, outputs):
        if os.path.exists(out):
            summary.already_done.append(out)
        else:
            todo.append((shard, out))
    if summary.already_done:
        logger.info("precache: %d of %d shards already done in %s; skipping them", len(summary.already_done), len(shards), output_dir)
    if not todo:
        return summary
    if encoder is None:
        if not encoder_path:
            raise ValueError("precache: give encoder_path (a local Hugging Face directory or 'all-MiniLM-L6-v2')")
        encoder = TextEncoder.from_path(encoder_path, device=device)
    logger.info(
        "precache: embedding the captions of %d shards with %s (embed_dim %d) into entry %r",
        len(todo), encoder.name, encoder.embed_dim, entry,
    )
    cache = _EmbeddingCache(CACHE_BYTES)
    with tqdm(unit="sample", disable=not progress) as bar:
        for number, (shard, out) in enumerate(todo, start=1):
            bar.set_description(f"shard {number}/{len(todo)} {os.path.basename(shard)}")
            partial = out + PARTIAL_SUFFIX
            counts_before = summary.samples, summary.without_caption
            try:
                with TarWriter(partial, encoder=False) as writer:
                    batch: List[Tuple[str, Dict[str, bytes]]] = []
                    for sample in iter_shard(shard):
                        batch.append(sample)
                        if len(batch) == batch_size:
                            _write_batch(writer, batch, encoder, cache, entry, token_length, shard, summary)
                            bar.update(len(batch))
                            batch = []
                    if batch:
                        _write_batch(writer, batch, encoder, cache, entry, token_length, shard, summary)
                        bar.update(len(batch))
            except ShardReadError as error:
                os.remove(partial)
                summary.samples, summary.without_caption = counts_before
                summary.failed.append(shard)
                logger.error("precache: %s; no output written for it", error)
                continue
            os.replace(partial, out)
            summary.written.append(out)
    logger.info(
        "precache: wrote %d shards (%d samples, %d without caption), %d already done, %d failed",
        len(summary.written), summary.samples, summary.without_caption, len(summary.already_done), len(summary.failed),
    )
    return summary
