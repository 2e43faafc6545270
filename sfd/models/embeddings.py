"""Position, time and label embeddings of LightningDiT (docs/method.md §2.1–2.3).

Each one reproduces the official tensor layout exactly, because the released checkpoints store
the fixed tables (`pos_embed`, `feat_rope.freqs_cos/sin`) and were trained against these
conventions: a different but "equivalent" layout would load without error and give wrong outputs.
"""

import math

import numpy as np
import torch
from torch import nn


def sincos_pos_embed_2d(dim: int, grid_size: int) -> torch.Tensor:
    """Fixed 2-D sin-cos table [grid_size², dim] (MAE/DiT convention).

    The first dim/2 features encode the column (w) index and the last dim/2 the row (h) index;
    each half is [sin(pos·ω), cos(pos·ω)] with ω_k = 10000^(-k/(dim/4)). Computed in float64 with
    NumPy, then rounded to float32, as the official table was.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))
    coords = np.arange(grid_size, dtype=np.float32)
    w, h = np.meshgrid(coords, coords)  # w varies along a row: token index = h * grid + w

    def encode(pos):
        angles = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    table = np.concatenate([encode(w), encode(h)], axis=1)
    return torch.from_numpy(table).float()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Rotate each adjacent feature pair (x_2i, x_2i+1) to (-x_2i+1, x_2i): the EVA-02 pairing."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


class VisionRope(nn.Module):
    """2-D rotary embedding of EVA-02 ("VisionRotaryEmbeddingFast") over a square token grid.

    For head width d, each axis gets d/4 frequencies 1/θ^(2k/(d/2)), each repeated twice
    interleaved; the row (h) half comes first, then the column (w) half; the (h, w) grid is
    flattened row-major. The cos/sin tables are persistent buffers because the official model
    stores them in its checkpoints (`feat_rope.freqs_cos`, `feat_rope.freqs_sin`).
    """

    def __init__(self, head_dim: int, grid_size: int, theta: float = 10000.0):
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"2-D RoPE needs a head width divisible by 4, got {head_dim}")
        axis_dim = head_dim // 2
        freqs = 1.0 / (theta ** (torch.arange(0, axis_dim, 2)[: axis_dim // 2].float() / axis_dim))
        pos = torch.arange(grid_size) / grid_size * grid_size
        axis = torch.einsum("n,f->nf", pos, freqs).repeat_interleave(2, dim=-1)
        grid = torch.cat(
            [
                axis[:, None, :].expand(grid_size, grid_size, axis_dim),
                axis[None, :, :].expand(grid_size, grid_size, axis_dim),
            ],
            dim=-1,
        ).reshape(grid_size * grid_size, head_dim)
        self.register_buffer("freqs_cos", grid.cos())
        self.register_buffer("freqs_sin", grid.sin())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.freqs_cos + rotate_half(x) * self.freqs_sin


def timestep_features(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of t ∈ [0, 1] as given: no ×1000 scaling, cos first (docs/method.md §7.2)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs.to(t.device)[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """256 sinusoidal features -> Linear -> SiLU -> Linear, of width `hidden_size`."""

    def __init__(self, hidden_size: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(
            nn.Linear(frequency_dim, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_features(t, self.frequency_dim))


class LabelEmbedder(nn.Module):
    """Class embedding with label dropout for classifier-free guidance.

    The table has one extra row, the null class `num_classes`, only when dropout is enabled
    (as in DiT/LightningDiT, so a model trained without dropout has exactly `num_classes` rows).
    In training each label becomes the null class when `torch.rand < dropout_prob`;
    `force_drop_ids == 1` forces it in any mode.
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)

    def forward(self, labels: torch.Tensor, train: bool, force_drop_ids=None) -> torch.Tensor:
        if force_drop_ids is not None:
            labels = torch.where(force_drop_ids == 1, self.num_classes, labels)
        elif train and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(drop, self.num_classes, labels)
        return self.embedding_table(labels)
