"""LightningDiT sizes as plain data: torch-free, so the workflow can rank jobs by model cost
when the Snakefile is parsed without importing torch."""

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
