"""The texture tokenizer: the LDM KL autoencoder ("SD-VAE f16d32", docs/method.md §1.1).

Module and parameter names follow the LDM encoder/decoder exactly, so the released
`ldm-imagenet256-f16d32-50ep.ckpt` state dict loads strictly. The same class, configured small
(f4, few channels), is the toy tokenizer the pipeline trains itself (`sfd train-tokenizer`).
Arithmetic mirrors the reference forward (swish as x*sigmoid(x), attention as two bmm's), so
outputs match it number for number and not just up to rounding.
"""

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sfd.checkpoint import CheckpointError, first_mismatch, safe_load
from sfd.errors import MissingInputError

LOGVAR_RANGE = (-30.0, 20.0)


@dataclass(frozen=True)
class AEArch:
    """Encoder/decoder shape. Defaults are the released f16d32 (ImageNet 256, 32 latent channels)."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    z_channels: int = 32
    resolution: int = 256  # nominal input size; decides which levels get attention
    in_channels: int = 3
    out_ch: int = 3
    dropout: float = 0.0
    norm_groups: int = 32  # GroupNorm groups; LDM uses 32, the toy's narrow layers fewer

    def __post_init__(self):
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(self.attn_resolutions))
        for mult in self.ch_mult:
            if (self.ch * mult) % self.norm_groups:
                raise ValueError(
                    f"texture VAE width {self.ch}*{mult} does not divide into norm_groups={self.norm_groups}"
                )

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @classmethod
    def from_dict(cls, arch: dict | None) -> "AEArch":
        return arch if isinstance(arch, cls) else cls(**(arch or {}))


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


# ----------------------------------------------------------------------------
# Building blocks


class ResnetBlock(nn.Module):
    """Pre-activation residual block; a 1x1 `nin_shortcut` adapts the width when it changes."""

    def __init__(self, in_channels: int, out_channels: int, arch: AEArch):
        super().__init__()
        self.norm1 = group_norm(in_channels, arch.norm_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, arch.norm_groups)
        self.dropout = nn.Dropout(arch.dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1-conv projections."""

    def __init__(self, channels: int, arch: AEArch):
        super().__init__()
        self.norm = group_norm(channels, arch.norm_groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        b, c, height, width = x.shape
        q = self.q(h).reshape(b, c, height * width).permute(0, 2, 1)
        k = self.k(h).reshape(b, c, height * width)
        v = self.v(h).reshape(b, c, height * width)
        weights = torch.softmax(torch.bmm(q, k) * (int(c) ** -0.5), dim=2)
        h = torch.bmm(v, weights.permute(0, 2, 1)).reshape(b, c, height, width)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after zero-padding right and bottom by one (asymmetric, as in LDM)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0))


