"""The ADM metric maths (sfd.evaluation.metrics) against closed forms and constructed answers."""

import numpy as np
import pytest
from scipy import linalg

from sfd.evaluation import metrics
from sfd.evaluation.metrics import (
    GaussianStats,
    feature_statistics,
    frechet_distance,
    inception_score,
    manifold_radii,
    pairwise_distances,
    precision_recall,
)


def _spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _psd_sqrt(m):
    w, v = np.linalg.eigh(m)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


# ----------------------------------------------------------------------------
# Fréchet distance


def test_identical_feature_sets_have_zero_fid():
    feats = np.random.default_rng(0).normal(size=(400, 12)).astype(np.float32)
    stats = feature_statistics(feats)
    assert frechet_distance(stats, stats) == pytest.approx(0.0, abs=1e-9)


def test_statistics_keep_adm_dtypes():
    """float32 mean (np.mean of float32 features), unbiased float64 covariance."""
    feats = np.random.default_rng(1).normal(size=(50, 6)).astype(np.float32)
    stats = feature_statistics(feats)
    assert stats.mu.dtype == np.float32 and stats.sigma.dtype == np.float64
    centred = feats.astype(np.float64) - feats.astype(np.float64).mean(0)
    np.testing.assert_allclose(stats.sigma, centred.T @ centred / 49, rtol=1e-12)


def test_commuting_gaussians_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, -1.0, 2.5])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 16.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(GaussianStats(mu1, np.diag(a)), GaussianStats(mu2, np.diag(b)))
    assert got == pytest.approx(expected, rel=1e-12)


def test_general_gaussians_closed_form():
    """tr sqrt(S1 S2) = tr sqrt(S1^1/2 S2 S1^1/2), computed here with symmetric eigendecompositions."""
    rng = np.random.default_rng(2)
    s1, s2 = _spd(rng, 8), _spd(rng, 8)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    r = _psd_sqrt(s1)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(_psd_sqrt(r @ s2 @ r))
    assert frechet_distance(GaussianStats(mu1, s1), GaussianStats(mu2, s2)) == pytest.approx(
        expected, rel=1e-10
    )


def test_matches_scipy_reference_recipe():
    """The TTUR/ADM recipe written out with scipy: same numbers, bit for bit."""
    rng = np.random.default_rng(3)
    sample = rng.normal(size=(300, 10)).astype(np.float32)
    ref = (rng.normal(size=(500, 10)) * 1.3 + 0.2).astype(np.float32)
    mu1, s1 = np.mean(sample, axis=0), np.cov(sample, rowvar=False)
    mu2, s2 = np.mean(ref, axis=0), np.cov(ref, rowvar=False)
    covmean = linalg.sqrtm(s1.dot(s2))
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    diff = mu1 - mu2
    expected = diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert frechet_distance(feature_statistics(sample), feature_statistics(ref)) == expected


def test_singular_product_retries_with_eps_then_rejects_complex_root():
    """diag(1,0) @ [[0,1],[1,1]] is nilpotent: sqrtm gives inf, the eps retry a complex root."""
    s1 = GaussianStats(np.zeros(2), np.diag([1.0, 0.0]))
    s2 = GaussianStats(np.zeros(2), np.array([[0.0, 1.0], [1.0, 1.0]]))
    with pytest.warns(UserWarning, match="adding 1e-06 to the diagonal"):
        with pytest.raises(ValueError, match="imaginary component"):
            frechet_distance(s1, s2)


def test_eps_retry_uses_offset_covariances(monkeypatch):
    """When the first square root is not finite, the result is that of S + eps*I on both sides."""
    rng = np.random.default_rng(4)
    s1, s2 = _spd(rng, 5), _spd(rng, 5)
    calls, sqrtm = [], linalg.sqrtm

    def flaky_sqrtm(m):
        calls.append(m)
        return np.full_like(m, np.nan) if len(calls) == 1 else sqrtm(m)

    monkeypatch.setattr(metrics.linalg, "sqrtm", flaky_sqrtm)
    with pytest.warns(UserWarning, match="singular"):
        got = frechet_distance(GaussianStats(np.zeros(5), s1), GaussianStats(np.zeros(5), s2), eps=1e-3)
    e = 1e-3 * np.eye(5)
    np.testing.assert_array_equal(calls[1], (s1 + e).dot(s2 + e))
    r = _psd_sqrt(s1 + e)
    expected = np.trace(s1) + np.trace(s2) - 2 * np.trace(_psd_sqrt(r @ (s2 + e) @ r))
    assert got == pytest.approx(expected, rel=1e-9)


