"""The SFD denoiser: LightningDiT with semantic-first dual timesteps (docs/method.md §2).

torch is imported only when a model is asked for: the workflow reads `sfd.models.sizes` while
Snakemake parses the DAG, and that must stay cheap.
"""

from sfd.models.sizes import MODEL_SIZES, REPA_DIMS

__all__ = ["MODEL_SIZES", "REPA_DIMS", "LightningDiT", "build_model"]


def __getattr__(name):
    if name in ("LightningDiT", "build_model"):
        from sfd.models import lightningdit

        return getattr(lightningdit, name)
    raise AttributeError(f"module 'sfd.models' has no attribute {name!r}")
