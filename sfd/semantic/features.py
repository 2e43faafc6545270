"""`sfd extract-features`: encoder patch tokens of raw images, the Semantic VAE training data.

Preprocessing is the SemVAE-training path of `sfd.semantic.encoder` (docs/method.md §7.9): Resize of the RAW
image's short side to `feature_resize` (PIL bicubic), CenterCrop(img_size), ImageNet mean/std. It
differs on purpose from latent extraction (ADM crop to 256, then bicubic resize of the tensor).

Output directory: `shard-XXXXX.safetensors`, each with `patch_tokens` float16 [n, L, D] and
`labels` int64 [n] for images [i*shard_size, (i+1)*shard_size) in dataset order, plus
`index.json`. Every shard is written atomically and carries a fingerprint of (encoder section,
encoder weights, data, limit) in its metadata: a rerun skips the shards that match, so a killed
job resumes where it stopped. Training shuffles; extraction never does.
"""

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from sfd.data.imagenet import scan_class_folder
from sfd.data.toy import load_npz
from sfd.device import get_device
from sfd.errors import InputError, MissingInputError
from sfd.io import atomic_path, directory_lock, sha256, write_json
from sfd.reads import view
from sfd.semantic.encoder import feature_transform, load_encoder

log = logging.getLogger(__name__)

# Experiment keys this command reads (sfd/reads.py): READS shape its output, ALSO_READS do not.
READS = (
    "semantic_encoder.pretrained",
    "semantic_encoder.timm_model",
    "semantic_encoder.timm_kwargs",
    "semantic_encoder.img_size",
    "semantic_encoder.feature_resize",
    "semantic_encoder.shard_size",
)
ALSO_READS = ("device", "semantic_encoder.num_workers")


class RawImages(Dataset):
    """`(transform(raw PIL image), label)` from a toy `.npz` (`images` uint8 [N,H,W,3]) or an
    ImageFolder tree `<class>/*.JPEG` (classes sorted by name = the standard ImageNet order; hidden
    folders, such as the `.archives` of `sfd fetch-imagenet`, are not classes)."""

    def __init__(self, path, transform):
        self.path = Path(path)
        self.transform = transform
        if self.path.suffix == ".npz":
            self.images, self.labels, _ = load_npz(self.path)
            self.files = None
        elif self.path.is_dir():
            self.files, self.labels, _ = scan_class_folder(self.path)
        else:
            raise MissingInputError(f"{self.path}: neither an .npz file nor an image folder")

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        if self.files is not None:
            with open(self.files[i], "rb") as f:
                image = Image.open(f).convert("RGB")  # as torchvision's ImageFolder loader
        else:
            image = Image.fromarray(self.images[i])
        return self.transform(image), int(self.labels[i])


class FeatureShards:
    """Random access to an extracted-features directory without loading it (fp16 -> float32)."""

    def __init__(self, directory):
        self.directory = Path(directory)
        index_path = self.directory / "index.json"
        if not index_path.is_file():
            raise MissingInputError(f"{index_path}: no features index (run `sfd extract-features`)")
        try:
            index = json.loads(index_path.read_text())
            self.num_tokens, self.dim = index["num_tokens"], index["dim"]
        except (ValueError, KeyError, TypeError) as err:
            raise InputError(
                f"{index_path}: not a features index ({type(err).__name__}: {err}); rerun "
                "`sfd extract-features`"
            ) from None
        self.files = [self.directory / s["file"] for s in index["shards"]]
        self.starts = np.cumsum([0] + [s["count"] for s in index["shards"]])
        self._handles = {}

    def __len__(self):
        return int(self.starts[-1])

    def _open(self, shard: int):
        if shard not in self._handles:
            try:
                self._handles[shard] = safe_open(str(self.files[shard]), framework="pt")
            except Exception as err:
                raise InputError(
                    f"{self.files[shard]}: unreadable features shard ({err}); rerun "
                    "`sfd extract-features` on its directory to redo it"
                ) from None
        return self._handles[shard]

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """(patch_tokens float32 [B, L, D], labels int64 [B]) of the given dataset indices."""
        tokens, labels = [], []
        for i in np.asarray(indices).tolist():
            shard = int(np.searchsorted(self.starts, i, side="right")) - 1
            j = i - int(self.starts[shard])
            handle = self._open(shard)
            tokens.append(handle.get_slice("patch_tokens")[j : j + 1])
            labels.append(handle.get_slice("labels")[j : j + 1])
        return torch.cat(tokens).float(), torch.cat(labels)


