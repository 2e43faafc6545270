"""Train the toy texture VAE (`sfd train-tokenizer`): reconstruction + small KL, Adam.

The paper uses the released LDM autoencoder (LPIPS + GAN losses, 50 ImageNet epochs); the toy
pipeline needs a tokenizer of its own, and for 32x32 procedural images plain L1 + L2
reconstruction with a small KL weight is enough. Everything random (init, batch order, posterior
noise) comes from the seed, so a rerun gives the same weights. Reconstruction quality is measured
on images held out of the training npz, through the same uint8 quantisation the pipeline decodes with.
"""

import argparse
import logging
import math
import time

import numpy as np
import torch
from tqdm import trange

from sfd.config import ConfigError
from sfd.data.images import to_tensor
from sfd.tokenizers.texture_vae import AEArch, TextureVAE, kl_divergence, save_texture_vae

log = logging.getLogger(__name__)

# Experiment keys this command reads (sfd/reads.py): READS shape its output, ALSO_READS do not.
READS = ("seed", "texture_vae.arch", "texture_vae.train")


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [-1, 1]."""
    return torch.stack([to_tensor(image) for image in images])


@torch.no_grad()
def reconstruction_metrics(model: TextureVAE, images: np.ndarray, seed: int, batch_size: int = 256) -> dict:
    """MSE (uint8 scale) and PSNR of decode_to_uint8(encode(x)) against the original images."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    squared = 0.0
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        recon = model.decode_to_uint8(model.encode(images_to_tensor(batch), generator=generator))
        squared += float(((recon.double() - torch.from_numpy(batch).double()) ** 2).sum())
    mse = squared / images.size
    return {"mse": mse, "psnr": 10.0 * math.log10(255.0**2 / mse) if mse > 0 else math.inf}


def train_texture_vae(images: np.ndarray, arch: dict, train: dict, seed: int) -> tuple[TextureVAE, dict]:
    """Train on `images` (uint8 [N, H, W, 3]) minus a seeded hold-out; returns (model, metrics)."""
    holdout = train["holdout"]
    if holdout >= len(images):
        raise ConfigError(
            f"texture_vae.train.holdout={holdout} leaves no training images out of {len(images)}"
        )
    order = np.random.default_rng(seed).permutation(len(images))
    held, x_train = images[order[:holdout]], images_to_tensor(images[order[holdout:]])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TextureVAE(AEArch.from_dict(arch))
    generator = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=train["lr"], betas=tuple(train["betas"]))
    start, history = time.perf_counter(), []
    bar = trange(train["steps"], desc="train-tokenizer", mininterval=1.0)
    for step in bar:
        model.train()
        x = x_train[torch.randint(len(x_train), (train["batch_size"],), generator=generator)]
        mean, logvar = model.posterior(x)
        recon = model.decode(model.sample(mean, logvar, generator=generator))
        l1 = (recon - x).abs().mean()
        l2 = (recon - x).pow(2).mean()
        kl = kl_divergence(mean, logvar).mean()
        loss = train["l1_weight"] * l1 + train["l2_weight"] * l2 + train["kl_weight"] * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % train["log_every"] == 0 or step + 1 == train["steps"]:
            val = reconstruction_metrics(model, held, seed)
            row = {"step": step + 1, "loss": loss.item(), "l1": l1.item(), "kl": kl.item(), **val}
            history.append(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", psnr=f"{val['psnr']:.2f}")
            log.info(
                "step %d loss %.4f l1 %.4f kl %.1f held-out mse %.2f psnr %.2f dB",
                row["step"],
                row["loss"],
                row["l1"],
                row["kl"],
                val["mse"],
                val["psnr"],
            )
    metrics = {**history[-1], "seconds": time.perf_counter() - start, "holdout": holdout, "history": history}
    return model.eval(), metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, help="experiment YAML (texture_vae.arch, texture_vae.train)"
    )
    parser.add_argument("--data", required=True, help="toy train .npz")
    parser.add_argument("--out", required=True, help="tokenizer checkpoint (.pt)")
    parser.add_argument("--metrics", help="also write the final metrics as JSON here")


def main(args) -> int:
    from sfd.data.toy import load_npz
    from sfd.io import require_writable, write_json
    from sfd.reads import view

    cfg = view(args.config, __name__)
    section = cfg["texture_vae"]
    images, _, _ = load_npz(args.data)
    for path in filter(None, (args.out, args.metrics)):
        require_writable(path)
    log.info("training texture VAE %s on %d images from %s", section["arch"], len(images), args.data)
    model, metrics = train_texture_vae(images, section["arch"], section["train"], cfg["seed"])
    save_texture_vae(model, args.out, metrics=metrics, train=section["train"], seed=cfg["seed"])
    log.info("wrote %s (held-out PSNR %.2f dB, %.1f s)", args.out, metrics["psnr"], metrics["seconds"])
    if args.metrics:
        write_json({k: v for k, v in metrics.items() if k != "history"}, args.metrics)
    return 0
