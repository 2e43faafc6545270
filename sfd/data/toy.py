"""The embedded toy dataset: procedural, seeded, class-conditional 32x32 RGB images.

The class ("semantics") is only the shape and its layout: disk, square, triangle, ... . Everything
else ("texture") is drawn independently of the class: the fill pattern of the shape (solid,
stripes, checker, dots) and its colours, the background colour and per-pixel colour noise, plus
small jitter of position, size and rotation. So a semantic latent has something to capture that
a texture latent mostly spends its bits elsewhere on, as SFD assumes of ImageNet.

Numpy only: the TensorFlow evaluator process imports this module too.
Image i of a split is drawn from its own generator seeded by (seed, split, i), so it does not
depend on the split size; labels cycle through the classes (i mod K), so splits are balanced.
"""

import argparse
import logging
import zipfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sfd.errors import InputError, MissingInputError

log = logging.getLogger(__name__)

# Experiment keys this command reads (sfd/reads.py): READS shape its output, ALSO_READS do not.
READS = ("data.source", "data.toy", "data.num_classes", "data.image_size", "data.{split}_size")

SPLITS = {"train": 0, "val": 1}


def _disk(x, y):
    return x**2 + y**2 < 1.0


def _square(x, y):
    return np.maximum(abs(x), abs(y)) < 0.8


def _triangle(x, y):
    return (y < 0.65) & (y > 1.7 * abs(x) - 0.95)


def _ring(x, y):
    r2 = x**2 + y**2
    return (r2 < 1.0) & (r2 > 0.55**2)


def _plus(x, y):
    return ((abs(x) < 0.3) & (abs(y) < 1.0)) | ((abs(y) < 0.3) & (abs(x) < 1.0))


def _diamond(x, y):
    return abs(x) + abs(y) < 1.05


def _bars(x, y):
    return (abs(x) < 0.95) & (abs(abs(y) - 0.5) < 0.22)


def _two_disks(x, y):
    return ((x + 0.5) ** 2 + y**2 < 0.45**2) | ((x - 0.5) ** 2 + y**2 < 0.45**2)


def _ell(x, y):
    return ((x > -0.8) & (x < -0.3) & (abs(y) < 0.9)) | ((x > -0.8) & (x < 0.8) & (y > 0.4) & (y < 0.9))


def _saltire(x, y):
    return ((abs(x - y) < 0.35) | (abs(x + y) < 0.35)) & (np.maximum(abs(x), abs(y)) < 0.9)


SHAPES = {
    "disk": _disk,
    "square": _square,
    "triangle": _triangle,
    "ring": _ring,
    "plus": _plus,
    "diamond": _diamond,
    "bars": _bars,
    "two_disks": _two_disks,
    "ell": _ell,
    "saltire": _saltire,
}
CLASS_NAMES = tuple(SHAPES)


