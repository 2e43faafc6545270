"""Semantic VAE (docs/method.md §1.2): token-wise compression of encoder patch tokens to the semantic latent.

Tokens [B, L, D] -> encoder -> moments [B, L, 2C] -> [B, 2C, h, w] (token index = h*W + w) ->
posterior sample z [B, C, h, w] -> decoder (token-wise again) -> tokens [B, L, D]. There is no
position embedding: encoder tokens already carry position.

Module lists are nn.Sequential, so the state-dict keys are the official ones (`encoder.0` ...
`encoder.6`, `decoder.0` ... `decoder.6` for the paper's 4-block transformer) and the released
`semantic_ae_final.pt` loads as-is. Checkpoints (ours and the released one) share the official
training layout; the architecture is read from the YAML config embedded in them.
"""

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from sfd.checkpoint import CheckpointError, load_strict, safe_load
from sfd.errors import MissingInputError

ARCHS = ("linear", "mlp", "resnet", "transformer")


@dataclass(frozen=True)
class SemVAEArch:
    """Architecture. Defaults are the official constructor's, used where a config omits a key."""

    input_dim: int
    bottleneck_dim: int
    arch: str = "linear"
    variational: bool = False
    hidden_dim: int = 512
    num_layers: int = 2
    num_res_blocks: int = 2
    transformer_heads: int = 6
    transformer_blocks: int = 12

    PARAMS = ("hidden_dim", "num_layers", "num_res_blocks", "transformer_heads", "transformer_blocks")

    @classmethod
    def from_section(cls, section: dict, input_dim: int) -> "SemVAEArch":
        """From our `semvae:` config section and the encoder width D."""
        keys = ("bottleneck_dim", "arch", "variational") + cls.PARAMS
        return cls(input_dim=input_dim, **{k: section[k] for k in keys})

    @classmethod
    def from_official(cls, model: dict, input_dim: int) -> "SemVAEArch":
        """From the `model:` section of an official SemVAE config (configs/semvae_train/*.yaml)."""
        params = {k: v for k, v in (model.get("params") or {}).items() if k in cls.PARAMS}
        return cls(
            input_dim=input_dim,
            bottleneck_dim=model["bottleneck_dim"],
            arch=model["arch"],
            variational=model["variational"],
            **params,
        )

    def official_model(self) -> dict:
        """This architecture as an official `model:` section (what checkpoints embed)."""
        return {
            "variational": self.variational,
            "bottleneck_dim": self.bottleneck_dim,
            "arch": self.arch,
            "params": {k: getattr(self, k) for k in self.PARAMS},
        }


class SwiGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.gate = nn.Linear(dim_in, dim_out)
        self.up = nn.Linear(dim_in, dim_out)

    def forward(self, x):
        return F.silu(self.gate(x)) * self.up(x)


class ResBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        return x + self.mlp(self.norm(x))


