"""The DiT training set: normalised composite latents, labels and REPA targets (docs/method.md §1.3, §1.4).

Each item picks the un-flipped or the flipped triple (texture, semantic, tokens) with
probability 1/2, like the official loader, but the coin is a pure function of
(seed, epoch, index) instead of np.random: training resumed at any step sees the same data.
Shards are either all read into memory (toy) or opened lazily and read row by row (ImageNet,
where the REPA tokens alone exceed 1 TB).
"""

from pathlib import Path

import numpy as np
import torch

from sfd.errors import InputError
from sfd.latents.stats import load_stats, normalize
from sfd.latents.store import FEATS, SEMANTIC, TEXTURE, open_shard, read_index

IN_MEMORY_BYTES = 4 << 30  # load every shard up front below this size (toy), else read rows lazily
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4}


def flip_coin(seed: int, epoch: int, index: int) -> bool:
    """True when item `index` of `epoch` uses the flipped copies."""
    return bool(np.random.default_rng([seed, epoch, index]).random() < 0.5)


class LatentDataset(torch.utils.data.Dataset):
    """(x1 float32 [C_tex + C_sem, h, w], label int64, feats float32 [L, D]) per item.

    `texture_only` drops the semantic channels (x1 is [C_tex, h, w]): the texture-only
    LightningDiT baseline trains on the same latents, images and REPA targets as SFD.
    """

    def __init__(
        self,
        directory,
        multiplier: float = 1.0,
        seed: int = 0,
        in_memory: bool | None = None,
        texture_only: bool = False,
    ):
        self.directory = Path(directory)
        self.texture_only = texture_only
        self.index = read_index(self.directory)
        self.stats = load_stats(self.directory)
        self.multiplier = float(multiplier)
        self.seed = seed
        self.epoch = 0
        self.has_flip = f"{TEXTURE}_flip" in self.index["keys"]
        counts = [s["count"] for s in self.index["shards"]]
        self._starts = np.cumsum([0] + counts)
        tex_channels = self.index["keys"][TEXTURE]["shape"][0]
        if tex_channels != self.stats.tex_channels:
            raise InputError(
                f"{self.directory}: latents have {tex_channels} texture channels, "
                f"latents_stats.pt has {self.stats.tex_channels}"
            )
        if in_memory is None:
            in_memory = self._bytes() <= IN_MEMORY_BYTES
        self._memory = self._load_all() if in_memory else None
        self._handles = {}

    def __getstate__(self):
        return {**self.__dict__, "_handles": {}}  # file handles are per process

    def _bytes(self) -> int:
        keys = self.index["keys"]
        per_item = sum(_ITEMSIZE[keys[k]["dtype"]] * int(np.prod(keys[k]["shape"])) for k in self._keys())
        return per_item * len(self)

    def _keys(self) -> list[str]:
        base = [TEXTURE, SEMANTIC, FEATS]
        return base + [f"{k}_flip" for k in base] * self.has_flip + ["labels"]

    def _load_all(self) -> dict[str, torch.Tensor]:
        parts = {k: [] for k in self._keys()}
        for shard in filter(lambda s: s["count"], self.index["shards"]):  # skip shards emptied by bad images
            with open_shard(self.directory / shard["file"]) as f:
                for key in parts:
                    parts[key].append(f.get_tensor(key))
        return {k: torch.cat(v) for k, v in parts.items()}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return int(self.index["num_items"])

    def _row(self, key: str, index: int) -> torch.Tensor:
        if self._memory is not None:
            return self._memory[key][index]
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        if shard not in self._handles:  # opened on first use, i.e. inside each DataLoader worker
            self._handles[shard] = open_shard(self.directory / self.index["shards"][shard]["file"])
        row = index - int(self._starts[shard])
        return self._handles[shard].get_slice(key)[row : row + 1][0]

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} latents")
        suffix = "_flip" if self.has_flip and flip_coin(self.seed, self.epoch, index) else ""
        x1 = normalize(
            self._row(TEXTURE + suffix, index).float(),
            self._row(SEMANTIC + suffix, index).float(),
            self.stats,
            self.multiplier,
        )
        if self.texture_only:
            x1 = x1[: self.stats.tex_channels]
        return x1, self._row("labels", index).long(), self._row(FEATS + suffix, index).float()