def _pattern(kind: str, rng: np.random.Generator, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A [H, W] mix weight in [0, 1] for a fill pattern at a random frequency, angle and phase."""
    if kind == "solid":
        return np.zeros_like(u)
    freq = rng.uniform(2.0, 5.0) * np.pi
    angle = rng.uniform(0.0, np.pi)
    s = np.cos(angle) * u + np.sin(angle) * v + rng.uniform(0.0, 2.0)
    t = -np.sin(angle) * u + np.cos(angle) * v + rng.uniform(0.0, 2.0)
    if kind == "stripes":
        return (np.sin(freq * s) > 0).astype(np.float64)
    if kind == "checker":
        return ((np.sin(freq * s) > 0) ^ (np.sin(freq * t) > 0)).astype(np.float64)
    return ((np.sin(freq * s) * np.sin(freq * t)) > 0.5).astype(np.float64)  # dots


def _colour_pair(rng: np.random.Generator, min_contrast: float):
    """Foreground and background colours whose mean intensities differ by >= min_contrast."""
    while True:
        fg, bg = rng.uniform(0.0, 1.0, 3), rng.uniform(0.0, 1.0, 3)
        if abs(fg.mean() - bg.mean()) >= min_contrast:
            return fg, bg


def render(label: int, rng: np.random.Generator, size: int, params: dict) -> np.ndarray:
    """One uint8 [size, size, 3] image of class `label`, all nuisance drawn from `rng`."""
    shape = SHAPES[CLASS_NAMES[label]]
    ss = 2  # supersampling for anti-aliased edges
    grid = (np.arange(size * ss) + 0.5) / (size * ss) * 2.0 - 1.0
    gy, gx = np.meshgrid(grid, grid, indexing="ij")
    shift = params["max_shift"]
    cx, cy = rng.uniform(-shift, shift, 2)
    scale = rng.uniform(*params["scale"])
    theta = rng.uniform(-params["max_rotation"], params["max_rotation"])
    dx, dy = (gx - cx) / scale, (gy - cy) / scale
    x = np.cos(theta) * dx + np.sin(theta) * dy
    y = -np.sin(theta) * dx + np.cos(theta) * dy
    coverage = shape(x, y).reshape(size, ss, size, ss).mean(axis=(1, 3))[..., None]

    pix = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    v, u = np.meshgrid(pix, pix, indexing="ij")
    fg, bg = _colour_pair(rng, params["min_contrast"])
    fg2 = np.clip(fg + rng.uniform(-0.35, 0.35, 3), 0.0, 1.0)
    patterns = params["patterns"]
    fill = _pattern(patterns[rng.integers(len(patterns))], rng, u, v)[..., None]
    foreground = (1.0 - fill) * fg + fill * fg2
    background = bg + rng.uniform(-params["gradient"], params["gradient"], 3) * u[..., None]
    image = coverage * foreground + (1.0 - coverage) * background
    image = image + rng.normal(0.0, rng.uniform(0.0, params["noise"]), image.shape)
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def make_split(data_cfg: dict, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, S, S, 3], labels int64 [N]) for split 'train' or 'val'."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    params = data_cfg["toy"]
    num_classes, size = data_cfg["num_classes"], data_cfg["image_size"]
    if num_classes > len(CLASS_NAMES):
        raise ValueError(f"data.num_classes: the toy dataset has at most {len(CLASS_NAMES)} classes")
    count = data_cfg[f"{split}_size"]
    labels = np.arange(count, dtype=np.int64) % num_classes
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    for i in tqdm(range(count), desc=f"toy {split}", unit="img", mininterval=1.0):
        rng = np.random.default_rng([params["seed"], SPLITS[split], i])
        images[i] = render(int(labels[i]), rng, size, params)
    return images, labels


def save_npz(path, images: np.ndarray, labels: np.ndarray, class_names) -> None:
    from sfd.io import atomic_write

    with atomic_write(path) as f:
        np.savez(f, images=images, labels=labels, class_names=np.asarray(class_names, dtype=str))


def load_npz(path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images, labels, class_names) from a toy npz, checking keys, dtypes and shapes."""
    if not Path(path).is_file():
        raise MissingInputError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:
        raise InputError(f"{path}: not a readable npz (truncated?): {err}") from None
    missing = {"images", "labels", "class_names"} - set(arrays)
    if missing:
        raise InputError(f"{path}: missing key(s) {sorted(missing)}")
    images, labels, names = arrays["images"], arrays["labels"], arrays["class_names"].tolist()
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise InputError(f"{path}: images must be uint8 [N,H,W,3], got {images.dtype} {list(images.shape)}")
    if labels.shape != images.shape[:1]:
        raise InputError(f"{path}: labels shape {list(labels.shape)} does not match {len(images)} images")
    return images, labels.astype(np.int64), names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML with data.source: toy")
    parser.add_argument("--split", required=True, choices=sorted(SPLITS))
    parser.add_argument("--out", required=True, help="output .npz")


def main(args) -> int:
    from sfd.config import ConfigError
    from sfd.reads import view

    data_cfg = view(args.config, __name__, split=args.split)["data"]
    if data_cfg["source"] != "toy":
        raise ConfigError(f"{args.config}: data.source is {data_cfg['source']!r}; make-toy-data needs 'toy'")
    images, labels = make_split(data_cfg, args.split)
    save_npz(args.out, images, labels, CLASS_NAMES[: data_cfg["num_classes"]])
    log.info(
        "wrote %s: %d images %s, %d classes", args.out, len(images), images.shape[1:], data_cfg["num_classes"]
    )
    return 0
