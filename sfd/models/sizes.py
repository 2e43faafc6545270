"""LightningDiT sizes as plain data: torch-free, so the workflow can rank jobs by model cost
when the Snakefile is parsed without importing torch, and FLOPs can be counted (sfd.models.flops)."""

from sfd.config import ConfigError

# name -> (depth, hidden size D, heads). P, T, M are our toy sizes for the CPU pipeline.
MODEL_SIZES = {
    "P": (2, 64, 2),
    "T": (4, 96, 4),
    "M": (6, 192, 3),
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
    "1p0B": (24, 1536, 24),
    "1p6B": (28, 1792, 28),
}


def parse_model_type(model_type: str) -> tuple[str, int]:
    """'LightningDiT-XL/1' -> ('XL', 1); the schema has already checked the pattern."""
    size, patch = model_type.removeprefix("LightningDiT-").split("/")
    return size, int(patch)


def step_cost(model_type: str) -> int:
    """Relative compute of one training or sampling step: depth x width^2 x tokens (tokens
    scale as 1/patch^2 on a given latent)."""
    size, patch = parse_model_type(model_type)
    depth, width, _ = MODEL_SIZES[size]
    return depth * width * width // (patch * patch)


# Token width of the encoders REPA aligns to (the projector's output width).
REPA_DIMS = {
    "dinov2_vits14": 384,
    "dinov2_vits14_reg": 384,
    "dinov2_vitb14": 768,
    "dinov2_vitb14_reg": 768,
    "dinov2_vitl14": 1024,
    "dinov2_vitl14_reg": 1024,
    "dinov2_vitg14": 1536,
    "dinov2_vitg14_reg": 1536,
    "mae_base": 768,
    "mae_large": 1024,
    "clip_vit_base_patch16": 768,
    "clip_vit_large_patch14": 1024,
    "siglip_base_patch16_224": 768,
}


def repa_out_dim(model_cfg: dict) -> int:
    """Width of the REPA target tokens: `repa_out_dim` if given, else looked up by encoder name."""
    if model_cfg["repa_out_dim"] is not None:
        return model_cfg["repa_out_dim"]
    name = model_cfg["repa_dino_version"]
    if name not in REPA_DIMS:
        raise ConfigError(
            f"model.repa_dino_version: unknown encoder {name!r} (known: {', '.join(REPA_DIMS)}); "
            "set model.repa_out_dim to its token width"
        )
    return REPA_DIMS[name]
