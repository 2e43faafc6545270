"""Semantic half of the SFD latent: the frozen encoder (DINOv2 via timm, or the toy ViT trained
here) and the Semantic VAE that compresses its patch tokens into semantic channels (docs/method.md §1.2)."""

from sfd.semantic.encoder import SemanticEncoder, load_encoder
from sfd.semantic.semvae import SemanticVAE, load_semvae

__all__ = ["SemanticEncoder", "SemanticVAE", "load_encoder", "load_semvae"]