class Upsample(nn.Module):
    """Nearest x2 then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlock(nn.Module):
    def __init__(self, channels: int, arch: AEArch):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, arch)
        self.attn_1 = AttnBlock(channels, arch)
        self.block_2 = ResnetBlock(channels, channels, arch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Level(nn.Module):
    """One resolution level: `block` res blocks, each followed by `attn[i]` when attention is on."""

    def __init__(self, widths: list[tuple[int, int]], attention: bool, arch: AEArch):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(i, o, arch) for i, o in widths)
        self.attn = nn.ModuleList(AttnBlock(o, arch) for _, o in widths) if attention else nn.ModuleList()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


# ----------------------------------------------------------------------------
# Encoder, decoder, autoencoder


class Encoder(nn.Module):
    def __init__(self, arch: AEArch):
        super().__init__()
        self.conv_in = nn.Conv2d(arch.in_channels, arch.ch, 3, padding=1)
        self.down = nn.ModuleList()
        width, res = arch.ch, arch.resolution
        for i, mult in enumerate(arch.ch_mult):
            out = arch.ch * mult
            widths = [(width, out)] + [(out, out)] * (arch.num_res_blocks - 1)
            level = Level(widths, res in arch.attn_resolutions, arch)
            if i != len(arch.ch_mult) - 1:
                level.downsample = Downsample(out)
                res //= 2
            self.down.append(level)
            width = out
        self.mid = MidBlock(width, arch)
        self.norm_out = group_norm(width, arch.norm_groups)
        self.conv_out = nn.Conv2d(width, 2 * arch.z_channels, 3, padding=1)  # mean and logvar

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    """Mirror of the encoder with one extra res block per level; `up[i]` is stored by level index."""

    def __init__(self, arch: AEArch):
        super().__init__()
        levels = len(arch.ch_mult)
        width = arch.ch * arch.ch_mult[-1]
        res = arch.resolution // 2 ** (levels - 1)
        self.conv_in = nn.Conv2d(arch.z_channels, width, 3, padding=1)
        self.mid = MidBlock(width, arch)
        up = []
        for i in reversed(range(levels)):
            out = arch.ch * arch.ch_mult[i]
            widths = [(width, out)] + [(out, out)] * arch.num_res_blocks
            level = Level(widths, res in arch.attn_resolutions, arch)
            if i != 0:
                level.upsample = Upsample(out)
                res *= 2
            up.insert(0, level)
            width = out
        self.up = nn.ModuleList(up)
        self.norm_out = group_norm(width, arch.norm_groups)
        self.conv_out = nn.Conv2d(width, arch.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1,1] NCHW floats -> uint8 NHWC on the CPU: clamp(127.5x+128) then truncate (= round half up)."""
    images = torch.clamp(127.5 * images + 128.0, 0, 255)
    return images.permute(0, 2, 3, 1).to("cpu", dtype=torch.uint8)


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) per sample, summed over latent elements."""
    return 0.5 * torch.sum(mean.pow(2) + logvar.exp() - 1.0 - logvar, dim=[1, 2, 3])


class TextureVAE(nn.Module):
    """KL autoencoder; `encode` returns a posterior SAMPLE (not the mean), as the latents were made."""

    def __init__(self, arch: AEArch | dict | None = None):
        super().__init__()
        self.arch = AEArch.from_dict(arch)
        z = self.arch.z_channels
        self.encoder = Encoder(self.arch)
        self.decoder = Decoder(self.arch)
        self.quant_conv = nn.Conv2d(2 * z, 2 * z, 1)
        self.post_quant_conv = nn.Conv2d(z, z, 1)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, logvar) of q(z|x) for images x in [-1, 1]; logvar clamped to [-30, 20]."""
        mean, logvar = torch.chunk(self.quant_conv(self.encoder(x)), 2, dim=1)
        return mean, torch.clamp(logvar, *LOGVAR_RANGE)

    @staticmethod
    def sample(mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None):
        """mean + std * eps with eps drawn on the CPU (seeded `generator`, else the global one)
        and moved to the device, so a seed gives the same latent on every device."""
        eps = torch.randn(mean.shape, generator=generator).to(device=mean.device)
        return mean + torch.exp(0.5 * logvar) * eps

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.sample(*self.posterior(x), generator=generator)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))

    @torch.no_grad()
    def decode_to_uint8(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> uint8 [B, H, W, 3] CPU tensor, exactly as the released pipeline quantizes."""
        return to_uint8(self.decode(z))


# ----------------------------------------------------------------------------
# Checkpoints: ours ({'arch', 'state_dict', ...}) and the released LDM file


def save_texture_vae(model: TextureVAE, path, **extra) -> None:
    from sfd.io import torch_save

    torch_save({"arch": asdict(model.arch), "state_dict": model.state_dict(), **extra}, path)


def load_texture_vae(path, arch: AEArch | dict | None = None) -> TextureVAE:
    """Load our checkpoint or the released LDM one (raw or under `state_dict`, `loss.*` dropped).

    The architecture comes from `arch`, else from the file, else the released f16d32 default.
    Loading is strict: a mismatch raises naming the first offending key. The model is built on
    the meta device and takes the checkpoint's tensors, so no random init is wasted.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: texture VAE checkpoint not found")
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(ckpt).__name__}")
    state = ckpt.get("state_dict", ckpt)
    state = {k: v.float() for k, v in state.items() if not k.startswith("loss.")}
    arch = AEArch.from_dict(arch if arch is not None else ckpt.get("arch"))
    with torch.device("meta"):
        model = TextureVAE(arch)
    mismatch = first_mismatch(model.state_dict(), state)
    if mismatch is not None:
        raise CheckpointError(f"{path}: architecture mismatch: {mismatch} (texture VAE arch {arch})")
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)
