"""ImageNet-1k as a class folder `<split>/<wnid>/*.JPEG`, local or fetched from the Hugging Face Hub.

Labels are indices into the sorted wnids, the standard 1000-class order of the released
checkpoints (ImageFolder order). The list ships as `imagenet_wnids.txt` (taken from timm's
`imagenet_synsets.txt`), so a folder with 1000 classes is checked against it.

The Hub source is the `ILSVRC/imagenet-1k` archive layout: tar archives whose members are named
`<original name>_<wnid>.JPEG`. Fetching downloads each archive through `sfd.hub` (token from the
environment, resumable) and unpacks it into the folder layout with the original file names, so
the file order (and hence the latent shard order) is that of the official ImageNet folder.
Each archive is unpacked into a staging folder, moved into place, synced, then marked done; a
killed fetch redoes at most the archive it was in.
"""

import argparse
import logging
import os
import re
import shutil
import tarfile
from functools import cache
from importlib import resources
from pathlib import Path

from sfd.errors import InputError, MissingInputError

log = logging.getLogger(__name__)

# Experiment keys this command reads (sfd/reads.py): READS shape its output, ALSO_READS do not.
READS = (
    "data.source",
    "data.hf.repo_id",
    "data.hf.revision",
    "data.hf.files.{split}",
    "data.hf.expected_images",
)
ALSO_READS = ("data.hf.keep_archives", "data.num_classes")

# torchvision.datasets.folder.IMG_EXTENSIONS: what ImageFolder (hence the official extraction) reads.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_MEMBER = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)_(?P<wnid>n\d{8})\.(?P<ext>jpe?g)$", re.IGNORECASE)


@cache
def wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in class-index order."""
    text = resources.files("sfd.data").joinpath("imagenet_wnids.txt").read_text()
    return tuple(text.split())


def scan_class_folder(root, num_classes: int | None = None) -> tuple[list[Path], list[int], list[str]]:
    """(files, labels, class names) of `root/<class>/...` in ImageFolder order.

    Classes are the sorted sub-folder names (hidden ones skipped); files are walked in sorted
    order and filtered by extension, exactly as torchvision's ImageFolder lists them.
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingInputError(f"{root}: image folder not found")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if num_classes is not None and len(classes) != num_classes:
        raise InputError(f"{root}: found {len(classes)} class folders, config says num_classes={num_classes}")
    if len(classes) == len(wnids()) and tuple(classes) != wnids():
        first = next(c for c, w in zip(classes, wnids()) if c != w)
        raise InputError(f"{root}: class folder {first!r} is not an ImageNet-1k wnid in the standard order")
    files, labels = [], []
    for label, name in enumerate(classes):
        count = len(files)
        for folder, _, names in sorted(os.walk(root / name, followlinks=True)):
            for fname in sorted(names):
                if fname.lower().endswith(IMG_EXTENSIONS):
                    files.append(Path(folder) / fname)
                    labels.append(label)
        if len(files) == count:
            raise InputError(f"{root / name}: class folder holds no image files")
    return files, labels, classes


def _unpack(archive: Path, dest: Path) -> int:
    """Unpack one `<name>_<wnid>.JPEG` archive into dest/<wnid>/<name>.JPEG; returns the count."""
    staging = dest / f".staging-{archive.name}"
    shutil.rmtree(staging, ignore_errors=True)
    known, staged = set(wnids()), []
    with tarfile.open(archive, "r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            match = _MEMBER.match(Path(member.name).name)
            if match is None or match["wnid"] not in known:
                raise InputError(f"{archive}: member {member.name!r} is not named <image>_<wnid>.JPEG")
            target = Path(match["wnid"]) / f"{match['name']}.{match['ext']}"
            (staging / target.parent).mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, open(staging / target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            staged.append(target)
    for target in staged:
        (dest / target.parent).mkdir(parents=True, exist_ok=True)
        os.replace(staging / target, dest / target)
    shutil.rmtree(staging)
    os.sync()
    return len(staged)


def fetch_hf(hf_cfg: dict, split: str, dest) -> int:
    """Download and unpack the split's archives into the class folder `dest`; returns #images."""
    from sfd.hub import download
    from sfd.io import write_json

    dest = Path(dest)
    archives = hf_cfg["files"].get(split) or []
    if not archives:
        raise InputError(f"data.hf.files.{split}: no archives configured")
    for filename in archives:
        marker = dest / f".done-{Path(filename).name}.json"
        if marker.is_file():
            log.info("%s: already unpacked", filename)
            continue
        local = dest / ".archives" / Path(filename).name
        download(hf_cfg["repo_id"], filename, local, revision=hf_cfg["revision"], repo_type="dataset")
        count = _unpack(local, dest)
        log.info("%s: %d images unpacked into %s", filename, count, dest)
        write_json({"archive": filename, "revision": hf_cfg["revision"], "images": count}, marker)
        if not hf_cfg["keep_archives"]:
            local.unlink()
    files, _, _ = scan_class_folder(dest)
    expected = hf_cfg["expected_images"].get(split)
    if expected is not None and len(files) != expected:
        raise InputError(f"{dest}: {len(files)} images after unpacking, expected {expected} for {split}")
    return len(files)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML with data.source: hf")
    parser.add_argument("--split", required=True, choices=["train", "val"])
    parser.add_argument("--out", required=True, help="class folder to fill (<out>/<wnid>/*.JPEG)")


def main(args) -> int:
    from sfd.config import ConfigError
    from sfd.reads import view

    data_cfg = view(args.config, __name__, split=args.split)["data"]
    if data_cfg["source"] != "hf":
        raise ConfigError(
            f"{args.config}: data.source is {data_cfg['source']!r}; fetch-imagenet needs 'hf' "
            "(a local folder is used in place: pass data.folder/<split> as --data)"
        )
    count = fetch_hf(data_cfg["hf"], args.split, args.out)
    log.info("%s: %d images in %d classes", args.out, count, data_cfg["num_classes"])
    return 0
