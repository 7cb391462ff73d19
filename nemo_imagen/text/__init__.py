"""Text conditioning: frozen text encoders and the precached-embedding format (plain PyTorch + transformers)."""
from nemo_imagen.text.config import ConditioningConfig
from nemo_imagen.text.embedding_format import (
    EmbeddingFormatError,
    decode_embedding,
    encode_embedding,
    pad_or_trim,
    read_sample_embedding,
    sample_key,
    stack_padded,
)
from nemo_imagen.text.encoders import (
    MINILM_NAME,
    TextEncoder,
    build_text_encoder,
    check_token_length,
    check_width,
    resolve_encoder_path,
)

__all__ = [
    "ConditioningConfig",
    "EmbeddingFormatError",
    "MINILM_NAME",
    "TextEncoder",
    "build_text_encoder",
    "check_token_length",
    "check_width",
    "decode_embedding",
    "encode_embedding",
    "pad_or_trim",
    "read_sample_embedding",
    "resolve_encoder_path",
    "sample_key",
    "stack_padded",
]
