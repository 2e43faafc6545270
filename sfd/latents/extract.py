"""Encode a dataset into composite-latent shards (`sfd extract-latents`, docs/method.md §1.4).

For every image, the un-flipped and the horizontally flipped copy (the flipped latent comes
from encoding the flipped IMAGE, never from flipping a latent) go through
  * the texture VAE -> posterior sample `latents` [C_tex, h, w],
  * the semantic encoder -> tokens `feats` [L, D] (REPA targets, stored float16),
  * the Semantic VAE on those tokens -> posterior sample `latents_sv` [C_sem, h, w].

Shard k holds source images [k*S, (k+1)*S). Its posterior noise comes from generators seeded by
(seed, k), so a shard's bytes depend on neither the world size nor on which run wrote it: a
killed extraction rerun with the same command skips the finished (atomically written) shards
and produces the same directory as an uninterrupted run (on the same kind of device and CPU
thread count, which float results depend on). Under torchrun each rank takes every
world-size-th unfinished shard; rank 0 writes `index.json` after a barrier.
"""

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sfd import distributed as dist
from sfd.data.images import BadImageError, ImageDataset, to_tensor
from sfd.errors import InputError
from sfd.io import sha256
from sfd.latents.store import (
    FEATS,
    FORMAT,
    SEMANTIC,
    TEXTURE,
    shard_metadata,
    shard_path,
    write_index,
    write_shard,
)

log = logging.getLogger(__name__)

# Experiment keys this command reads (sfd/reads.py): READS shape its output, ALSO_READS do not.
READS = (
    "seed",
    "data.image_size",
    "data.num_classes",
    "texture_vae.arch",
    "semantic_encoder.pretrained",
    "semantic_encoder.timm_model",
    "semantic_encoder.img_size",
    "semantic_encoder.timm_kwargs",
    "latents.shard_size",
    "latents.batch_size",
    "latents.flip",
    "latents.on_bad_image",
)
ALSO_READS = ("device", "latents.num_workers")


class _Views(torch.utils.data.Dataset):
    """Items start..stop-1 of an ImageDataset as (x, x_flipped, label, index), or the bad item's
    description when it cannot be decoded and bad images are skipped."""

    def __init__(self, images: ImageDataset, start: int, stop: int, skip_bad: bool):
        self.images, self.start, self.stop, self.skip_bad = images, start, stop, skip_bad

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int):
        index = self.start + i
        try:
            arr = self.images.array(index)
        except BadImageError as err:
            if not self.skip_bad:
                raise
            return str(err)
        return to_tensor(arr), to_tensor(arr[:, ::-1]), int(self.images.labels[index]), index


def _collate(items):
    good = [item for item in items if not isinstance(item, str)]
    bad = [item for item in items if isinstance(item, str)]
    if not good:
        return None, bad
    x, x_flip, labels, indices = zip(*good)
    return (torch.stack(x), torch.stack(x_flip), torch.tensor(labels), torch.tensor(indices)), bad


def shard_seeds(seed: int, shard: int) -> tuple[int, int]:
    """Independent seeds of the texture and Semantic VAE posterior noise of one shard."""
    tex, sem = np.random.SeedSequence([seed, shard]).generate_state(2)
    return int(tex), int(sem)


@torch.no_grad()
def encode_batch(x: torch.Tensor, texture_vae, encoder, semvae, tex_gen, sem_gen) -> dict[str, torch.Tensor]:
    """Texture latents, tokens and semantic latents of images x in [-1, 1] (any batch size)."""
    tex = texture_vae.encode(x, generator=tex_gen)
    tokens = encoder.tokens(x)
    sem, _ = semvae.encode(tokens, generator=sem_gen)
    if tex.shape[-2:] != sem.shape[-2:]:
        raise ValueError(
            f"texture latents are {list(tex.shape[1:])} but semantic latents {list(sem.shape[1:])}: "
            "the spatial grids must match to be concatenated"
        )
    return {TEXTURE: tex.float().cpu(), SEMANTIC: sem.float().cpu(), FEATS: tokens.half().cpu()}


