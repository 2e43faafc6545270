"""The metric maths of the ADM evaluator, in numpy and scipy only.

Fréchet distance (FID on pool_3, sFID on mixed_6/conv[..., :7]), Inception Score and improved
precision/recall (Kynkäänniemi et al. 2019, k = 3). Every function keeps the operation order and
dtypes of guided-diffusion's `evaluations/evaluator.py` (docs/method.md §5.1): given the same features,
FID, sFID and IS are the numbers ADM computes.

Precision/recall take the distance block as a function (`distance_fn`), because their numbers
hinge on how the fp16 squared distances next to a k-NN radius are rounded, and that is a
property of the TensorFlow kernels of the machine (a CPU accumulates fp16 reductions otherwise
than a GPU). `sfd evaluate` therefore passes ADM's own graph, `tf_ops.adm_distance_block()`, and
gets ADM's numbers on the machine it runs on. `pairwise_distances` here is the numpy statement
of that block as a GPU computes it (fp32 accumulation): the default, for the maths tests and for
callers without TensorFlow. Radii and the coverage loop are ADM's on any `distance_fn`.
"""

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import linalg

log = logging.getLogger(__name__)

IS_SPLIT_SIZE = 5000  # consecutive samples per Inception Score split (10 splits for 50K)
PR_NEIGHBOURHOOD = 3  # k of the k-NN radii
PR_BLOCK_SIZE = 10000  # rows and columns per distance block; the fp16/fp32 choice is per block

DistanceFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(u [m, D], v [n, D]) float32 -> squared Euclidean distances [m, n] float32: one ADM block."""

# ----------------------------------------------------------------------------
# Fréchet distance


@dataclass
class GaussianStats:
    """Mean and covariance of a feature set: what FID and sFID compare."""

    mu: np.ndarray
    sigma: np.ndarray


def feature_statistics(features: np.ndarray) -> GaussianStats:
    """mu in the features' own dtype (float32 for detector output) and the unbiased float64 cov."""
    return GaussianStats(np.mean(features, axis=0), np.cov(features, rowvar=False))


def _sqrtm(matrix: np.ndarray) -> np.ndarray:
    # `disp` is left at its default: it is deprecated since SciPy 1.16 and the matrix returned is
    # the same either way. A singular product shows up as inf/nan, which the caller handles.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return linalg.sqrtm(matrix)


def frechet_distance(sample: GaussianStats, reference: GaussianStats, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2), sample first, as ADM orders them.

    A non-finite square root is retried once with eps*I added to both covariances; a complex one
    is accepted (real part) only if its diagonal is real to within 1e-3.
    """
    mu1, mu2 = np.atleast_1d(sample.mu), np.atleast_1d(reference.mu)
    sigma1, sigma2 = np.atleast_2d(sample.sigma), np.atleast_2d(reference.sigma)
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors differ in length: sample {mu1.shape}, reference {mu2.shape}")
    if sigma1.shape != sigma2.shape:
        raise ValueError(f"covariances differ in shape: sample {sigma1.shape}, reference {sigma2.shape}")

    diff = mu1 - mu2
    covmean = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        warnings.warn(
            f"singular covariance product; adding {eps} to the diagonal of both covariances", stacklevel=2
        )
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(
                f"sqrt of the covariance product has an imaginary component "
                f"{np.max(np.abs(covmean.imag)):.3g}; the statistics are not valid covariances"
            )
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


# ----------------------------------------------------------------------------
# Inception Score


def inception_score(probs: np.ndarray, split_size: int = IS_SPLIT_SIZE) -> float:
    """Mean over consecutive splits of exp(mean_i KL(p(y|x_i) || p(y))), p(y) the split mean.

    Order-sensitive: which samples share a split changes the score, hence the seeded class-mixing
    shuffle before packing (docs/method.md §7.17). The terms p log p with p == 0 are taken as 0 (their
    limit); ADM's code would turn them into NaN, and it is identical wherever it is finite.
    """
    if probs.ndim != 2 or len(probs) == 0:
        raise ValueError(f"class probabilities must be a non-empty [N, classes] array, got {probs.shape}")
    scores = []
    for start in range(0, len(probs), split_size):
        part = probs[start : start + split_size]
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        kl = np.where(part > 0, kl, 0)
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores))


# ----------------------------------------------------------------------------
# Precision and recall


def _half_sum_of_squares(x16: np.ndarray) -> np.ndarray:
    """Row-wise sum of fp16-rounded squares, accumulated in fp32 and rounded once to fp16."""
    with np.errstate(over="ignore"):
        return np.square(x16).sum(axis=1, dtype=np.float32).astype(np.float16)


def _squared_distances_fp16(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """max(|u|^2 - 2 u.v + |v|^2, 0) with inputs cast to float16, as ADM's fp16 distance block.

    Products of two fp16 numbers are exact in fp32, the dot products and norms accumulate in fp32
    and are rounded once to fp16 (TensorFlow's fp16 GEMM and reductions on the GPUs that produced
    the ADM numbers); each element-wise step then rounds to fp16 like the fp16 graph does.
    """
    u16, v16 = u.astype(np.float16), v.astype(np.float16)
    norm_u, norm_v = _half_sum_of_squares(u16), _half_sum_of_squares(v16)
    with np.errstate(over="ignore", invalid="ignore"):
        uv = (u16.astype(np.float32) @ v16.astype(np.float32).T).astype(np.float16)
        d = (norm_u[:, None] - np.float16(2) * uv) + norm_v[None, :]
    return np.maximum(d, np.float16(0))


def _squared_distances_fp32(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    u, v = u.astype(np.float32), v.astype(np.float32)
    norm_u, norm_v = np.square(u).sum(axis=1), np.square(v).sum(axis=1)
    return np.maximum((norm_u[:, None] - 2 * (u @ v.T)) + norm_v[None, :], np.float32(0))


def pairwise_distances(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances [len(u), len(v)] in float32: fp16 first, the whole block again
    in fp32 if any fp16 entry is not finite (overflow past 65504).

    ADM's distance block with GPU rounding; TensorFlow on a CPU rounds some entries differently,
    which is why `sfd evaluate` runs the block through TensorFlow instead (`tf_ops`).
    """
    d = _squared_distances_fp16(u, v)
    if np.isfinite(d).all():
        return d.astype(np.float32)
    log.debug("fp16 distance block overflowed; recomputing it in fp32")
    return _squared_distances_fp32(u, v)


