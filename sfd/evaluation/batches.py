"""Sample and reference batches: `.npz` files whose `arr_0` is uint8 [N, H, W, 3] in [0, 255].

`arr_0` is streamed from inside the zip, `batch_size` images at a time, as ADM does, so a 50K x
256 x 256 batch (10 GB) never has to fit in memory. Every problem is reported before any feature
is computed, with the file named in the message.
"""

import contextlib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sfd.errors import UserError
from sfd.evaluation.metrics import GaussianStats, feature_statistics

IMAGES_KEY = "arr_0"
LABELS_KEY = "arr_1"  # the conditioning class of each image, as `sfd pack` writes it
STATISTICS_KEYS = ("mu", "sigma", "mu_s", "sigma_s")


class EvalInputError(UserError, ValueError):
    """An input (sample batch, reference batch, detector graph) that cannot be evaluated."""


@dataclass(frozen=True)
class ImageBatch:
    """A validated `arr_0` image batch: where it is and what it holds."""

    path: Path
    count: int  # images stored in arr_0
    image_shape: tuple[int, int, int]  # H, W, 3
    keys: tuple[str, ...]  # every array in the npz

    @property
    def has_statistics(self) -> bool:
        return "mu" in self.keys


@contextlib.contextmanager
def _open_member(path: Path, key: str):
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n.removesuffix(".npy") for n in archive.namelist()]
            if key not in names:
                raise EvalInputError(f"{path}: no {key!r} array (it holds: {', '.join(names) or 'nothing'})")
            with archive.open(f"{key}.npy") as member:
                yield member, tuple(names)
    except zipfile.BadZipFile as err:
        raise EvalInputError(f"{path}: not a readable .npz archive ({err})") from None


def _read_header(member, path: Path, key: str):
    """(shape, fortran_order, dtype) of the .npy member; the stream is left at the first byte of data."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        version = np.lib.format.read_magic(member)
        if version not in readers:
            raise ValueError(f"unsupported .npy format version {version}")
        return readers[version](member)
    except ValueError as err:
        raise EvalInputError(f"{path}: {key} is not a valid .npy array ({err})") from None


def open_image_batch(path, num_images: int | None = None) -> ImageBatch:
    """Check that `path` holds at least `num_images` uint8 NHWC RGB images under `arr_0`."""
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"{path}: no such file")
    with _open_member(path, IMAGES_KEY) as (member, keys):
        shape, _, dtype = _read_header(member, path, IMAGES_KEY)
    if dtype != np.uint8:
        raise EvalInputError(
            f"{path}: {IMAGES_KEY} has dtype {dtype}; expected uint8 images with values in [0, 255]"
        )
    if len(shape) != 4 or shape[-1] != 3:
        raise EvalInputError(f"{path}: {IMAGES_KEY} has shape {shape}; expected [N, H, W, 3] (NHWC RGB)")
    wanted = 1 if num_images is None else num_images
    if shape[0] < wanted:
        raise EvalInputError(
            f"{path}: {IMAGES_KEY} holds {shape[0]} images, fewer than the {wanted} required"
        )
    return ImageBatch(path, shape[0], tuple(shape[1:]), keys)


def iter_images(batch: ImageBatch, batch_size: int, count: int | None = None) -> Iterator[np.ndarray]:
    """Yield the first `count` (default all) images of `batch` in file order, `batch_size` at a time."""
    count = batch.count if count is None else count
    with _open_member(batch.path, IMAGES_KEY) as (member, _):
        _, fortran_order, _ = _read_header(member, batch.path, IMAGES_KEY)
        if fortran_order:  # cannot be streamed row by row; such files are small in practice
            with np.load(batch.path) as data:
                images = data[IMAGES_KEY][:count]
            for start in range(0, count, batch_size):
                yield np.ascontiguousarray(images[start : start + batch_size])
            return
        image_bytes = int(np.prod(batch.image_shape))
        for start in range(0, count, batch_size):
            n = min(batch_size, count - start)
            data = member.read(n * image_bytes)
            if len(data) != n * image_bytes:
                raise EvalInputError(f"{batch.path}: {IMAGES_KEY} is truncated at image {start}")
            yield np.frombuffer(data, np.uint8).reshape(n, *batch.image_shape)


def read_labels(batch: ImageBatch, count: int, num_classes: int) -> np.ndarray:
    """The conditioning labels of the first `count` images, checked against the detector's classes."""
    if LABELS_KEY not in batch.keys:
        raise EvalInputError(
            f"{batch.path}: no {LABELS_KEY!r} labels; the toy detector's class accuracy needs the "
            "conditioning labels (`sfd pack` writes them)"
        )
    with np.load(batch.path) as data:
        labels = data[LABELS_KEY]
    if labels.ndim != 1 or len(labels) < count or not np.issubdtype(labels.dtype, np.integer):
        raise EvalInputError(
            f"{batch.path}: {LABELS_KEY} must be {count} or more integer labels, "
            f"got {labels.dtype} {labels.shape}"
        )
    labels = labels[:count].astype(np.int64)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise EvalInputError(
            f"{batch.path}: {LABELS_KEY} labels must lie in [0, {num_classes}), the detector's classes"
        )
    return labels


def range_warning(batch: ImageBatch, probe: int = 256) -> str | None:
    """Why the first `probe` images of `batch` look wrongly scaled (e.g. [0, 1] floats cast to
    uint8, or blank images), or None. A heuristic: real photos and decent samples span far more."""
    low, high = 255, 0
    for images in iter_images(batch, probe, min(probe, batch.count)):
        low, high = min(low, int(images.min())), max(high, int(images.max()))
    first = f"{batch.path}: the first {min(probe, batch.count)} images"
    if high <= 1:
        return f"{first} only take values in [{low}, {high}]; were [0, 1] floats cast to uint8 unscaled?"
    if low == high:
        return f"{first} are all the constant {low}"
    return None


def read_statistics(batch: ImageBatch) -> tuple[GaussianStats, GaussianStats]:
    """The (pool, spatial) statistics stored in the npz (ADM reference batches carry them)."""
    with np.load(batch.path) as data:
        missing = [k for k in STATISTICS_KEYS if k not in data]
        if missing:
            raise EvalInputError(f"{batch.path}: has 'mu' but lacks {', '.join(missing)}")
        return GaussianStats(data["mu"], data["sigma"]), GaussianStats(data["mu_s"], data["sigma_s"])


def statistics(batch: ImageBatch, pool: np.ndarray, spatial: np.ndarray, detector_kind: str):
    """(pool stats, spatial stats, where they came from) for features of the first len(pool) images.

    ADM's rule: statistics stored in the npz win over the features. We apply it only when they can
    describe these features: Inception detector and the whole batch evaluated.
    """
    if batch.has_statistics and detector_kind == "inception" and len(pool) == batch.count:
        return *read_statistics(batch), f"precomputed in {batch.path.name}"
    return feature_statistics(pool), feature_statistics(spatial), f"computed from {len(pool)} images"


def require_finite(path, **features: np.ndarray) -> None:
    """Fail, naming the file, if the detector produced NaN/inf features for any of its images."""
    for name, values in features.items():
        bad = ~np.isfinite(values).all(axis=1)
        if bad.any():
            raise EvalInputError(
                f"{path}: the detector produced non-finite {name} features for {int(bad.sum())} images "
                f"(first: index {int(np.argmax(bad))})"
            )
