"""`sfd evaluate`: FID, sFID, Inception Score, precision and recall of a sample batch, ADM-style.

With the toy detector it also reports `class_acc`, the fraction of samples the detector assigns to
their conditioning label (`arr_1`): does a class-conditional toy model draw the class it was asked for?

Both npz files, the detector and the output paths are checked before TensorFlow is even imported
(a reference of another image size is refused unless allowed explicitly; images whose values look
wrongly scaled are reported), and the metrics file is written atomically at the very end, so a
failed evaluation leaves no output behind. Reference features are cached in the user's cache
directory (`--cache-dir`, else $SFD_CACHE_DIR, else $XDG_CACHE_HOME/sfd or ~/.cache/sfd), never in
the working directory.
Precision/recall distances run through ADM's own TensorFlow graph (`tf_ops`), so their fp16
rounding is the one ADM's evaluator gets on the same machine.
"""

import csv
import logging
import os
from pathlib import Path

import numpy as np

from sfd.evaluation import EVALUATOR_VERSION
from sfd.evaluation.batches import (
    EvalInputError,
    iter_images,
    open_image_batch,
    range_warning,
    read_labels,
    require_finite,
    statistics,
)
from sfd.evaluation.metrics import (
    IS_SPLIT_SIZE,
    PR_NEIGHBOURHOOD,
    frechet_distance,
    inception_score,
    precision_recall,
)
from sfd.evaluation.reference import reference_features
from sfd.io import atomic_write, require_writable, sha256, write_json

log = logging.getLogger(__name__)

# Experiment keys this command reads (sfd/reads.py): READS shape its output, ALSO_READS do not.
READS = (
    "evaluation.num_samples",
    "evaluation.detector",
    "evaluation.metric_label",
    "evaluation.batch_size",
    "evaluation.softmax_batch_size",
)
SCALAR_FIELDS = tuple(  # the CSV row
    "metric_label fid sfid inception_score precision recall class_acc num_samples num_reference "
    "detector_kind samples_sha256 reference_sha256 detector_sha256 evaluator_version".split()
)


def default_cache_dir() -> Path:
    """$SFD_CACHE_DIR, else $XDG_CACHE_HOME/sfd, else ~/.cache/sfd; reference features go in eval/."""
    if os.environ.get("SFD_CACHE_DIR"):
        return Path(os.environ["SFD_CACHE_DIR"]) / "eval"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sfd" / "eval"


def check_sizes(samples, reference, allow_size_mismatch: bool) -> None:
    """Refuse a reference whose images differ in size from the samples: a 64x64 reference for
    32x32 samples gives numbers that look valid and mean nothing."""
    if samples.image_shape == reference.image_shape:
        return
    sizes = (
        f"{samples.path} holds {samples.image_shape[0]}x{samples.image_shape[1]} images, "
        f"{reference.path} {reference.image_shape[0]}x{reference.image_shape[1]}"
    )
    if not allow_size_mismatch:
        raise EvalInputError(f"{sizes}; pass --allow-size-mismatch to compare them anyway")
    log.warning("%s (allowed by --allow-size-mismatch)", sizes)


def resolve_metric_label(detector_kind: str, num_samples: int, configured: str | None) -> str:
    """The configured label, else FID-<N/1000>K for Inception and toy-FID for the toy detector.

    A configured label must start with "toy-" for the toy detector: its numbers are never FID-50K.
    """
    if configured is not None:
        if detector_kind == "toy" and not configured.startswith("toy-"):
            raise EvalInputError(
                f"metric_label {configured!r}: toy-detector results must be labelled 'toy-...'"
            )
        return configured
    if detector_kind == "toy":
        return "toy-FID"
    return f"FID-{num_samples // 1000}K" if num_samples % 1000 == 0 else f"FID-{num_samples}"


def check_inputs(
    samples, count: int, reference, detector_path: Path, cache_dir: Path, allow_size_mismatch: bool
) -> None:
    """Everything that can be wrong with the inputs, found before TensorFlow is loaded."""
    check_sizes(samples, reference, allow_size_mismatch)
    for batch in (samples, reference):
        if (warning := range_warning(batch)) is not None:
            log.warning("%s", warning)
    require_writable(cache_dir, directory=True)
    for batch, n in ((samples, count), (reference, reference.count)):
        if n <= PR_NEIGHBOURHOOD:
            raise EvalInputError(
                f"{batch.path}: {n} images; precision/recall need more than {PR_NEIGHBOURHOOD}"
            )
    if not detector_path.is_file():
        raise EvalInputError(
            f"{detector_path}: no such detector graph (fetch it with `sfd fetch-eval-assets`)"
        )


def result_notes(detector_kind: str, num_reference: int) -> dict:
    """What a reader of the numbers must know about how they were computed."""
    notes = {
        "inception_score": f"mean over consecutive splits of {IS_SPLIT_SIZE} samples in file order; "
        "order-sensitive (shuffle before packing)",
        "precision_recall": f"k={PR_NEIGHBOURHOOD} pool_3, vs all {num_reference} reference images; "
        "fp16-first distance blocks by ADM's TensorFlow graph on this machine",
    }
    if detector_kind == "toy":
        notes["detector"] = "toy detector trained on the toy classes: not comparable to Inception FID-50K"
        notes["class_acc"] = "fraction of samples whose argmax(pool @ W + b) of the toy detector is arr_1"
    return notes


