"""Evaluator cost benchmark on CPU: detector feature extraction and precision/recall.

* features: images/s of `Detector.features` (pool_3 + mixed_6/conv) at the given batch on
  random uint8 images, for the toy detector's architecture (config/toy.yaml widths; the
  weights are untrained, which costs the same) or for any GraphDef passed with --detector;
* precision/recall: seconds for `precision_recall` on N x N random 2048-d features, i.e. three
  N x N fp16-first distance passes (reference radii, sample radii, the cross pass).

  python benchmarks/bench_eval.py [--images 3000] [--batch 100] [--pr-n 10000] [--dim 2048]
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from sfd.config import load_experiment
from sfd.evaluation import inception, toy_detector
from sfd.evaluation.metrics import precision_recall

REPO = Path(__file__).resolve().parent.parent


def toy_graph(path: Path) -> Path:
    cfg = load_experiment(REPO / "config" / "toy.yaml")["evaluation"]["toy_detector"]
    params = toy_detector.init_params(cfg["widths"], 10, cfg["seed"])
    path.write_bytes(
        toy_detector.export_graph_def(params, cfg["image_size"], {"benchmark": True}).SerializeToString()
    )
    return path


def feature_rate(graph: Path, num_images: int, batch: int, image_size: int) -> float:
    detector = inception.Detector(graph, batch_size=batch)
    data = np.random.default_rng(0).integers(0, 256, (num_images, image_size, image_size, 3), dtype=np.uint8)
    detector.features([data[:batch]], batch, desc="warm-up")
    start = time.perf_counter()
    detector.features((data[i : i + batch] for i in range(0, num_images, batch)), num_images)
    elapsed = time.perf_counter() - start
    detector.close()
    return num_images / elapsed


def pr_seconds(n: int, dim: int) -> tuple[float, tuple[float, float]]:
    rng = np.random.default_rng(0)
    ref = np.abs(rng.normal(0, 0.5, (n, dim))).astype(np.float32)  # non-negative, like pool_3
    samples = np.abs(rng.normal(0, 0.5, (n, dim))).astype(np.float32)
    start = time.perf_counter()
    result = precision_recall(ref, samples)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", type=Path, help="GraphDef to time (default: the toy architecture)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--pr-n", type=int, default=10000)
    parser.add_argument("--dim", type=int, default=2048)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        graph = args.detector or toy_graph(Path(tmp) / "toy.pb")
        rate = feature_rate(graph, args.images, args.batch, args.image_size)
    print(
        f"features: {rate:.0f} images/s ({graph.name if args.detector else 'toy detector'}, "
        f"{args.image_size}x{args.image_size}, batch {args.batch}, {args.images} images)"
    )
    seconds, (precision, recall) = pr_seconds(args.pr_n, args.dim)
    print(
        f"precision/recall: {seconds:.1f} s for {args.pr_n} x {args.pr_n} features of dim {args.dim} "
        f"(precision {precision:.4f}, recall {recall:.4f})"
    )


if __name__ == "__main__":
    main()
