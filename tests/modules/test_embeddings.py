import math

import pytest
import torch

from nemo_imagen.modules.embeddings import (
    AttentionPooling,
    LearnedSinusoidalEmbedding,
    NoiseLevelEmbedding,
    PooledTextEmbedding,
    masked_mean,
    sinusoidal_embedding,
)


@pytest.mark.parametrize("dim", [8, 7])
def test_sinusoidal_embedding_matches_closed_form(dim):
    x = torch.tensor([0.0, -0.37, 1.5, 250.0])
    emb = sinusoidal_embedding(x, dim)
    half = dim // 2
    for i, xi in enumerate(x.tolist()):
        for j in range(half):
            freq = 10000.0 ** (-j / half)
            assert emb[i, j].item() == pytest.approx(math.cos(xi * freq), abs=1e-5)
            assert emb[i, half + j].item() == pytest.approx(math.sin(xi * freq), abs=1e-5)
        if dim % 2:
            assert emb[i, -1].item() == 0.0
    assert emb.shape == (4, dim)


def test_learned_sinusoidal_embedding_matches_closed_form():
    module = LearnedSinusoidalEmbedding(6)
    x = torch.tensor([0.3, -1.2])
    emb = module(x)
    w = module.weights.detach()
    for i, xi in enumerate(x.tolist()):
        assert emb[i, 0].item() == pytest.approx(xi)
        for j in range(3):
            assert emb[i, 1 + j].item() == pytest.approx(math.sin(2 * math.pi * xi * w[j].item()), abs=1e-5)
            assert emb[i, 4 + j].item() == pytest.approx(math.cos(2 * math.pi * xi * w[j].item()), abs=1e-5)


def test_noise_level_embedding_input_width_follows_learned_dim():
    assert NoiseLevelEmbedding(32, 128).mlp[0].in_features == 32
    assert NoiseLevelEmbedding(32, 128, learned_dim=16).mlp[0].in_features == 17


def _padded_text(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 5, 4, generator=gen)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    return x, mask


def test_attention_pooling_matches_hand_computation_over_real_tokens():
    x, mask = _padded_text()
    pool = AttentionPooling(4)
    out = pool(x, mask)
    w, b = pool.score.weight.detach()[0], pool.score.bias.detach()[0]
    for i in range(3):
        real = [l for l in range(5) if mask[i, l]]
        scores = [math.exp(float(x[i, l] @ w + b)) for l in real]
        total = sum(scores)
        expected = sum(s / total * x[i, l] for s, l in zip(scores, real))
        torch.testing.assert_close(out[i], expected, atol=1e-6, rtol=1e-5)


def test_attention_pooling_ignores_padding_and_zeroes_empty_rows():
    x, mask = _padded_text()
    pool = AttentionPooling(4)
    changed = x.clone()
    changed[~mask] = 1e4 * torch.randn(int((~mask).sum()), 4)
    torch.testing.assert_close(pool(changed, mask), pool(x, mask), atol=0, rtol=0)
    empty = torch.zeros_like(mask)
    assert torch.equal(pool(x, empty), torch.zeros(3, 4))


def test_masked_mean_matches_hand_computation():
    x, mask = _padded_text()
    out = masked_mean(x, mask)
    torch.testing.assert_close(out[0], x[0, :3].mean(0))
    torch.testing.assert_close(out[1], x[1, 0])
    torch.testing.assert_close(out[2], x[2].mean(0))
    assert torch.equal(masked_mean(x, torch.zeros_like(mask)), torch.zeros(3, 4))


@pytest.mark.parametrize("pooling_type", ["attention", "mean"])
def test_pooled_text_embedding_ignores_padding(pooling_type):
    x, mask = _padded_text()
    module = PooledTextEmbedding(4, 8, 16, pooling_type)
    changed = x.clone()
    changed[~mask] = 50.0
    torch.testing.assert_close(module(changed, mask), module(x, mask))
    changed[0, 0] = 50.0  # a real token does matter
    assert not torch.allclose(module(changed, mask)[0], module(x, mask)[0])
