"""The SFD denoiser: LightningDiT with semantic-first dual timesteps (spec §2)."""

from sfd.models.lightningdit import MODEL_SIZES, REPA_DIMS, LightningDiT, build_model

__all__ = ["MODEL_SIZES", "REPA_DIMS", "LightningDiT", "build_model"]