def test_small_imaginary_part_is_dropped():
    """A -1e-10 eigenvalue gives a 1e-5 imaginary diagonal: within ADM's 1e-3, so the real part counts."""
    s1 = GaussianStats(np.zeros(3), np.eye(3))
    s2 = GaussianStats(np.zeros(3), np.diag([1.0, -1e-10, 2.0]))
    expected = 3 + (3 - 1e-10) - 2 * (1 + np.sqrt(2))
    assert frechet_distance(s1, s2) == pytest.approx(expected, rel=1e-12)


def test_large_imaginary_part_raises():
    with pytest.raises(ValueError, match="imaginary component"):
        frechet_distance(
            GaussianStats(np.zeros(2), np.eye(2)), GaussianStats(np.zeros(2), np.diag([1.0, -1.0]))
        )


def test_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match="mean vectors differ"):
        frechet_distance(GaussianStats(np.zeros(3), np.eye(3)), GaussianStats(np.zeros(4), np.eye(4)))


# ----------------------------------------------------------------------------
# Inception Score


def _one_hot(labels, k):
    return np.eye(k, dtype=np.float32)[labels]


def test_confident_balanced_predictions_score_the_class_count():
    probs = _one_hot(np.arange(40) % 8, 8)
    assert inception_score(probs) == pytest.approx(8.0, rel=1e-6)


def test_uniform_predictions_score_one():
    assert inception_score(np.full((30, 5), 0.2, np.float32)) == pytest.approx(1.0, abs=1e-6)


def test_score_is_mean_over_consecutive_splits_and_order_sensitive():
    confident = _one_hot(np.arange(8) % 4, 4)  # split score 4
    uniform = np.full((8, 4), 0.25, np.float32)  # split score 1
    assert inception_score(np.concatenate([confident, uniform]), split_size=8) == pytest.approx(2.5, rel=1e-6)
    interleaved = np.concatenate([confident[:4], uniform[:4], confident[4:], uniform[4:]])
    assert inception_score(interleaved, split_size=8) != pytest.approx(2.5, rel=1e-3)


def test_score_matches_kl_formula():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(1200, 10)) * 2
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    expected = []
    for part in np.split(probs.astype(np.float64), [500, 1000]):
        marginal = part.mean(0)
        expected.append(np.exp(np.mean(np.sum(part * np.log(part / marginal), 1))))
    assert inception_score(probs, split_size=500) == pytest.approx(np.mean(expected), rel=1e-5)


# ----------------------------------------------------------------------------
# Distances, radii, precision and recall


def test_fp16_distances_are_exact_on_small_integers():
    rng = np.random.default_rng(6)
    u = rng.integers(0, 5, (20, 64)).astype(np.float32)  # norms <= 1024: exact in fp16
    v = rng.integers(0, 5, (30, 64)).astype(np.float32)
    exact = ((u[:, None, :].astype(np.int64) - v[None].astype(np.int64)) ** 2).sum(-1)
    d = pairwise_distances(u, v)
    assert d.dtype == np.float32
    np.testing.assert_array_equal(d, exact)


def test_fp16_distances_are_rounded_to_half_precision():
    rng = np.random.default_rng(7)
    u, v = rng.random((40, 256), np.float32), rng.random((50, 256), np.float32)
    d = pairwise_distances(u, v)
    np.testing.assert_array_equal(d, d.astype(np.float16).astype(np.float32))
    exact = ((u[:, None].astype(np.float64) - v[None]) ** 2).sum(-1)
    np.testing.assert_allclose(d, exact, rtol=0.05, atol=0.5)
    assert not np.array_equal(d, exact.astype(np.float32))  # fp16 really was used


def test_overflowing_block_is_recomputed_in_fp32():
    u = np.full((3, 64), 100.0, np.float32)  # |u|^2 = 640000 > fp16 max 65504
    v = np.zeros((4, 64), np.float32)
    v[1] = 1.0
    assert not np.isfinite(metrics._squared_distances_fp16(u, v)).all()
    expected = np.array([640000.0, 64 * 99.0**2, 640000.0, 640000.0], np.float32)
    np.testing.assert_array_equal(pairwise_distances(u, v), np.tile(expected, (3, 1)))


