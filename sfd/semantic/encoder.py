"""Semantic encoder: patch tokens of a frozen ViT (DINOv2-B/14-reg for the paper, a toy ViT here).

One network, two preprocessing paths (docs/method.md §1.2, §7.9), and each caller uses exactly one:

* Latent extraction, REPA targets and semantic latents: `tokens(x)`. The [-1, 1] image the
  texture VAE sees -> (x+1)/2 -> ImageNet mean/std -> F.interpolate bicubic to `img_size`
  (align_corners False, no antialias; skipped when the size already matches, as for the toy).
* Semantic VAE training features: `feature_transform(cfg)` on the RAW image (Resize of the short
  side to `feature_resize` with PIL bicubic, CenterCrop(img_size), ToTensor, ImageNet mean/std),
  then `features(pixels)`. Used only by `sfd extract-features`.

DINOv2 through timm instead of torch.hub, reproducing the hub numbers. The hub model stores a
37x37 position table (518 px) and resamples it on every forward to the input grid with
F.interpolate(size=(16, 16), mode='bicubic', antialias=True) in float32 (interpolate_offset 0 for
the register models). timm created with img_size=224 resamples once, at load time, with the very
same call (checkpoint_filter_fn -> resample_abs_pos_embed), so the 16x16 table is bit-identical.
The hub adds the class position to the class token on every forward; timm's weight conversion
folds it into cls_token: the same float32 addition. The hub without xFormers computes
softmax((q * scale) @ k^T) @ v explicitly, which is timm's non-fused attention path, so fused
(SDPA) attention is switched off. What remains: an official run WITH xFormers, or with TF32 on
(the official extract_features.py enables it), differs from this at float rounding level.
"""

from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import nn
from torchvision import transforms

from sfd.checkpoint import CheckpointError, load_strict
from sfd.config import ConfigError
from sfd.errors import MissingInputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SemanticEncoder(nn.Module):
    """A timm VisionTransformer seen as a map from images to patch tokens [B, L, D]."""

    def __init__(self, vit: nn.Module, img_size: int):
        super().__init__()
        self.vit = vit
        self.img_size = img_size
        self.num_tokens = vit.patch_embed.num_patches
        self.dim = vit.embed_dim
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Latent-extraction preprocessing of x in [-1, 1] at the data resolution."""
        x = ((x + 1) / 2 - self.mean) / self.std
        if x.shape[-2:] != (self.img_size, self.img_size):
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bicubic", align_corners=False)
        return x

    @torch.no_grad()
    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Patch tokens of normalised pixels at img_size: after the final norm, without class and
        register tokens (DINOv2 `x_norm_patchtokens`). Called directly on the SemVAE-training path."""
        return self.vit.forward_features(pixels)[:, self.vit.num_prefix_tokens :]

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens [B, L, D] of x in [-1, 1] at the data resolution (latent-extraction path)."""
        return self.features(self.preprocess(x))


def feature_transform(cfg: dict) -> transforms.Compose:
    """SemVAE-training preprocessing of a RAW PIL image (official get_preprocess_transform)."""
    return transforms.Compose(
        [
            transforms.Resize(cfg["feature_resize"], interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(cfg["img_size"]),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def _unfuse_attention(vit: nn.Module) -> None:
    for module in vit.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False


def _create(cfg: dict, num_classes: int, pretrained: bool) -> nn.Module:
    vit = timm.create_model(
        cfg["timm_model"],
        pretrained=pretrained,
        img_size=cfg["img_size"],
        num_classes=num_classes,
        **cfg["timm_kwargs"],
    )
    _unfuse_attention(vit)
    return vit


def build_encoder(cfg: dict, num_classes: int = 0) -> SemanticEncoder:
    """The architecture of a `semantic_encoder` section with freshly initialised weights.

    `num_classes` > 0 adds timm's classifier head (the toy encoder is trained as a classifier).
    """
    return SemanticEncoder(_create(cfg, num_classes, pretrained=False), cfg["img_size"])


def read_weights(path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, a bare .pt/.pth state dict, or our {'model': ...} checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: no such encoder weights file")
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"{path}: not a readable encoder weights file (truncated?): {type(err).__name__}"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a state dict (a {type(state).__name__})")
    return state.get("model", state)


def load_encoder(cfg: dict, path=None) -> SemanticEncoder:
    """The frozen encoder of a `semantic_encoder` section, in eval mode on the CPU.

    Without `path` the timm Hub weights of `timm_model` are used (downloaded once into the
    huggingface_hub cache). With `path`, the file may be timm's weights, the original DINOv2
    `*_pretrain.pth` (converted by timm's filter) or a checkpoint of `sfd train-semantic-encoder`.
    """
    if path is None:
        if not cfg["pretrained"]:
            raise ConfigError(
                "semantic_encoder.pretrained is false: pass the weights file written by "
                "`sfd train-semantic-encoder`"
            )
        vit = _create(cfg, num_classes=0, pretrained=True)
    else:
        state = read_weights(path)
        num_classes = state["head.weight"].shape[0] if "head.weight" in state else 0
        vit = _create(cfg, num_classes=num_classes, pretrained=False)
        load_strict(vit, checkpoint_filter_fn(state, vit), path)
    encoder = SemanticEncoder(vit, cfg["img_size"]).eval()
    encoder.requires_grad_(False)
    return encoder