def evaluate(
    samples_path,
    reference_path,
    detector_path,
    *,
    num_samples: int | None = None,
    label: str | None = None,
    metric_label: str | None = None,
    batch_size: int = 64,
    softmax_batch_size: int = 512,
    cache_dir=None,
    allow_size_mismatch: bool = False,
) -> dict:
    """All five ADM metrics of the first `num_samples` (default: all) images of `samples_path`.

    `label` (toy | inception), when given, must match the detector graph's kind; `cache_dir`
    defaults to `default_cache_dir()`.
    """
    samples = open_image_batch(samples_path, num_samples)
    reference = open_image_batch(reference_path)
    count = samples.count if num_samples is None else num_samples
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
    detector_path = Path(detector_path)
    check_inputs(samples, count, reference, detector_path, cache_dir, allow_size_mismatch)
    hashes = {
        "samples": sha256(samples.path),
        "reference": sha256(reference.path),
        "detector": sha256(detector_path),
    }

    from sfd.evaluation.inception import Detector  # TensorFlow from here on
    from sfd.evaluation.tf_ops import adm_distance_block

    detector = Detector(detector_path, batch_size, softmax_batch_size)
    try:
        if label is not None and label != detector.kind:
            raise EvalInputError(
                f"{detector_path}: is the {detector.kind} detector, but label {label!r} was asked for"
            )
        metric_label = resolve_metric_label(detector.kind, count, metric_label)
        ref = reference_features(reference, detector, cache_dir, hashes["reference"], hashes["detector"])
        pool, spatial = detector.features(
            iter_images(samples, batch_size, count), count, desc=f"samples {samples.path.name}"
        )
        require_finite(samples.path, pool=pool, spatial=spatial)
        if ref.stats.mu.shape != pool.shape[1:] or ref.stats_spatial.mu.shape != spatial.shape[1:]:
            raise EvalInputError(
                f"{reference.path}: statistics of {ref.stats.mu.shape}/{ref.stats_spatial.mu.shape} "
                f"features, but {detector_path} gives {pool.shape[1:]}/{spatial.shape[1:]}"
            )
        stats, stats_spatial, source = statistics(samples, pool, spatial, detector.kind)
        probs = detector.class_probs(pool)
        class_acc = None
        if detector.kind == "toy":
            labels = read_labels(samples, count, detector.num_classes)
            class_acc = float(np.mean(detector.predicted_classes(pool) == labels))
    finally:
        detector.close()

    log.info("computing metrics")
    precision, recall = precision_recall(ref.pool, pool, distance_fn=adm_distance_block())
    return {
        "metric_label": metric_label,
        "fid": frechet_distance(stats, ref.stats),
        "sfid": frechet_distance(stats_spatial, ref.stats_spatial),
        "inception_score": inception_score(probs),
        "precision": precision,
        "recall": recall,
        "class_acc": class_acc,
        "num_samples": count,
        "num_reference": reference.count,
        "detector_kind": detector.kind,
        "detector_info": detector.info,
        "samples": str(samples_path),
        "reference": str(reference_path),
        "detector": str(detector_path),
        "samples_sha256": hashes["samples"],
        "reference_sha256": hashes["reference"],
        "detector_sha256": hashes["detector"],
        "evaluator_version": EVALUATOR_VERSION,
        "statistics": {"samples": source, "reference": ref.source},
        "notes": result_notes(detector.kind, reference.count),
    }


def summary(result: dict) -> str:
    return (
        f"{result['metric_label']}: FID {result['fid']:.4f}  sFID {result['sfid']:.4f}  "
        f"IS {result['inception_score']:.3f}  precision {result['precision']:.4f}  "
        f"recall {result['recall']:.4f}  "
        + (f"class acc {result['class_acc']:.4f}  " if result["class_acc"] is not None else "")
        + f"({result['num_samples']} samples of {result['samples']}, "
        f"{result['num_reference']} reference images)"
    )


def write_csv_row(result: dict, path) -> None:
    with atomic_write(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=SCALAR_FIELDS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerow(result)


def add_arguments(parser) -> None:
    parser.add_argument("samples", help="sample batch npz (arr_0 uint8 [N, H, W, 3])")
    parser.add_argument(
        "--reference", required=True, help="reference batch npz (arr_0; mu/sigma/mu_s/sigma_s optional)"
    )
    parser.add_argument(
        "--detector", default="classify_image_graph_def.pb", help="detector GraphDef (default: %(default)s)"
    )
    parser.add_argument("--out", required=True, help="metrics JSON to write")
    parser.add_argument("--csv", help="also write the metrics as a one-row CSV")
    parser.add_argument(
        "--num-samples",
        type=int,
        help="evaluate the first N samples (default: evaluation.num_samples with --config, else all)",
    )
    parser.add_argument(
        "--label",
        choices=("toy", "inception"),
        help="assert the detector's kind (default: evaluation.detector with --config)",
    )
    parser.add_argument("--config", help="experiment YAML; its evaluation section gives the defaults")
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="reference-feature cache (default: $SFD_CACHE_DIR/eval, else $XDG_CACHE_HOME/sfd/eval or "
        "~/.cache/sfd/eval)",
    )
    parser.add_argument(
        "--allow-size-mismatch",
        action="store_true",
        help="evaluate although the reference images differ in size from the samples",
    )


def main(args) -> int:
    from sfd.reads import view

    cfg = view(args.config, __name__)["evaluation"] if args.config else {}
    for path in filter(None, (args.out, args.csv)):
        require_writable(path)
    result = evaluate(
        args.samples,
        args.reference,
        args.detector,
        num_samples=args.num_samples or cfg.get("num_samples"),
        label=args.label or cfg.get("detector"),
        metric_label=cfg.get("metric_label"),
        batch_size=cfg.get("batch_size", 64),
        softmax_batch_size=cfg.get("softmax_batch_size", 512),
        cache_dir=args.cache_dir,
        allow_size_mismatch=args.allow_size_mismatch,
    )
    write_json(result, args.out)
    if args.csv:
        write_csv_row(result, args.csv)
    print(summary(result))
    return 0
