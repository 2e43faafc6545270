"""LightningDiT sizes and FLOP counts as plain data: torch-free, so the workflow can rank jobs by
model cost (and `sfd plan` estimate device-hours) without importing torch."""

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


# Token width of each REPA target encoder (`repa_dino_version`), as the official LightningDiT names them.
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

TIMESTEP_FREQUENCIES = 256  # sinusoidal features fed to each timestep MLP


def _block_macs(tokens: int, width: int, swiglu: bool, adaln_chunks: int) -> int:
    """Multiply-adds of one LightningDiT block on one image: qkv, the two attention products,
    the output projection, the MLP (SwiGLU: w12 and w3 at hidden int(2/3 * 4D)), the adaLN linear."""
    hidden = int(width * 4.0)
    mlp = 3 * width * int(2 / 3 * hidden) if swiglu else 2 * width * hidden
    return tokens * (4 * width * width + 2 * tokens * width + mlp) + width * adaln_chunks * width


def flops_per_image(model_cfg: dict, tokens: int, train: bool) -> int:
    """Matmul FLOPs (2 per multiply-add) of one image through the model of `model_cfg` (a validated
    `model:` section) at `tokens` transformer tokens: one forward, or with `train` the forward,
    the backward (twice the forward) and, with gradient checkpointing, the recomputed blocks.
    Norms, activations, RoPE and the loss are left out."""
    size, patch = parse_model_type(model_cfg["model_type"])
    depth, width, _ = MODEL_SIZES[size]
    patch_dim = model_cfg["in_chans"] * patch * patch
    chunks = 4 if model_cfg["wo_shift"] else 6
    blocks = depth * _block_macs(tokens, width, model_cfg["use_swiglu"], chunks)
    dual = model_cfg["semfirst_delta_t"] > 0 and model_cfg["semantic_chans"] > 0
    t_width = width // 2 if dual else width
    timestep = (2 if dual else 1) * (TIMESTEP_FREQUENCIES * t_width + t_width * t_width)
    ends = 2 * tokens * patch_dim * width + 2 * width * width  # patch embedding, final linear, its adaLN
    repa = 0
    if model_cfg["use_repa"]:  # the model projects block `repa_feat_depth` in eval mode too
        out = model_cfg["repa_out_dim"] or REPA_DIMS[model_cfg["repa_dino_version"]]
        hidden = model_cfg["repa_hidden_dim"]
        repa = tokens * (width * hidden + hidden * hidden + hidden * out)
    forward = 2 * (blocks + timestep + ends + repa)
    if not train:
        return forward
    return 3 * forward + (2 * blocks if model_cfg["use_checkpoint"] else 0)
