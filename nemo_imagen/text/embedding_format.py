"""The precached text-embedding format: the one definition shared by the precache writer and the loader.

A caption's embedding is stored in its webdataset sample under the entry ``{precached_key}.npy``
(``sample_key``): a float16 ``.npy`` array ``[N, D]`` holding only the N real tokens' states of the
frozen encoder (no padding, no mask; ``N`` may be 0). The loader pads or trims it to
``conditioning.token_length`` and derives the mask (``pad_or_trim``), so shards stay valid for any
token_length. The ``.npy`` file is read with ``allow_pickle=False``: shards can never run code.

Writer::

    tokens = encoder.encode_tokens(captions, cond.token_length)        # list of [N_i, D]
    sample[sample_key(cond.precached_key)] = encode_embedding(tokens[i])

Reader::

    embed, mask = read_sample_embedding(sample, cond.precached_key, cond.embed_dim, cond.token_length)
"""
import io
from typing import Mapping, Sequence, Tuple, Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]

STORAGE_DTYPE = np.float16
_FLOAT16_MAX = float(np.finfo(np.float16).max)


class EmbeddingFormatError(ValueError):
    """A stored text embedding does not follow the precached format."""


def sample_key(precached_key: str) -> str:
    """The webdataset entry name (extension included) that holds the embedding, e.g. ``embeddings_t5_xxl.npy``."""
    return f"{precached_key}.npy"


def _to_numpy(tokens: ArrayLike) -> np.ndarray:
    if isinstance(tokens, torch.Tensor):
        return tokens.detach().to(device="cpu", dtype=torch.float32).numpy()
    return np.asarray(tokens)


def _check_tokens(array: np.ndarray, embed_dim: Union[int, None], what: str) -> None:
    if array.ndim != 2:
        raise EmbeddingFormatError(
            f"{what}: expected a 2-D array [num_tokens, embed_dim], found {array.ndim}-D with shape {tuple(array.shape)}"
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise EmbeddingFormatError(f"{what}: expected a floating-point array, found dtype {array.dtype}")
    if embed_dim is not None and array.shape[1] != embed_dim:
        raise EmbeddingFormatError(
            f"{what}: expected width embed_dim={embed_dim} (conditioning.embed_dim), found {array.shape[1]} "
            f"(shape {tuple(array.shape)}); the shards were written with a different text encoder"
        )
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - finite.sum())
        raise EmbeddingFormatError(f"{what}: {bad} non-finite values (NaN or inf) in an array of shape {tuple(array.shape)}")


def encode_embedding(tokens: ArrayLike) -> bytes:
    """Serialise one caption's real-token states to the stored format.

    Args:
        tokens: ``[N, D]`` float array or tensor (only the N real tokens, no padding).

    Returns:
        The bytes of a float16 ``.npy`` file ``[N, D]``.

    Raises:
        EmbeddingFormatError: not 2-D, not floating point, non-finite, or outside float16's range.
    """
    array = _to_numpy(tokens)
    _check_tokens(array, None, "encode_embedding")
    if array.size and float(np.abs(array).max()) > _FLOAT16_MAX:
        raise EmbeddingFormatError(
            f"encode_embedding: max |value| {float(np.abs(array).max()):.4g} exceeds float16's range ({_FLOAT16_MAX}); "
            "these token states cannot be stored in the precached format"
        )
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=STORAGE_DTYPE), allow_pickle=False)
    return buffer.getvalue()


