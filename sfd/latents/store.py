"""On-disk layout of a latent directory: `shard-XXXXX.safetensors` files plus `index.json`.

Keys per shard (docs/method.md §1.4, with REPA tokens stored token-major): `latents`, `latents_flip`
(texture posterior samples [n, C_tex, h, w] float32), `latents_sv`, `latents_sv_flip` (semantic
[n, C_sem, h, w] float32), `feats`, `feats_flip` (encoder tokens [n, L, D] float16), `labels`
int64 [n], and `indices` int64 [n] (position of each row in the source image list). The *_flip
keys are absent when extraction ran with `flip: false`.

Shards are written atomically and carry their provenance in the safetensors metadata; the index
is written last, from the shards on disk, so its presence means the extraction finished.
"""

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sfd.errors import InputError, MissingInputError
from sfd.io import atomic_path, write_json

INDEX = "index.json"
FORMAT = "sfd-latents-v1"
TEXTURE, SEMANTIC, FEATS = "latents", "latents_sv", "feats"
_META = "sfd"


def shard_path(directory, shard: int) -> Path:
    return Path(directory) / f"shard-{shard:05d}.safetensors"


def write_shard(
    directory, shard: int, tensors: dict[str, torch.Tensor], metadata: dict | None = None
) -> Path:
    """Atomically write one shard. `metadata` goes into ONE safetensors metadata entry, as JSON:
    safetensors writes several entries in hash order, which would make equal shards differ."""
    path = shard_path(directory, shard)
    meta = {_META: json.dumps({"format": FORMAT, **(metadata or {})}, sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    return path


def open_shard(path):
    """safe_open of one shard; a truncated or foreign file is an InputError naming it."""
    try:
        return safe_open(str(path), framework="pt")
    except FileNotFoundError:
        raise MissingInputError(f"{path}: missing shard (rerun `sfd extract-latents` to redo it)") from None
    except Exception as err:
        raise InputError(
            f"{path}: unreadable shard ({err}); rerun `sfd extract-latents` on its directory to redo it"
        ) from None


def shard_metadata(path: Path) -> dict:
    with open_shard(path) as f:
        meta = f.metadata() or {}
    return json.loads(meta[_META]) if _META in meta else {}


def write_index(directory, **extra) -> dict:
    """Describe every shard in `directory` (sorted by name) in `index.json`; returns the index."""
    directory = Path(directory)
    shards, keys, skipped = [], {}, []
    for path in sorted(directory.glob("shard-*.safetensors")):
        meta = shard_metadata(path)
        with open_shard(path) as f:
            count = f.get_slice("labels").get_shape()[0]
            if count and not keys:
                keys = {
                    k: {"dtype": str(f.get_slice(k).get_dtype()), "shape": f.get_slice(k).get_shape()[1:]}
                    for k in f.keys()
                }
        shards.append({"file": path.name, "count": count, "skipped": meta.get("skipped", [])})
        skipped += meta.get("skipped", [])
    if not shards:
        raise MissingInputError(f"{directory}: no shard-*.safetensors to index")
    index = {
        "format": FORMAT,
        "num_items": sum(s["count"] for s in shards),
        "keys": keys,
        "num_skipped": len(skipped),
        "shards": shards,
        **extra,
    }
    write_json(index, directory / INDEX)
    return index


def read_index(directory) -> dict:
    """The index of a finished latent directory, with a clear error when there is none."""
    path = Path(directory) / INDEX
    if not path.is_file():
        raise MissingInputError(
            f"{path}: missing; the latent extraction has not finished (rerun `sfd extract-latents` to resume)"
        )
    try:
        index = json.loads(path.read_text())
    except ValueError as err:
        raise InputError(
            f"{path}: not valid JSON ({err}); rerun `sfd extract-latents` to rewrite it"
        ) from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise InputError(f"{path}: format {index.get('format')!r}, expected {FORMAT!r}")
    for key in (TEXTURE, SEMANTIC, FEATS, "labels"):
        if key not in index["keys"]:
            raise InputError(f"{path}: shards have no {key!r} key")
    return index
