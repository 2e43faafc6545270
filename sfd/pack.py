"""`sfd pack`: sample shards -> the ADM evaluator's npz, plus a sample grid PNG (docs/method.md §4.4).

The npz holds `arr_0` uint8 [N, H, W, 3] and the labels as `arr_1`, in a seeded class-mixing
permutation: the ADM Inception Score averages over consecutive splits of 5,000 images, so
class-sorted files would score differently (docs/method.md §7.17). The permutation is
`numpy.random.Generator(PCG64(pack_seed)).permutation(N)` of the index-ordered set, so unlike the
official `os.walk` + `random.shuffle(42)` it does not depend on the filesystem. Entries are stored
uncompressed with a fixed zip timestamp, so the same samples give the same bytes (and sha256).

The images are staged in a temporary memory-mapped .npy next to the output and streamed into the
zip, so 50,000 images at 256² (9.8 GB) need no matching RAM. Both sizes are known up front: the
free space for them is checked before anything is written, and the staging file is allocated
(posix_fallocate) before it is mapped, so a full disk is an error message, never a SIGBUS.
"""

import json
import logging
import os
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from sfd.config import ConfigError
from sfd.errors import InputError
from sfd.io import atomic_path, output_errors, require_free_space, require_writable, sweep_temps, temp_file
from sfd.reads import view

log = logging.getLogger("sfd.pack")

# Experiment keys this command reads (sfd/reads.py): READS shape its output, ALSO_READS do not.
READS = ("sampling.pack_seed", "sampling.grid_classes", "sampling.grid_per_class")

_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_CHUNK = 1024
_ZIP_OVERHEAD = 1 << 16  # npy headers and zip64 records of the two entries, generously


def read_index(samples: Path) -> dict:
    path = samples / "index.json"
    if not path.is_file():
        raise ConfigError(f"{path}: no sample index (sampling unfinished? run `sfd sample` again)")
    try:
        index = json.loads(path.read_text())
    except ValueError as err:
        raise InputError(f"{path}: not valid JSON ({err}); run `sfd sample` again to rewrite it") from None
    covered = 0
    for entry in index["shards"]:
        if entry["start"] != covered:
            raise ConfigError(f"{path}: shards do not tile [0, {index['num_samples']}) at index {covered}")
        covered = entry["stop"]
    if covered != index["num_samples"]:
        raise ConfigError(f"{path}: shards cover {covered} of {index['num_samples']} samples")
    return index


def images_bytes(index: dict) -> int:
    return index["num_samples"] * int(np.prod(index["image_shape"]))


def staging_map(staging: Path, n: int, shape: tuple) -> np.memmap:
    """A writable [n, *shape] uint8 .npy map whose blocks are allocated on disk: writes into a
    sparse map on a full disk kill the process with SIGBUS instead of raising."""
    images = np.lib.format.open_memmap(staging, mode="w+", dtype=np.uint8, shape=(n, *shape))
    with open(staging, "rb+") as f:
        os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
    return images