def extract_shard(
    images: ImageDataset,
    shard: int,
    models: tuple,
    out_dir: Path,
    *,
    shard_size: int,
    batch_size: int,
    seed: int,
    flip: bool,
    skip_bad: bool,
    device,
    num_workers: int = 0,
    provenance: dict | None = None,
) -> Path:
    """Encode images of shard `shard` and write it atomically, `provenance` in its metadata."""
    texture_vae, encoder, semvae = models
    start, stop = shard * shard_size, min(len(images), (shard + 1) * shard_size)
    loader = torch.utils.data.DataLoader(
        _Views(images, start, stop, skip_bad),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
    )
    tex_seed, sem_seed = shard_seeds(seed, shard)
    tex_gen = torch.Generator().manual_seed(tex_seed)
    sem_gen = torch.Generator().manual_seed(sem_seed)
    parts, skipped = {}, []
    for batch, bad in loader:
        skipped += bad
        for message in bad:
            log.warning("skipping %s", message)
        if batch is None:
            continue
        x, x_flip, labels, indices = batch
        views = torch.cat([x, x_flip]) if flip else x
        out = encode_batch(views.to(device), texture_vae, encoder, semvae, tex_gen, sem_gen)
        n = len(labels)
        for key, value in out.items():
            parts.setdefault(key, []).append(value[:n])
            if flip:
                parts.setdefault(f"{key}_flip", []).append(value[n:])
        parts.setdefault("labels", []).append(labels.long())
        parts.setdefault("indices", []).append(indices.long())
    if not parts:  # every image of the shard was skipped: an empty shard keeps the numbering
        parts = {"labels": [torch.zeros(0, dtype=torch.long)], "indices": [torch.zeros(0, dtype=torch.long)]}
    tensors = {key: torch.cat(value) for key, value in parts.items()}
    meta = {**_identity(start, stop, seed, flip, batch_size, provenance), "skipped": skipped}
    return write_shard(out_dir, shard, tensors, meta)


def _identity(start: int, stop: int, seed: int, flip: bool, batch_size: int, provenance: dict | None) -> dict:
    """Everything a shard's bytes depend on (the batch size too: it groups the posterior draws)."""
    return {
        "start": start,
        "stop": stop,
        "seed": seed,
        "flip": flip,
        "batch_size": batch_size,
        **(provenance or {}),
    }


def _is_done(out_dir: Path, shard: int, expected: dict) -> bool:
    """Whether the shard exists; an unreadable one is redone (with a warning), one written by a
    different run is an error."""
    path = shard_path(out_dir, shard)
    if not path.is_file():
        return False
    try:
        meta = shard_metadata(path)
    except InputError as err:
        log.warning("redoing %s", err)
        return False
    found = {k: meta.get(k) for k in expected}
    if meta.get("format") != FORMAT or found != expected:
        raise InputError(
            f"{path}: written with {found}, this run has {expected}; "
            "use another --out or delete the directory to start over"
        )
    return True


def extract_latents(
    images: ImageDataset,
    models: tuple,
    out_dir,
    *,
    shard_size: int,
    batch_size: int,
    seed: int,
    flip: bool = True,
    on_bad_image: str = "error",
    device="cpu",
    num_workers: int = 0,
    provenance: dict | None = None,
) -> dict | None:
    """Write every missing shard of `images` into `out_dir`, then (rank 0) the index.

    `models` is (texture_vae, semantic encoder, Semantic VAE), already on `device` and in eval
    mode. `provenance` (e.g. data path and model hashes) is recorded in every shard and checked
    when resuming. Returns the index on rank 0, None elsewhere. One run per directory: rank 0
    holds its lock (and sweeps the temporary files of killed runs) throughout.
    """
    with dist.output_lock(out_dir):
        return _extract_latents(
            images,
            models,
            Path(out_dir),
            shard_size=shard_size,
            batch_size=batch_size,
            seed=seed,
            flip=flip,
            on_bad_image=on_bad_image,
            device=device,
            num_workers=num_workers,
            provenance=provenance,
        )


