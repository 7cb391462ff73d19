"""The real all-MiniLM-L6-v2 encoder (384-dim token states, BERT tokenizer), loaded once per session."""
import logging

import numpy as np
import pytest
import torch

from nemo_imagen.text import (
    MINILM_NAME,
    check_width,
    decode_embedding,
    encode_embedding,
    pad_or_trim,
    resolve_encoder_path,
)

CAPTIONS = ["a red circle", "a small blue square on a white background next to a green tree", "", "a red square"]


def test_documented_name_loads_minilm_offline(minilm):
    # The fixture loaded it with sockets and DNS patched to fail.
    assert minilm.name == MINILM_NAME
    assert minilm.embed_dim == 384
    assert minilm.max_tokens == 512
    assert resolve_encoder_path("minilm")[0] == resolve_encoder_path(MINILM_NAME)[0]


def test_token_states_reproduce_the_sentence_transformers_embedding(minilm):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    directory, _ = resolve_encoder_path(MINILM_NAME)
    reference = sentence_transformers.SentenceTransformer(str(directory), device="cpu").encode(
        CAPTIONS, convert_to_tensor=True
    )
    embed, mask = minilm.encode(CAPTIONS, 64)
    pooled = (embed * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # the model's mean pooling
    pooled = torch.nn.functional.normalize(pooled, dim=-1)
    torch.testing.assert_close(pooled, reference.float(), atol=1e-5, rtol=1e-4)


def test_caption_gives_the_same_states_alone_and_in_a_padded_batch(minilm):
    embed_batch, mask_batch = minilm.encode(CAPTIONS, 32)
    for i, caption in enumerate(CAPTIONS):
        embed_alone, mask_alone = minilm.encode([caption], 32)
        assert torch.equal(mask_alone[0], mask_batch[i])
        torch.testing.assert_close(embed_alone[0], embed_batch[i], atol=1e-5, rtol=1e-5)


def test_mask_equals_the_tokenizer_attention_mask(minilm):
    _, mask = minilm.encode(CAPTIONS, 20)
    expected = minilm.tokenizer(CAPTIONS, padding="max_length", max_length=20, truncation=True, return_tensors="pt")
    assert torch.equal(mask, expected["attention_mask"].bool())
    assert mask.sum(1).tolist() == [5, 15, 2, 5]  # [CLS] ... [SEP]; the empty caption is [CLS][SEP]


def test_padded_positions_are_zero_and_real_ones_are_not(minilm):
    embed, mask = minilm.encode(CAPTIONS, 20)
    assert not embed[~mask].any()
    assert (embed[mask].abs().sum(-1) > 1.0).all()


def test_different_captions_give_different_states(minilm):
    embed, _ = minilm.encode(["a red circle", "a blue circle"], 8)
    # Same token count (5); the colour changes every position's state, not just the colour token.
    difference = (embed[0, :5] - embed[1, :5]).abs().amax(-1)
    assert (difference > 0.05).all(), difference


def test_truncation_keeps_the_first_tokens_and_warns_once(minilm, caplog):
    long_caption = " ".join(["a red circle next to a blue square"] * 10)
    start = minilm.num_truncated
    minilm._warned_truncation = False
    with caplog.at_level(logging.WARNING, logger="nemo_imagen.text.encoders"):
        embed, mask = minilm.encode([long_caption, "a red circle"], 8)
        minilm.encode([long_caption], 8)
    assert mask.sum(1).tolist() == [8, 5]
    warnings = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("1 of 2 captions were longer than token_length=8"), warnings
    assert minilm.num_truncated - start == 2
    # Equal to running the Hugging Face model on the tokenizer's own truncation ([CLS] 6 tokens [SEP]).
    ids = minilm.tokenizer([long_caption], truncation=True, max_length=8, return_tensors="pt")
    assert ids["input_ids"][0, -1].item() == minilm.tokenizer.sep_token_id
    with torch.no_grad():
        direct = minilm.model(**ids).last_hidden_state[0]
    torch.testing.assert_close(embed[0], direct, atol=1e-5, rtol=1e-5)


def test_precached_round_trip_matches_online_encoding(minilm):
    online_embed, online_mask = minilm.encode(CAPTIONS, 12)
    for i, tokens in enumerate(minilm.encode_tokens(CAPTIONS, 12)):
        stored = decode_embedding(encode_embedding(tokens), 384)
        embed, mask = pad_or_trim(stored, 12)
        assert torch.equal(mask, online_mask[i])
        # Equal up to float16 rounding (states are O(1): half-ulp is below 1e-3 relative).
        torch.testing.assert_close(embed, online_embed[i], atol=2e-3, rtol=1e-3)


def test_encoder_is_frozen_and_its_output_can_feed_a_trained_layer(minilm):
    assert not any(p.requires_grad for p in minilm.parameters())
    minilm.train()
    assert not minilm.training and not any(m.training for m in minilm.modules())
    embed, _ = minilm.encode(["a red circle"], 8)
    assert not embed.requires_grad and not embed.is_inference()
    layer = torch.nn.Linear(384, 1)
    layer(embed).sum().backward()  # an inference tensor could not be saved for this backward
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_token_length_beyond_position_embeddings_is_a_config_error(minilm):
    with pytest.raises(ValueError, match=r"^conditioning\.token_length: 1024 exceeds the 512 positions"):
        minilm.encode(["a red circle"], 1024)


def test_width_mismatch_names_both_sizes_and_the_key(minilm):
    with pytest.raises(ValueError, match=r"^conditioning\.embed_dim: 1024 does not match the hidden size 384"):
        check_width(minilm, 1024)
    check_width(minilm, 384)


def test_empty_caption_list_and_single_string(minilm):
    embed, mask = minilm.encode([], 8)
    assert embed.shape == (0, 8, 384) and mask.shape == (0, 8)
    with pytest.raises(TypeError, match="list of strings"):
        minilm.encode("a red circle", 8)
    assert minilm.encode_tokens([], 8) == []