def _fingerprint(cfg: dict, encoder_path, data: RawImages, limit: int) -> str:
    encoder = sha256(encoder_path) if encoder_path else f"hub:{cfg['timm_model']}"
    section = {k: v for k, v in cfg.items() if k not in ("train", "num_workers")}
    key = {"semantic_encoder": section, "encoder": encoder, "data": str(data.path.resolve()), "count": limit}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _shard_is_done(path: Path, fingerprint: str) -> bool:
    """Whether `path` is a finished shard of this extraction; an unreadable one is redone."""
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("fingerprint") == fingerprint
    except Exception as err:
        log.warning("redoing %s: unreadable shard (%s)", path, err)
        return False


def extract(cfg: dict, data_path, encoder_path, out_dir, device, limit=None, batch_size=64) -> dict:
    """Write the feature shards and index of the first `limit` images of `data_path`, holding the
    lock of `out_dir` (and sweeping the temporary files of killed runs) throughout."""
    encoder = load_encoder(cfg, encoder_path).to(device)
    data = RawImages(data_path, feature_transform(cfg))
    with directory_lock(out_dir):
        return _extract(cfg, data, encoder, encoder_path, Path(out_dir), device, limit, batch_size)


def _extract(
    cfg: dict, data: RawImages, encoder, encoder_path, out_dir: Path, device, limit, batch_size: int
) -> dict:
    count = len(data) if limit is None else min(limit, len(data))
    fingerprint = _fingerprint(cfg, encoder_path, data, count)
    size = cfg["shard_size"]
    shards = []
    bar = tqdm(total=count, desc="extract-features", unit="img")
    for shard, start in enumerate(range(0, count, size)):
        indices = range(start, min(start + size, count))
        path = out_dir / f"shard-{shard:05d}.safetensors"
        shards.append({"file": path.name, "count": len(indices)})
        if _shard_is_done(path, fingerprint):
            bar.update(len(indices))
            continue
        tokens, labels = [], []
        for pixels, label in DataLoader(
            Subset(data, indices), batch_size=batch_size, num_workers=cfg["num_workers"]
        ):
            tokens.append(encoder.features(pixels.to(device)).half().cpu())
            labels.append(label.long())
            bar.update(len(label))
        with atomic_path(path) as tmp:
            save_file(
                {"patch_tokens": torch.cat(tokens).contiguous(), "labels": torch.cat(labels)},
                str(tmp),
                metadata={"fingerprint": fingerprint},
            )
        log.info("wrote %s (%d images)", path, len(indices))
    bar.close()
    index = {
        "num_samples": count,
        "num_tokens": encoder.num_tokens,
        "dim": encoder.dim,
        "dtype": "float16",
        "fingerprint": fingerprint,
        "data": str(data.path),
        "encoder": str(encoder_path) if encoder_path else f"hub:{cfg['timm_model']}",
        "preprocessing": f"Resize({cfg['feature_resize']}, bicubic) + CenterCrop({cfg['img_size']})"
        " + ImageNet mean/std",
        "shards": shards,
    }
    write_json(index, out_dir / "index.json")
    return index


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML (section semantic_encoder)")
    parser.add_argument("--data", required=True, help="toy .npz or ImageNet-style class folder of raw images")
    parser.add_argument(
        "--encoder",
        default=None,
        help="encoder weights (toy: from train-semantic-encoder); default: timm Hub weights",
    )
    parser.add_argument("--out", required=True, help="output directory of feature shards")
    parser.add_argument(
        "--limit", type=int, default=None, help="only the first N images (e.g. 500 val images)"
    )
    parser.add_argument("--batch-size", type=int, default=64)


def main(args) -> int:
    cfg = view(args.config, __name__)
    index = extract(
        cfg["semantic_encoder"],
        args.data,
        args.encoder,
        args.out,
        get_device(cfg["device"]),
        limit=args.limit,
        batch_size=args.batch_size,
    )
    log.info(
        "%d images -> %s: patch_tokens [N, %d, %d] in %d shards",
        index["num_samples"],
        args.out,
        index["num_tokens"],
        index["dim"],
        len(index["shards"]),
    )
    return 0
