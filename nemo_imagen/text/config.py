"""Typed config of the ``model.conditioning`` YAML block (text conditioning).

``ConditioningConfig`` is a plain dataclass so that ``models/config.py`` can merge YAML into
``OmegaConf.structured(ImagenConfig)``; ``__post_init__`` runs when the merged config is turned into
objects (``OmegaConf.to_object``) or when the dataclass is built directly, and every error message
starts with the offending key.
"""
from dataclasses import dataclass, field
from typing import Any, List, Optional

from nemo_imagen.config_checks import is_int

_PREFIX = "conditioning"
SERVER = "server"
"""``online_encoding: server``: captions are embedded by PyTriton servers (``text.embedding_client``)."""


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
        online_encoding: ``False``: read precached embeddings; ``True``: encode the raw captions
            with the frozen encoder in the training process; ``server``: each dataloader worker sends
            its captions to the embedding servers in ``server_urls`` (``examples/embedding_server.py``).
        encoder_path: local Hugging Face directory of the text encoder (with its tokenizer), or the
            name ``all-MiniLM-L6-v2``; required when ``online_encoding`` is True. With ``server`` it is
            optional (the server loads the encoder; here it only encodes sampling prompts).
        server_urls: ``host:port`` HTTP addresses of the embedding servers (``online_encoding: server``);
            dataloader workers are spread over them.
        server_model_name: the model name the servers serve (``embedding_server.py --model-name``).
        server_timeout_s: seconds one request may take before it counts as failed.
        server_retries: further attempts after a failed request (then the worker raises).
    """

    embed_dim: int = 1024
    token_length: int = 128
    drop_rate: float = 0.1
    precached_key: Optional[str] = "embeddings_t5_xxl"
    out_key: str = "t5_text"
    # bool or "server" (typed Any so OmegaConf accepts both)
    online_encoding: Any = False
    encoder_path: Optional[str] = None
    server_urls: List[str] = field(default_factory=list)
    server_model_name: str = "text_encoder"
    server_timeout_s: float = 60.0
    server_retries: int = 2

    def __post_init__(self) -> None:
        if not is_int(self.embed_dim) or self.embed_dim <= 0:
            raise ValueError(f"{_PREFIX}.embed_dim: {self.embed_dim!r} is not a positive integer")
        if not is_int(self.token_length) or self.token_length <= 0:
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
        if not (isinstance(self.online_encoding, bool) or self.online_encoding == SERVER):
            raise ValueError(
                f"{_PREFIX}.online_encoding: {self.online_encoding!r} is not one of True, False, {SERVER!r}"
            )
        if self.online_encoding == SERVER:
            if not self.server_urls or not all(isinstance(url, str) and url for url in self.server_urls):
                raise ValueError(
                    f"{_PREFIX}.server_urls: {list(self.server_urls)!r} must list the embedding servers' host:port "
                    f"addresses when {_PREFIX}.online_encoding is {SERVER!r}"
                )
            if isinstance(self.server_timeout_s, bool) or not isinstance(self.server_timeout_s, (int, float)) or self.server_timeout_s <= 0:
                raise ValueError(f"{_PREFIX}.server_timeout_s: {self.server_timeout_s!r} is not a positive number")
            if not is_int(self.server_retries) or self.server_retries < 0:
                raise ValueError(f"{_PREFIX}.server_retries: {self.server_retries!r} is not a non-negative integer")
        elif self.online_encoding:
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