def test_radii_are_kth_neighbour_squared_distances():
    points = np.arange(10, dtype=np.float32)[:, None]
    radii = manifold_radii(points, k=3)
    # third nearest other point: distance 3 at the ends, 2 inside (neighbours at 1, 1, 2)
    np.testing.assert_array_equal(radii, [9, 4, 4, 4, 4, 4, 4, 4, 4, 9])


def test_blocking_does_not_change_results():
    rng = np.random.default_rng(8)
    ref = rng.integers(0, 4, (37, 16)).astype(np.float32)
    ref[5] = 90.0  # a row whose blocks overflow fp16 and fall back to fp32
    samples = rng.integers(0, 4, (29, 16)).astype(np.float32)
    np.testing.assert_array_equal(manifold_radii(ref, block=7), manifold_radii(ref))
    assert precision_recall(ref, samples, block=7) == precision_recall(ref, samples)


def test_precision_recall_of_separated_clusters():
    """Samples that duplicate reference points lie on the manifold (distance 0); far ones do not."""
    rng = np.random.default_rng(9)
    near = rng.integers(0, 3, (40, 8)).astype(np.float32)
    far = near + 50
    # half the samples off the reference manifold: precision 1/2; the reference is fully covered
    assert precision_recall(near, np.concatenate([near, far])) == (0.5, 1.0)
    # samples cover one of two reference modes: precision 1, recall 1/2
    assert precision_recall(np.concatenate([near, far]), near) == (1.0, 0.5)


def test_a_point_exactly_on_a_radius_counts_as_inside():
    ref = np.arange(4, dtype=np.float32)[:, None]  # radius of 0 and 3 is 9; of 1 and 2 is 4
    samples = np.array([[6.0], [7.0], [8.0], [9.0]], np.float32)  # 6 is 9 away from 3: on its ball
    precision, _ = precision_recall(ref, samples)
    assert precision == 0.25


def test_too_few_points_for_k_nearest_neighbours():
    with pytest.raises(ValueError, match="more than k=3"):
        manifold_radii(np.zeros((3, 2), np.float32))


def test_distance_fn_serves_every_block_in_adm_orientation():
    """Own-set blocks for the radii, then reference rows x sample columns; its values decide."""
    rng = np.random.default_rng(14)
    ref = rng.normal(size=(11, 4)).astype(np.float32)
    samples = (rng.normal(size=(8, 4)) + np.repeat([[0.0], [3.0]], 4, 0)).astype(np.float32)
    calls = []

    def exact(u, v):
        calls.append((u, v))
        return ((u[:, None].astype(np.float64) - v[None]) ** 2).sum(-1).astype(np.float32)

    got = precision_recall(ref, samples, block=5, distance_fn=exact)
    ref_blocks = [(r, c) for r in (0, 5, 10) for c in (0, 5, 10)]
    sample_blocks = [(r, c) for r in (0, 5) for c in (0, 5)]
    cross_blocks = [(r, c) for r in (0, 5, 10) for c in (0, 5)]
    expected = (
        [(ref[r : r + 5], ref[c : c + 5]) for r, c in ref_blocks]
        + [(samples[r : r + 5], samples[c : c + 5]) for r, c in sample_blocks]
        + [(ref[r : r + 5], samples[c : c + 5]) for r, c in cross_blocks]
    )
    assert len(calls) == len(expected)
    for (u, v), (eu, ev) in zip(calls, expected, strict=True):
        np.testing.assert_array_equal(u, eu)
        np.testing.assert_array_equal(v, ev)

    d_rs, d_rr, d_ss = exact(ref, samples), exact(ref, ref), exact(samples, samples)
    ref_radii, sample_radii = np.sort(d_rr, 1)[:, 3], np.sort(d_ss, 1)[:, 3]
    precision = np.mean((d_rs <= ref_radii[:, None]).any(0))
    recall = np.mean((d_rs <= sample_radii[None, :]).any(1))
    assert got == (precision, recall)
    assert 0 < precision < 1 and 0 < recall < 1  # the data exercise both outcomes
