"""Texture tokenizer (docs/method.md §1.1): the LDM KL autoencoder, its checkpoints and its toy training."""

from sfd.tokenizers.texture_vae import AEArch, TextureVAE, load_texture_vae, save_texture_vae

__all__ = ["AEArch", "TextureVAE", "load_texture_vae", "save_texture_vae"]
