"""Typed config of the ``model.conditioning`` YAML block (text conditioning).

``ConditioningConfig`` is a plain dataclass so that ``models/config.py`` can merge YAML into
``OmegaConf.structured(ImagenConfig)``; ``__post_init__`` runs when the merged config is turned into
objects (``OmegaConf.to_object``) or when the dataclass is built directly, and every error message
starts with the offending key.
"""
from dataclasses import dataclass
from typing import Optional

_PREFIX = "conditioning"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class ConditioningConfig:
    """Text conditioning of one Imagen stage (``model.conditioning``).

    Attributes:
        embed_dim: width D of the frozen text encoder's token states (T5-11B encoder 1024,
            T5-XXL 4096, all-MiniLM-L6-v2 384). Must equal the encoder's hidden size.
        token_length: L, the number of token positions the UNet sees; embeddings are trimmed
            (keeping the first tokens) or zero-padded to L, with a mask marking the real tokens.
        drop_rate: probability that a training sample's whole text embedding is dropped
            (classifier-free guidance), in [0, 1).
        precached_key: name of the precached embedding in the webdataset shards; the sample entry is
            ``{precached_key}.npy`` (see ``nemo_imagen.text.embedding_format``). Required unless
            ``online_encoding`` is True.
        out_key: the batch key under which precached embeddings reach the model (``[B, L, D]``);
            their mask is ``{out_key}_mask`` (``[B, L]``), as in NeMo's batches.
        online_encoding: encode the raw captions with the frozen encoder during training instead
            of reading precached embeddings.
        encoder_path: local Hugging Face directory of the text encoder (with its tokenizer), or the
            name ``all-MiniLM-L6-v2``; required when ``online_encoding`` is True.
    """

    embed_dim: int = 1024
    token_length: int = 128
    drop_rate: float = 0.1
    precached_key: Optional[str] = "embeddings_t5_xxl"
    out_key: str = "t5_text"
    online_encoding: bool = False
    encoder_path: Optional[str] = None

    def __post_init__(self) -> None:
        if not _is_int(self.embed_dim) or self.embed_dim <= 0:
            raise ValueError(f"{_PREFIX}.embed_dim: {self.embed_dim!r} is not a positive integer")
        if not _is_int(self.token_length) or self.token_length <= 0:
            raise ValueError(f"{_PREFIX}.token_length: {self.token_length!r} is not a positive integer")
        if isinstance(self.drop_rate, bool) or not isinstance(self.drop_rate, (int, float)):
            raise ValueError(f"{_PREFIX}.drop_rate: {self.drop_rate!r} is not a number")
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"{_PREFIX}.drop_rate: {self.drop_rate} is not in [0, 1)")
        if not isinstance(self.out_key, str) or not self.out_key:
            raise ValueError(f"{_PREFIX}.out_key: {self.out_key!r} is not a non-empty string")
        if self.precached_key is not None:
            if not isinstance(self.precached_key, str) or not self.precached_key:
                raise ValueError(f"{_PREFIX}.precached_key: {self.precached_key!r} is not a non-empty string")
            if "/" in self.precached_key or self.precached_key.endswith(".npy"):
                raise ValueError(
                    f"{_PREFIX}.precached_key: {self.precached_key!r} must be a bare name such as "
                    "'embeddings_t5_xxl' (no '/' and no '.npy' extension; the shard entry is '<key>.npy')"
                )
        if self.online_encoding:
            if not self.encoder_path:
                raise ValueError(
                    f"{_PREFIX}.encoder_path: must be set when {_PREFIX}.online_encoding is True "
                    "(a local Hugging Face directory with the encoder and its tokenizer, or 'all-MiniLM-L6-v2')"
                )
        elif self.precached_key is None:
            raise ValueError(
                f"{_PREFIX}.precached_key: must be set when {_PREFIX}.online_encoding is False "
                "(the name of the precached embeddings in the shards), or set online_encoding: True"
            )