def load_ordered(samples: Path, index: dict, staging: Path):
    """All images in global-index order in a memory map at `staging`, and the labels."""
    n, shape = index["num_samples"], tuple(index["image_shape"])
    images = staging_map(staging, n, shape)
    labels = np.empty(n, dtype=np.int64)
    for entry in index["shards"]:
        path = samples / entry["file"]
        try:
            with np.load(path) as shard:
                indices, shard_images, shard_labels = shard["indices"], shard["images"], shard["labels"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            raise InputError(
                f"{path}: unreadable sample shard ({type(err).__name__}: {err}); run "
                "`sfd sample` again to redo it"
            ) from None
        if not np.array_equal(indices, np.arange(entry["start"], entry["stop"])):
            raise ConfigError(f"{path}: indices differ from index.json's range")
        if shard_images.shape[1:] != shape:
            raise InputError(f"{path}: images {list(shard_images.shape[1:])}, index.json says {list(shape)}")
        images[entry["start"] : entry["stop"]] = shard_images
        labels[entry["start"] : entry["stop"]] = shard_labels
    return images, labels


def class_mixing_permutation(n: int, seed: int) -> np.ndarray:
    return np.random.Generator(np.random.PCG64(seed)).permutation(n)


def _write_npy_entry(zf: zipfile.ZipFile, name: str, array, order: np.ndarray) -> None:
    """Stream array[order] into the zip as `name`.npy (format 1.0 header, as np.save writes)."""
    header = {
        "descr": np.lib.format.dtype_to_descr(array.dtype),
        "fortran_order": False,
        "shape": (len(order), *array.shape[1:]),
    }
    info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
    with zf.open(info, "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(f, header)
        for start in range(0, len(order), _CHUNK):
            f.write(np.ascontiguousarray(array[order[start : start + _CHUNK]]).tobytes())


def write_adm_npz(path: Path, images, labels: np.ndarray, order: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            _write_npy_entry(zf, "arr_0", images, order)
            _write_npy_entry(zf, "arr_1", labels, order)


def grid_classes(labels: np.ndarray, num_classes: int, rows: int) -> list[int]:
    """`rows` classes spread evenly over the label range (only classes present in the set)."""
    present = np.unique(labels)
    wanted = np.unique(np.round(np.linspace(0, num_classes - 1, min(rows, len(present)))).astype(int))
    return [int(present[np.abs(present - c).argmin()]) for c in wanted]


def write_grid(
    path: Path, images, labels: np.ndarray, classes: list[int], per_class: int, pad: int = 2
) -> None:
    """One row per class: its first `per_class` images in index order, on a white background."""
    h, w = images.shape[1:3]
    canvas = np.full((len(classes) * (h + pad) + pad, per_class * (w + pad) + pad, 3), 255, np.uint8)
    for row, c in enumerate(classes):
        for col, i in enumerate(np.flatnonzero(labels == c)[:per_class]):
            y, x = pad + row * (h + pad), pad + col * (w + pad)
            canvas[y : y + h, x : x + w] = images[i]
    with atomic_path(path) as tmp:
        Image.fromarray(canvas).save(tmp, format="PNG")


def pack(samples: Path, out: Path, *, seed: int, grid: Path | None, rows: int, per_class: int) -> dict:
    """Write the ADM npz (and the grid). The output's directory must hold the npz and, meanwhile,
    the staging copy: twice the images' size, checked before anything is written."""
    index = read_index(samples)
    for path in (out, grid) if grid is not None else (out,):
        require_writable(path)
    require_free_space(out, 2 * (images_bytes(index) + 8 * index["num_samples"]) + _ZIP_OVERHEAD)
    sweep_temps(out.parent, out.name)
    with output_errors(out):
        fd, staging = temp_file(out, ".npy")
    os.close(fd)
    try:
        with output_errors(out):  # the staging copy's writes: shards that cannot be read are InputErrors
            images, labels = load_ordered(samples, index, staging)
        write_adm_npz(out, images, labels, class_mixing_permutation(len(labels), seed))
        if grid is not None:
            write_grid(grid, images, labels, grid_classes(labels, index["num_classes"], rows), per_class)
        del images
    finally:
        staging.unlink(missing_ok=True)
    log.info(
        "packed %d images %s from %s into %s (permutation seed %d)",
        len(labels),
        index["image_shape"],
        samples,
        out,
        seed,
    )
    return index


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML (sampling.pack_seed, grid sizes)")
    parser.add_argument(
        "--samples", required=True, type=Path, help="sample directory written by `sfd sample`"
    )
    parser.add_argument("--out", required=True, type=Path, help="output ADM npz (arr_0 images, arr_1 labels)")
    parser.add_argument("--grid", type=Path, default=None, help="also write a sample grid PNG here")


def main(args) -> int:
    scfg = view(args.config, __name__)["sampling"]
    pack(
        args.samples,
        args.out,
        seed=scfg["pack_seed"],
        grid=args.grid,
        rows=scfg["grid_classes"],
        per_class=scfg["grid_per_class"],
    )
    print(f"wrote {args.out}" + (f" and {args.grid}" if args.grid else ""))
    return 0