def manifold_radii(
    features: np.ndarray,
    k: int = PR_NEIGHBOURHOOD,
    block: int = PR_BLOCK_SIZE,
    *,
    distance_fn: DistanceFn = pairwise_distances,
) -> np.ndarray:
    """Squared distance of each point to its k-th nearest neighbour within its own set.

    The value at sorted position k of the point's whole distance row (`block` rows at a time,
    filled `block` columns at a time); position 0 is the point itself. ADM partitions at every
    position 0..k, which leaves the same value at position k.
    """
    n = len(features)
    if n <= k:
        raise ValueError(f"need more than k={k} feature vectors for k-NN radii, got {n}")
    radii = np.empty(n, np.float32)
    rows = np.empty((min(block, n), n), np.float32)
    for r0 in range(0, n, block):
        r1 = min(r0 + block, n)
        for c0 in range(0, n, block):
            c1 = min(c0 + block, n)
            rows[: r1 - r0, c0:c1] = distance_fn(features[r0:r1], features[c0:c1])
        radii[r0:r1] = np.partition(rows[: r1 - r0], k, axis=1)[:, k]
    return radii


def precision_recall(
    reference: np.ndarray,
    samples: np.ndarray,
    k: int = PR_NEIGHBOURHOOD,
    block: int = PR_BLOCK_SIZE,
    *,
    distance_fn: DistanceFn = pairwise_distances,
) -> tuple[float, float]:
    """Improved precision and recall of `samples` against `reference` (pool_3 features).

    Precision: fraction of samples inside some reference k-NN ball; recall: fraction of reference
    points inside some sample k-NN ball; inside means distance <= radius, both float32. Distances
    are taken reference-rows by sample-columns, the orientation ADM uses (it matters in fp16).
    """
    ref_radii = manifold_radii(reference, k, block, distance_fn=distance_fn)
    sample_radii = manifold_radii(samples, k, block, distance_fn=distance_fn)
    ref_covered = np.zeros(len(reference), bool)
    sample_covered = np.zeros(len(samples), bool)
    for r0 in range(0, len(reference), block):
        r1 = min(r0 + block, len(reference))
        for s0 in range(0, len(samples), block):
            s1 = min(s0 + block, len(samples))
            d = distance_fn(reference[r0:r1], samples[s0:s1])
            ref_covered[r0:r1] |= np.any(d <= sample_radii[None, s0:s1], axis=1)
            sample_covered[s0:s1] |= np.any(d <= ref_radii[r0:r1, None], axis=0)
    return float(np.mean(sample_covered.astype(np.float64))), float(np.mean(ref_covered.astype(np.float64)))
