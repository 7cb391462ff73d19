import io

import numpy as np
import pytest
import torch

from nemo_imagen.text import (
    EmbeddingFormatError,
    decode_embedding,
    encode_embedding,
    pad_or_trim,
    read_sample_embedding,
    sample_key,
    stack_padded,
)

TOKENS = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=np.float32)  # N=3, D=2


def test_pad_or_trim_pads_with_zeros_and_masks_real_tokens():
    embed, mask = pad_or_trim(TOKENS, 5)
    expected = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [0.0, 0.0], [0.0, 0.0]])
    assert torch.equal(embed, expected) and embed.dtype == torch.float32
    assert mask.tolist() == [True, True, True, False, False]


def test_pad_or_trim_trim_keeps_the_first_tokens():
    embed, mask = pad_or_trim(torch.from_numpy(TOKENS), 2)
    assert torch.equal(embed, torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert mask.tolist() == [True, True]


def test_pad_or_trim_exact_length_is_unchanged():
    embed, mask = pad_or_trim(TOKENS, 3)
    assert torch.equal(embed, torch.from_numpy(TOKENS)) and mask.all()


def test_pad_or_trim_empty_gives_zeros_and_all_false_mask():
    embed, mask = pad_or_trim(np.zeros((0, 2), np.float32), 4)
    assert torch.equal(embed, torch.zeros(4, 2)) and mask.tolist() == [False] * 4


def test_pad_or_trim_rejects_bad_token_length_and_rank():
    with pytest.raises(ValueError, match="token_length 0"):
        pad_or_trim(TOKENS, 0)
    with pytest.raises(ValueError, match=r"found shape \(6,\)"):
        pad_or_trim(TOKENS.reshape(-1), 4)


def test_stack_padded_batches_rows_and_handles_empty_batch():
    embed, mask = stack_padded([TOKENS, TOKENS[:1]], 2, 2)
    assert torch.equal(embed, torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0], [0.0, 0.0]]]))
    assert mask.tolist() == [[True, True], [True, False]]
    embed, mask = stack_padded([], 7, 5)
    assert embed.shape == (0, 7, 5) and mask.shape == (0, 7) and mask.dtype == torch.bool


def test_round_trip_is_exact_for_float16_values():
    rng = np.random.default_rng(0)
    values = (rng.standard_normal((17, 48)) * 30).astype(np.float16).astype(np.float32)
    data = encode_embedding(values)
    stored = np.load(io.BytesIO(data), allow_pickle=False)
    assert stored.dtype == np.float16 and stored.shape == (17, 48)
    decoded = decode_embedding(data, 48)
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, values)


def test_round_trip_rounds_float32_to_nearest_float16_and_accepts_tensors():
    values = torch.tensor([[0.1, -1.0 / 3.0, 1000.123]], dtype=torch.float32)
    decoded = decode_embedding(encode_embedding(values), 3)
    np.testing.assert_array_equal(decoded, values.numpy().astype(np.float16).astype(np.float32))
    assert decoded[0, 0] != np.float32(0.1)  # it really is float16 storage


def test_empty_embedding_round_trips():
    decoded = decode_embedding(encode_embedding(np.zeros((0, 8), np.float32)), 8)
    assert decoded.shape == (0, 8)


def test_decode_rejects_garbage_bytes():
    with pytest.raises(EmbeddingFormatError, match=r"12 bytes are not a \.npy array"):
        decode_embedding(b"not an array", 4)


def test_decode_rejects_pickled_objects_without_unpickling():
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(EmbeddingFormatError, match="not a .npy array"):
        decode_embedding(buffer.getvalue(), 4)


def test_decode_rejects_wrong_width_naming_expected_and_found():
    data = encode_embedding(np.zeros((5, 32), np.float32))
    with pytest.raises(EmbeddingFormatError, match=r"expected width embed_dim=384 .* found 32"):
        decode_embedding(data, 384)


def test_decode_rejects_one_dimensional_array():
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(384, np.float16))
    with pytest.raises(EmbeddingFormatError, match=r"expected a 2-D array .* found 1-D"):
        decode_embedding(buffer.getvalue(), 384)


def test_decode_rejects_non_finite_values():
    values = np.zeros((3, 4), np.float16)
    values[1, 2] = np.nan
    values[2, 0] = np.inf
    buffer = io.BytesIO()
    np.save(buffer, values)
    with pytest.raises(EmbeddingFormatError, match="2 non-finite values"):
        decode_embedding(buffer.getvalue(), 4)


def test_decode_rejects_integer_arrays():
    buffer = io.BytesIO()
    np.save(buffer, np.ones((3, 4), np.int32))
    with pytest.raises(EmbeddingFormatError, match="floating-point"):
        decode_embedding(buffer.getvalue(), 4)


def test_encode_rejects_values_float16_cannot_hold():
    with pytest.raises(EmbeddingFormatError, match="exceeds float16's range"):
        encode_embedding(np.array([[1.0, 70000.0]], np.float32))
    with pytest.raises(EmbeddingFormatError, match="non-finite"):
        encode_embedding(np.array([[np.nan, 0.0]], np.float32))


def test_sample_key_is_the_precached_key_with_npy_extension():
    assert sample_key("embeddings_t5_xxl") == "embeddings_t5_xxl.npy"


def test_read_sample_embedding_decodes_and_pads():
    sample = {"__key__": "000007", "txt": b"a red circle", sample_key("emb"): encode_embedding(TOKENS)}
    embed, mask = read_sample_embedding(sample, "emb", 2, 4)
    assert torch.equal(embed, torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [0.0, 0.0]]))
    assert mask.tolist() == [True, True, True, False]


def test_read_sample_embedding_names_sample_and_missing_entry():
    with pytest.raises(EmbeddingFormatError, match=r"sample '000007' has no entry 'emb\.npy' .* \['jpg', 'txt'\]"):
        read_sample_embedding({"__key__": "000007", "txt": b"", "jpg": b""}, "emb", 2, 4)
    with pytest.raises(EmbeddingFormatError, match=r"sample '000008', entry 'emb\.npy': .*found 2"):
        read_sample_embedding({"__key__": "000008", "emb.npy": encode_embedding(TOKENS)}, "emb", 3, 4)


def test_format_survives_a_webdataset_shard(tmp_path):
    wds = pytest.importorskip("webdataset")
    shard = str(tmp_path / "shard-000000.tar")
    rows = [TOKENS, TOKENS[:1] * -2.5]
    with wds.TarWriter(shard) as writer:
        for i, tokens in enumerate(rows):
            writer.write({"__key__": f"{i:06d}", "txt": f"caption {i}", sample_key("embeddings_t5_xxl"): encode_embedding(tokens)})
    raw = list(wds.WebDataset(shard, shardshuffle=False))
    decoded = list(wds.WebDataset(shard, shardshuffle=False).decode())  # webdataset's own .npy decoder
    for tokens, raw_sample, decoded_sample in zip(rows, raw, decoded):
        for sample in (raw_sample, decoded_sample):
            embed, mask = read_sample_embedding(sample, "embeddings_t5_xxl", 2, 3)
            n = len(tokens)
            assert torch.equal(embed[:n], torch.from_numpy(tokens)) and not embed[n:].any()
            assert mask.tolist() == [True] * n + [False] * (3 - n)
