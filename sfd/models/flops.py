"""FLOPs of the LightningDiT per image, counted from the architecture (torch-free).

Only matrix products count (a multiply-add is 2 FLOPs); norms, RoPE, activations, the loss and the
optimizer are left out, as in the usual model-FLOPs-utilisation (MFU) convention. What runs per
token is multiplied by the number of tokens, what runs per image (time and label embedding, every
adaLN projection) is counted once. A training image costs 3x its forward (the backward computes
gradients of activations and of weights, each a forward's worth); activation recomputation under
`use_checkpoint` is not model work and is not counted.

For XL/1 at 256 tokens this gives 0.73 TFLOP per training image (REPA head included). The
rule of thumb 6 x parameters x tokens gives 1.05 TFLOP for the same model: it charges the adaLN
projections (a third of the parameters) once per token although they run once per image.
MFU figures here use the architectural count.
"""

from sfd.models.sizes import MODEL_SIZES, parse_model_type, repa_out_dim

TIME_FREQUENCY_DIM = 256  # sinusoidal features fed to each timestep embedder


def _linear(n_in: int, n_out: int, rows: int = 1) -> int:
    return 2 * rows * n_in * n_out


def forward_flops(model_cfg: dict, input_size: int, *, repa_head: bool) -> int:
    """FLOPs of one forward for one image of a `model:` section (schema defaults filled) on an
    `input_size` latent grid; `repa_head` adds the REPA projector (run in training only)."""
    size, patch = parse_model_type(model_cfg["model_type"])
    depth, width, _ = MODEL_SIZES[size]
    tokens = (input_size // patch) ** 2
    patch_dim = patch * patch * model_cfg["in_chans"]
    mlp_hidden = int(width * 4.0)

    semantic_first = model_cfg["semfirst_delta_t"] > 0 and model_cfg["semantic_chans"] > 0
    embed_width = width // 2 if semantic_first else width
    time_embed = (2 if semantic_first else 1) * (
        _linear(TIME_FREQUENCY_DIM, embed_width) + _linear(embed_width, embed_width)
    )

    adaln_chunks = 4 if model_cfg["wo_shift"] else 6
    if model_cfg["use_swiglu"]:
        hidden = int(2 / 3 * mlp_hidden)
        mlp = _linear(width, 2 * hidden, tokens) + _linear(hidden, width, tokens)
    else:
        mlp = _linear(width, mlp_hidden, tokens) + _linear(mlp_hidden, width, tokens)
    qkv_proj = _linear(width, 3 * width, tokens) + _linear(width, width, tokens)
    attention = qkv_proj + 2 * _linear(width, tokens, tokens)  # q·kᵀ and softmax·v, all heads
    block = _linear(width, adaln_chunks * width) + attention + mlp

    total = (
        _linear(patch_dim, width, tokens)
        + time_embed
        + depth * block
        + _linear(width, 2 * width)
        + _linear(width, patch_dim, tokens)
    )
    if repa_head and model_cfg["use_repa"]:
        hidden, out = model_cfg["repa_hidden_dim"], repa_out_dim(model_cfg)
        total += _linear(width, hidden, tokens) + _linear(hidden, hidden, tokens)
        total += _linear(hidden, out, tokens)
    return total


def train_flops_per_image(model_cfg: dict, input_size: int) -> int:
    """Forward + backward of one training image (REPA head included when the model has one)."""
    return 3 * forward_flops(model_cfg, input_size, repa_head=True)


def sample_flops_per_nfe(model_cfg: dict, input_size: int) -> int:
    """One sampler network evaluation of one image (the REPA projector is skipped there)."""
    return forward_flops(model_cfg, input_size, repa_head=False)