def _extract_latents(
    images: ImageDataset,
    models: tuple,
    out_dir: Path,
    *,
    shard_size: int,
    batch_size: int,
    seed: int,
    flip: bool,
    on_bad_image: str,
    device,
    num_workers: int,
    provenance: dict | None,
) -> dict | None:
    rank, world_size = dist.get_rank(), dist.get_world_size()
    num_shards = -(-len(images) // shard_size)
    pending = []
    for k in range(num_shards):
        start, stop = k * shard_size, min(len(images), (k + 1) * shard_size)
        if not _is_done(out_dir, k, _identity(start, stop, seed, flip, batch_size, provenance)):
            pending.append(k)
    if rank == 0:
        log.info(
            "%s: %d of %d shards to do (%d images, %d ranks)",
            out_dir,
            len(pending),
            num_shards,
            len(images),
            world_size,
        )
    dist.barrier()
    mine = pending[rank::world_size]
    for k in tqdm(mine, desc=f"extract-latents[{rank}]", unit="shard", disable=not mine):
        extract_shard(
            images,
            k,
            models,
            out_dir,
            shard_size=shard_size,
            batch_size=batch_size,
            seed=seed,
            flip=flip,
            skip_bad=on_bad_image == "skip",
            device=device,
            num_workers=num_workers,
            provenance=provenance,
        )
    dist.barrier()
    if rank != 0:
        return None
    index = write_index(
        out_dir,
        num_source_images=len(images),
        shard_size=shard_size,
        seed=seed,
        flip=flip,
        batch_size=batch_size,
        provenance=provenance or {},
    )
    if index["num_skipped"]:
        log.warning("%s: %d undecodable images skipped (listed in index.json)", out_dir, index["num_skipped"])
    log.info("%s: %d latents in %d shards", out_dir, index["num_items"], len(index["shards"]))
    return index


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, help="experiment YAML (data, texture_vae, semantic_encoder, latents)"
    )
    parser.add_argument(
        "--data", required=True, help="toy .npz or ImageNet class folder (<dir>/<wnid>/*.JPEG)"
    )
    parser.add_argument(
        "--texture-vae", required=True, help="texture VAE checkpoint (ours or the released LDM one)"
    )
    parser.add_argument(
        "--encoder", help="semantic encoder weights (default: semantic_encoder's pretrained weights)"
    )
    parser.add_argument("--semvae", required=True, help="Semantic VAE checkpoint")
    parser.add_argument("--out", required=True, help="latent directory to fill (resumed if it exists)")


def main(args) -> int:
    from sfd.reads import view
    from sfd.semantic import load_encoder, load_semvae
    from sfd.tokenizers import load_texture_vae

    cfg = view(args.config, __name__)
    data, lcfg = cfg["data"], cfg["latents"]
    device = dist.init(cfg["device"])
    images = ImageDataset(args.data, data["image_size"], num_classes=data["num_classes"])
    provenance = {
        "data": str(args.data),
        "image_size": data["image_size"],
        "texture_vae": sha256(args.texture_vae),
        "semvae": sha256(args.semvae),
        "encoder": sha256(args.encoder) if args.encoder else cfg["semantic_encoder"]["timm_model"],
    }
    models = (
        load_texture_vae(args.texture_vae, arch=cfg["texture_vae"]["arch"]).to(device),
        load_encoder(cfg["semantic_encoder"], args.encoder).to(device),
        load_semvae(args.semvae).to(device),
    )
    extract_latents(
        images,
        models,
        args.out,
        shard_size=lcfg["shard_size"],
        batch_size=lcfg["batch_size"],
        seed=cfg["seed"],
        flip=lcfg["flip"],
        on_bad_image=lcfg["on_bad_image"],
        device=device,
        num_workers=lcfg["num_workers"],
        provenance=provenance,
    )
    dist.cleanup()
    return 0
