"""Reference batches: writing the toy one, and caching the detector features of any one.

ADM recomputes the reference activations (10,000 Inception passes) on every evaluation; here they
are cached on disk under a key made of the sha256 of the reference file and of the detector graph,
so a changed file or detector can never be served stale features.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sfd.evaluation import EVALUATOR_VERSION
from sfd.evaluation.batches import EvalInputError, ImageBatch, iter_images, require_finite, statistics
from sfd.evaluation.metrics import GaussianStats
from sfd.io import atomic_write

log = logging.getLogger(__name__)

# Experiment keys this command reads (sfd/reads.py): READS shape its output, ALSO_READS do not.
READS = ("evaluation.reference_size",)


def make_reference(data_path, num: int, out) -> None:
    """Write the first `num` real images of a toy npz as an ADM-style reference batch.

    `arr_0` uint8 [num, H, W, 3] and the labels as `arr_1`. The toy splits cycle through the
    classes, so the first `num` images are class-balanced.
    """
    from sfd.data.toy import load_npz  # numpy-only

    try:
        images, labels, _ = load_npz(data_path)
    except (OSError, ValueError) as err:
        raise EvalInputError(str(err)) from None
    if num > len(images):
        raise EvalInputError(f"{data_path}: holds {len(images)} images, fewer than the {num} requested")
    with atomic_write(out) as f:
        np.savez(f, arr_0=images[:num], arr_1=labels[:num])


@dataclass
class ReferenceFeatures:
    pool: np.ndarray  # [M, P] float32, for precision/recall
    stats: GaussianStats  # pool_3, for FID
    stats_spatial: GaussianStats  # mixed_6/conv[..., :7], for sFID
    source: str  # where the statistics came from


def _cache_path(cache_dir, reference_sha256: str, detector_sha256: str, batch_size: int) -> Path:
    return Path(cache_dir) / f"reference-{reference_sha256[:16]}-{detector_sha256[:16]}-b{batch_size}.npz"


def _load_cached(path: Path, reference_sha256: str, detector_sha256: str) -> ReferenceFeatures | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as c:
            if str(c["reference_sha256"]) != reference_sha256 or str(c["detector_sha256"]) != detector_sha256:
                return None
            return ReferenceFeatures(
                c["pool"],
                GaussianStats(c["mu"], c["sigma"]),
                GaussianStats(c["mu_s"], c["sigma_s"]),
                str(c["source"]),
            )
    except (OSError, ValueError, KeyError) as err:
        log.warning("ignoring unreadable reference cache %s (%s)", path, err)
        return None


def reference_features(
    batch: ImageBatch, detector, cache_dir, reference_sha256: str, detector_sha256: str
) -> ReferenceFeatures:
    """pool features and statistics of a reference batch, from the cache or computed and cached."""
    path = _cache_path(cache_dir, reference_sha256, detector_sha256, detector.batch_size)
    cached = _load_cached(path, reference_sha256, detector_sha256)
    if cached is not None:
        log.info("reference features from cache %s", path)
        return cached
    pool, spatial = detector.features(
        iter_images(batch, detector.batch_size), batch.count, desc=f"reference {batch.path.name}"
    )
    require_finite(batch.path, pool=pool, spatial=spatial)
    stats, stats_spatial, source = statistics(batch, pool, spatial, detector.kind)
    with atomic_write(path) as f:
        np.savez(
            f,
            pool=pool,
            mu=stats.mu,
            sigma=stats.sigma,
            mu_s=stats_spatial.mu,
            sigma_s=stats_spatial.sigma,
            source=source,
            reference_sha256=reference_sha256,
            detector_sha256=detector_sha256,
            evaluator_version=EVALUATOR_VERSION,
        )
    log.info("cached reference features in %s", path)
    return ReferenceFeatures(pool, stats, stats_spatial, source)


def add_arguments(parser) -> None:
    parser.add_argument("--data", required=True, help="toy npz of real images (images, labels), e.g. val.npz")
    parser.add_argument(
        "--num", type=int, help="images in the reference (default: evaluation.reference_size)"
    )
    parser.add_argument("--config", help="experiment YAML; only evaluation.reference_size is read")
    parser.add_argument("--out", required=True, help="reference npz to write (arr_0, arr_1)")


def main(args) -> int:
    from sfd.config import validate
    from sfd.reads import view

    cfg = view(args.config, __name__)["evaluation"] if args.config else validate({}, "evaluation")
    num = args.num or cfg["reference_size"]
    make_reference(args.data, num, args.out)
    log.info("wrote %s: the first %d images of %s", args.out, num, args.data)
    return 0
