"""Per-channel latent statistics and the normalisation they define (docs/method.md §1.3, §7.6, §7.20).

`latents_stats.pt` (texture, from key `latents`) and `latents_sv_stats.pt` (semantic, from
`latents_sv`) each hold {'mean', 'std'} of shape [1, C, 1, 1]: mean over (N, H, W) and torch's
unbiased std over the same dims, of `stats_samples` un-flipped latents. The official code picks
them with an unseeded np.random.choice; here the choice is seeded (one sample of rows serves both
files) and rows are read in sorted order. Released checkpoints must use the released files
(`sfd latent-stats --released`), which are validated the same way.
"""

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sfd.errors import InputError, MissingInputError
from sfd.io import torch_save
from sfd.latents.store import SEMANTIC, TEXTURE, open_shard, read_index

log = logging.getLogger(__name__)

# Experiment keys this command reads (sfd/reads.py): READS shape its output, ALSO_READS do not.
READS = ("seed", "latents.stats_samples", "latents.released_stats")

FILES = {TEXTURE: "latents_stats.pt", SEMANTIC: "latents_sv_stats.pt"}


@dataclass(frozen=True)
class LatentStats:
    """Texture and semantic statistics, each [1, C, 1, 1]."""

    tex_mean: torch.Tensor
    tex_std: torch.Tensor
    sem_mean: torch.Tensor
    sem_std: torch.Tensor

    @property
    def tex_channels(self) -> int:
        return self.tex_mean.shape[1]


def _read_stats(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    if not path.is_file():
        raise MissingInputError(
            f"{path}: missing (compute it with `sfd latent-stats`, or fetch the released one with --released)"
        )
    try:
        stats = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InputError(
            f"{path}: not a readable statistics file (truncated?): {type(err).__name__}; "
            "recompute it with `sfd latent-stats`"
        ) from None
    if not isinstance(stats, dict) or not {"mean", "std"} <= set(stats):
        raise InputError(f"{path}: expected a dict with 'mean' and 'std'")
    mean, std = stats["mean"].float(), stats["std"].float()
    if mean.ndim != 4 or mean.shape[0] != 1 or mean.shape[2:] != (1, 1) or std.shape != mean.shape:
        raise InputError(f"{path}: mean/std must be [1, C, 1, 1], got {list(mean.shape)} / {list(std.shape)}")
    if not bool((std > 0).all()):
        raise InputError(f"{path}: std has non-positive entries")
    return mean, std


def load_stats(directory) -> LatentStats:
    """Both statistics files of a latent directory (ours or the released ones)."""
    directory = Path(directory)
    tex = _read_stats(directory / FILES[TEXTURE])
    sem = _read_stats(directory / FILES[SEMANTIC])
    return LatentStats(*tex, *sem)


def normalize(tex: torch.Tensor, sem: torch.Tensor, stats: LatentStats, multiplier: float) -> torch.Tensor:
    """x1 = concat((tex - mu_tex) / sd_tex, (sem - mu_sem) / sd_sem) * multiplier, texture first.

    Inputs are [B, C, h, w] (or [C, h, w], which keeps its rank)."""
    tex_n = (tex - _like(stats.tex_mean, tex)) / _like(stats.tex_std, tex)
    sem_n = (sem - _like(stats.sem_mean, sem)) / _like(stats.sem_std, sem)
    return torch.cat([tex_n, sem_n], dim=-3) * multiplier


def denormalize_texture(x: torch.Tensor, stats: LatentStats, multiplier: float) -> torch.Tensor:
    """Texture latents for the VAE decoder from x [B, C, h, w]: x[:, :C_tex] * sd / multiplier + mu.
    Semantic channels are discarded, as at official sampling time."""
    tex = x[:, : stats.tex_channels]
    return tex * stats.tex_std.to(tex) / multiplier + stats.tex_mean.to(tex)


def _like(stat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (stat if x.ndim == 4 else stat[0]).to(x)


def sample_rows(num_items: int, samples: int, seed: int) -> np.ndarray:
    """Sorted, seeded choice without replacement of min(samples, num_items) row numbers."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_items, size=min(samples, num_items), replace=False))


def compute_stats(directory, samples: int, seed: int) -> LatentStats:
    """Compute both statistics from a seeded sample of un-flipped rows and write the two files."""
    directory = Path(directory)
    index = read_index(directory)
    rows = sample_rows(index["num_items"], samples, seed)
    starts = np.cumsum([0] + [s["count"] for s in index["shards"]])
    picked = {TEXTURE: [], SEMANTIC: []}
    for shard_no, shard in enumerate(tqdm(index["shards"], desc="latent-stats", mininterval=1.0)):
        local = rows[(rows >= starts[shard_no]) & (rows < starts[shard_no + 1])] - starts[shard_no]
        if not len(local):
            continue
        with open_shard(directory / shard["file"]) as f:
            for key in picked:
                sl = f.get_slice(key)
                picked[key] += [sl[int(i) : int(i) + 1] for i in local]
    result = []
    for key, name in FILES.items():
        latents = torch.cat(picked[key]).float()
        mean = latents.mean(dim=[0, 2, 3], keepdim=True)
        std = latents.std(dim=[0, 2, 3], keepdim=True)
        torch_save({"mean": mean, "std": std}, directory / name)
        result += [mean, std]
        log.info("%s: %s over %d rows (seed %d)", directory / name, key, len(latents), seed)
    return LatentStats(*result)


def fetch_released(spec: dict, directory) -> LatentStats:
    """Download the released statistics files into `directory` and validate them."""
    from sfd.hub import download

    for name in FILES.values():
        download(
            spec["repo_id"],
            spec[Path(name).stem],
            Path(directory) / name,
            revision=spec["revision"],
            repo_type=spec["repo_type"],
        )
    return load_stats(directory)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML (latents.stats_samples, seed)")
    parser.add_argument("--latents", required=True, help="latent directory (shards + index.json)")
    parser.add_argument(
        "--released",
        action="store_true",
        help="fetch latents.released_stats from the Hub instead of computing",
    )


def main(args) -> int:
    from sfd.config import ConfigError
    from sfd.reads import view

    cfg = view(args.config, __name__)
    if args.released:
        spec = cfg["latents"]["released_stats"]
        if spec is None:
            raise ConfigError(f"{args.config}: latents.released_stats is not set")
        fetch_released(spec, args.latents)
        return 0
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # one writer: the statistics are computed once, by rank 0
    compute_stats(args.latents, cfg["latents"]["stats_samples"], cfg["seed"])
    return 0