def decode_embedding(data: Union[bytes, np.ndarray], embed_dim: int) -> np.ndarray:
    """Read one stored embedding and check it.

    Args:
        data: the bytes of the ``{precached_key}.npy`` entry, or the array a webdataset ``.decode()``
            stage already made of it.
        embed_dim: the expected width D (``conditioning.embed_dim``).

    Returns:
        ``[N, D]`` float32 array of the real tokens' states.

    Raises:
        EmbeddingFormatError: undecodable bytes, not 2-D, not floating point, wrong width, non-finite values.
    """
    if isinstance(data, np.ndarray):
        array = data
    elif isinstance(data, (bytes, bytearray, memoryview)):
        try:
            array = np.load(io.BytesIO(bytes(data)), allow_pickle=False)
        except Exception as err:  # numpy raises ValueError, EOFError, UnpicklingError... for bad bytes
            raise EmbeddingFormatError(
                f"decode_embedding: {len(data)} bytes are not a .npy array ({type(err).__name__}: {err})"
            ) from None
        if not isinstance(array, np.ndarray):
            raise EmbeddingFormatError(f"decode_embedding: expected a .npy array, found {type(array).__name__}")
    else:
        raise EmbeddingFormatError(f"decode_embedding: expected bytes or a numpy array, found {type(data).__name__}")
    _check_tokens(array, embed_dim, "decode_embedding")
    return array.astype(np.float32, copy=False)


def pad_or_trim(tokens: ArrayLike, token_length: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fit one caption's token states to ``token_length`` positions.

    Args:
        tokens: ``[N, D]`` real tokens' states (``N`` may be 0).
        token_length: L, the number of positions to return.

    Returns:
        ``embed``: ``[L, D]`` float32 tensor: the first ``min(N, L)`` tokens, zeros after them.
        ``mask``: ``[L]`` bool tensor, True at the real tokens (all False when N is 0).
    """
    if isinstance(token_length, bool) or not isinstance(token_length, int) or token_length <= 0:
        raise ValueError(f"pad_or_trim: token_length {token_length!r} is not a positive integer")
    tokens = torch.as_tensor(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"pad_or_trim: expected [num_tokens, embed_dim], found shape {tuple(tokens.shape)}")
    n = min(tokens.shape[0], token_length)
    embed = torch.zeros(token_length, tokens.shape[1], dtype=torch.float32, device=tokens.device)
    embed[:n] = tokens[:n].to(torch.float32)
    mask = torch.zeros(token_length, dtype=torch.bool, device=tokens.device)
    mask[:n] = True
    return embed, mask


def stack_padded(token_list: Sequence[ArrayLike], token_length: int, embed_dim: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``pad_or_trim`` every caption of a batch and stack them.

    Args:
        token_list: B arrays ``[N_i, D]``.
        token_length: L.
        embed_dim: D (gives the shape of an empty batch).

    Returns:
        ``embed``: ``[B, L, D]`` float32, ``mask``: ``[B, L]`` bool.
    """
    if len(token_list) == 0:
        return torch.zeros(0, token_length, embed_dim), torch.zeros(0, token_length, dtype=torch.bool)
    pairs = [pad_or_trim(tokens, token_length) for tokens in token_list]
    return torch.stack([embed for embed, _ in pairs]), torch.stack([mask for _, mask in pairs])


def read_sample_embedding(
    sample: Mapping[str, object], precached_key: str, embed_dim: int, token_length: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Decode, check and pad/trim the embedding of one webdataset sample.

    Args:
        sample: a webdataset sample dict (entry name -> bytes, plus ``__key__``).
        precached_key: ``conditioning.precached_key``.
        embed_dim: ``conditioning.embed_dim``.
        token_length: ``conditioning.token_length``.

    Returns:
        ``embed``: ``[L, D]`` float32, ``mask``: ``[L]`` bool.

    Raises:
        EmbeddingFormatError: the entry is missing or malformed; the message names the sample.
    """
    key = sample_key(precached_key)
    name = sample.get("__key__", "<unknown>")
    if key not in sample:
        found = sorted(k for k in sample if not k.startswith("__"))
        raise EmbeddingFormatError(
            f"sample {name!r} has no entry {key!r} (conditioning.precached_key={precached_key!r}); "
            f"its entries are {found}"
        )
    try:
        tokens = decode_embedding(sample[key], embed_dim)
    except EmbeddingFormatError as err:
        raise EmbeddingFormatError(f"sample {name!r}, entry {key!r}: {err}") from None
    return pad_or_trim(tokens, token_length)
