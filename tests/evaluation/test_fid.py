"""Frechet distance against scipy's float64 matrix square root; feature statistics against numpy."""
import numpy as np
import pytest
import torch

from nemo_imagen.evaluation.fid import FeatureStats, frechet_distance, load_stats


def scipy_frechet(mu1, sigma1, mu2, sigma2):
    """The original FID formula (TTUR's fid.py), independent of our eigenvalue route."""
    from scipy import linalg

    covmean = linalg.sqrtm(sigma1 @ sigma2)
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def gaussian_features(rng, count, dim, shift=0.0):
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    return rng.normal(size=(count, dim)) @ mixing + shift


@pytest.mark.parametrize("dim, count", [(8, 100), (64, 400), (256, 1000)])
def test_matches_scipy_sqrtm(dim, count):
    rng = np.random.default_rng(dim)
    a, b = gaussian_features(rng, count, dim), gaussian_features(rng, count, dim, shift=0.3)
    stats = [(x.mean(0), np.cov(x, rowvar=False)) for x in (a, b)]
    expected = scipy_frechet(*stats[0], *stats[1])
    assert expected > 0.1
    assert frechet_distance(*stats[0], *stats[1]) == pytest.approx(expected, rel=1e-6)


def test_zero_for_identical_sets_and_symmetric():
    rng = np.random.default_rng(1)
    a, b = gaussian_features(rng, 300, 32), gaussian_features(rng, 300, 32, shift=0.1)
    mu_a, sigma_a = a.mean(0), np.cov(a, rowvar=False)
    mu_b, sigma_b = b.mean(0), np.cov(b, rowvar=False)
    assert frechet_distance(mu_a, sigma_a, mu_a, sigma_a) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(mu_a, sigma_a, mu_b, sigma_b) == pytest.approx(
        frechet_distance(mu_b, sigma_b, mu_a, sigma_a), rel=1e-9)


def test_closed_form_for_diagonal_gaussians():
    # N(m1, diag(s1^2)) vs N(m2, diag(s2^2)): |m1 - m2|^2 + sum (s1 - s2)^2
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 2.0, 0.5]), np.array([3.0, 2.0, 1.5])
    expected = ((mu1 - mu2) ** 2).sum() + ((s1 - s2) ** 2).sum()
    assert frechet_distance(mu1, np.diag(s1**2), mu2, np.diag(s2**2)) == pytest.approx(expected, rel=1e-12)


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="shapes differ"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_feature_stats_match_numpy_in_any_batching(tmp_path):
    rng = np.random.default_rng(2)
    features = rng.normal(size=(103, 12)) * 3 + 5
    stats = FeatureStats(12)
    for start in range(0, 103, 10):
        stats.add(torch.from_numpy(features[start : start + 10]).float())
    features32 = features.astype(np.float32).astype(np.float64)  # what the float32 batches held
    np.testing.assert_allclose(stats.mean.numpy(), features32.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov.numpy(), np.cov(features32, rowvar=False), rtol=1e-9, atol=1e-12)
    stats.save(tmp_path / "s.npz", fingerprint="abc", resolution="64")
    loaded = load_stats(tmp_path / "s.npz", fingerprint="abc", resolution="64")
    assert loaded.count == 103
    np.testing.assert_array_equal(loaded.sigma, stats.cov.numpy())
    assert load_stats(tmp_path / "s.npz", fingerprint="other", resolution="64") is None
    assert load_stats(tmp_path / "missing.npz") is None