class TransformerBlock(nn.Module):
    """Pre-norm block; torch's MultiheadAttention called as the official code calls it."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=0.0, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h)[0]
        return x + self.mlp(self.norm2(x))


def _swiglu_chain(dims: list[int], linear_last: bool) -> list[nn.Module]:
    """SwiGLU layers through `dims`, the last one a plain Linear when `linear_last`."""
    pairs = list(zip(dims[:-1], dims[1:]))
    return [
        nn.Linear(a, b) if linear_last and i == len(pairs) - 1 else SwiGLU(a, b)
        for i, (a, b) in enumerate(pairs)
    ]


def _layers(a: SemVAEArch, d_in: int, d_out: int, encoder: bool) -> list[nn.Module]:
    """The official layer lists; the decoder of `resnet` is the mirror, not the copy, of its encoder."""
    h = a.hidden_dim
    if a.arch == "linear":
        return [nn.Linear(d_in, d_out)]
    if a.arch == "mlp":
        return _swiglu_chain([d_in] + [h] * (a.num_layers - 1) + [d_out], linear_last=True)
    if a.arch == "resnet":
        blocks = [ResBlock(h) for _ in range(a.num_res_blocks)]
        if encoder:
            return [
                nn.Linear(d_in, h),
                *blocks,
                *_swiglu_chain([h] * a.num_layers + [d_out], linear_last=True),
            ]
        return [*_swiglu_chain([d_in] + [h] * a.num_layers, linear_last=False), *blocks, nn.Linear(h, d_out)]
    if a.arch == "transformer":
        blocks = [TransformerBlock(h, a.transformer_heads) for _ in range(a.transformer_blocks)]
        return [nn.Linear(d_in, h), *blocks, nn.LayerNorm(h), nn.Linear(h, d_out)]
    raise ValueError(f"unknown Semantic VAE arch {a.arch!r}; expected one of {ARCHS}")


class SemanticVAE(nn.Module):
    def __init__(self, arch: SemVAEArch):
        super().__init__()
        self.arch = arch
        moments = 2 * arch.bottleneck_dim if arch.variational else arch.bottleneck_dim
        self.encoder = nn.Sequential(*_layers(arch, arch.input_dim, moments, encoder=True))
        self.decoder = nn.Sequential(*_layers(arch, arch.bottleneck_dim, arch.input_dim, encoder=False))

    def encode(self, tokens: torch.Tensor, generator: torch.Generator | None = None):
        """(z [B, C, h, w], kl [B]). z is a posterior SAMPLE, mean + std * eps, never the mean.

        As diffusers' DiagonalGaussianDistribution: logvar clamped to [-30, 20], eps drawn with
        the moments' dtype in [B, C, h, w] order on the generator's device, and
        KL = 0.5 * sum(mean^2 + var - 1 - logvar) over the C*h*w elements of each sample.
        A non-variational model returns its code and a zero KL.
        """
        b, length, _ = tokens.shape
        side = math.isqrt(length)
        if side * side != length:
            raise ValueError(f"Semantic VAE needs a square token grid, got L={length}")
        moments = self.encoder(tokens).transpose(1, 2).reshape(b, -1, side, side)
        if not self.arch.variational:
            return moments, moments.new_zeros(b)
        mean, logvar = torch.chunk(moments, 2, dim=1)
        logvar = torch.clamp(logvar, -30.0, 20.0)
        std = torch.exp(0.5 * logvar)
        var = torch.exp(logvar)
        device = generator.device if generator is not None else mean.device
        eps = torch.randn(mean.shape, generator=generator, device=device, dtype=moments.dtype).to(mean.device)
        z = mean + std * eps
        kl = 0.5 * torch.sum(torch.pow(mean, 2) + var - 1.0 - logvar, dim=[1, 2, 3])
        return z, kl

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Tokens [B, L, D] from z [B, C, h, w]."""
        return self.decoder(z.flatten(2).transpose(1, 2))

    def forward(self, tokens: torch.Tensor, generator: torch.Generator | None = None):
        """(reconstructed tokens, z, kl), the official forward."""
        z, kl = self.encode(tokens, generator)
        return self.decode(z), z, kl


_INTERPOLATION = re.compile(r"\$\{([^}]+)\}")


def _resolve(node, root: dict):
    """Resolve whole-value OmegaConf references such as `${variables.bottleneck_dim}`.

    The official trainer embeds OmegaConf.to_yaml(config), which leaves references unresolved.
    """
    if isinstance(node, dict):
        return {k: _resolve(v, root) for k, v in node.items()}
    if isinstance(node, str) and (match := _INTERPOLATION.fullmatch(node.strip())):
        value = root
        for part in match.group(1).split("."):
            value = value[part]
        return _resolve(value, root)
    return node


def arch_from_checkpoint(ckpt: dict, source) -> SemVAEArch:
    """The architecture recorded in a checkpoint of the official training layout."""
    missing = [k for k in ("config", "input_dim", "model_state_dict") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{source}: not a Semantic VAE checkpoint, key '{missing[0]}' is missing")
    config = ckpt["config"]
    if not isinstance(config, str):  # an OmegaConf object rather than the trainer's OmegaConf.to_yaml text
        from omegaconf import OmegaConf

        config = OmegaConf.to_yaml(config)
    config = yaml.safe_load(config)
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{source}: embedded config has no `model:` section")
    try:
        arch = SemVAEArch.from_official(_resolve(config["model"], config), int(ckpt["input_dim"]))
    except (KeyError, TypeError) as err:
        raise CheckpointError(
            f"{source}: embedded config `model:` section: missing or bad key {err}"
        ) from None
    if arch.arch not in ARCHS:
        raise CheckpointError(f"{source}: unknown arch {arch.arch!r} in the embedded config")
    return arch


def load_semvae(path) -> SemanticVAE:
    """A Semantic VAE in eval mode on the CPU, from our checkpoints or the released
    `semantic_ae_final.pt`. A state dict that does not fit the embedded architecture raises a
    ValueError naming the file and the first mismatching key."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: no such Semantic VAE checkpoint")
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a Semantic VAE checkpoint (a {type(ckpt).__name__})")
    model = SemanticVAE(arch_from_checkpoint(ckpt, path))
    load_strict(model, ckpt["model_state_dict"], path)
    return model.eval()
