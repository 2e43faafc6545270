"""Composite latents (docs/method.md §1.3, §1.4): extraction into shards, statistics, the training dataset.

Texture channels come first and semantic channels last; REPA targets are the semantic encoder's
tokens. `sfd.latents.extract` (the `extract-latents` command) is imported only when it runs.
"""

from sfd.latents.dataset import LatentDataset, flip_coin
from sfd.latents.stats import LatentStats, compute_stats, denormalize_texture, load_stats, normalize
from sfd.latents.store import read_index, shard_path, write_index, write_shard

__all__ = [
    "LatentDataset",
    "LatentStats",
    "compute_stats",
    "denormalize_texture",
    "flip_coin",
    "load_stats",
    "normalize",
    "read_index",
    "shard_path",
    "write_index",
    "write_shard",
]
