"""`sfd train-semantic-encoder`: train the toy semantic encoder, a small timm ViT, as a classifier.

The paper's encoder is DINOv2, pretrained elsewhere; the toy pipeline has no such model for its
synthetic images, so it trains its own: supervised classification of the toy labels with
random-crop and flip augmentation, mean-pooled patch tokens into a linear head. Its patch tokens
(after the final norm) then serve as REPA targets and Semantic VAE inputs, exactly like DINOv2's.
Inputs go through the encoder's own latent-extraction preprocessing, so training and use agree.

A seeded split holds out `train.holdout` of the images; the accuracy on them is reported and
stored in the checkpoint. Deterministic given the experiment seed.
"""

import logging
import math
import time

import torch
import torch.nn.functional as F
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from tqdm import tqdm

from sfd.config import ConfigError
from sfd.data.toy import load_npz
from sfd.device import get_device
from sfd.io import torch_save, write_json
from sfd.reads import plain, view
from sfd.semantic.encoder import SemanticEncoder, build_encoder

log = logging.getLogger(__name__)

# Experiment keys this command reads (sfd/reads.py): READS shape its output, ALSO_READS do not.
READS = (
    "seed",
    "semantic_encoder.pretrained",
    "semantic_encoder.timm_model",
    "semantic_encoder.timm_kwargs",
    "semantic_encoder.img_size",
    "semantic_encoder.train",
)
ALSO_READS = ("device",)


def load_npz_images(path) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(x in [-1, 1] float [N, 3, H, W], labels int64 [N], number of classes) of a toy .npz."""
    images, labels, class_names = load_npz(path)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    return x, torch.from_numpy(labels), len(class_names)


def augment(x: torch.Tensor, padding: int, hflip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crop of the reflect-padded batch back to its size, then random horizontal flips."""
    b, _, h, w = x.shape
    if padding:
        padded = F.pad(x, (padding,) * 4, mode="reflect")
        dy, dx = torch.randint(0, 2 * padding + 1, (2, b), generator=generator)
        x = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
    if hflip:
        flip = torch.rand(b, generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


@torch.no_grad()
def accuracy(
    encoder: SemanticEncoder, x: torch.Tensor, labels: torch.Tensor, device, batch_size=256
) -> float:
    encoder.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        logits = encoder.vit(encoder.preprocess(x[i : i + batch_size].to(device)))
        correct += (logits.argmax(1).cpu() == labels[i : i + batch_size]).sum().item()
    encoder.train()
    return correct / len(x)


def sincos_position_start(encoder: SemanticEncoder) -> None:
    """Start the learned position table from a 2D sin-cos table instead of timm's 0.02-std noise,
    which leaves the tokens position-blind for hundreds of steps this small budget cannot afford."""
    grid = encoder.vit.patch_embed.grid_size
    with torch.no_grad():
        table = build_sincos2d_pos_embed(list(grid), encoder.dim)
        encoder.vit.pos_embed[:, -table.shape[0] :] = table


def lr_at(step: int, t: dict) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < t["warmup_steps"]:
        return t["lr"] * (step + 1) / t["warmup_steps"]
    progress = (step - t["warmup_steps"]) / max(1, t["steps"] - t["warmup_steps"])
    return t["lr"] * 0.5 * (1 + math.cos(math.pi * progress))


def train(cfg: dict, x: torch.Tensor, labels: torch.Tensor, num_classes: int, seed: int, device) -> tuple:
    """(trained encoder, held-out accuracy, wall seconds)."""
    t = cfg["train"]
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=generator)
    n_hold = max(1, round(t["holdout"] * len(x)))
    hold, fit = order[:n_hold], order[n_hold:]
    torch.manual_seed(seed)
    encoder = build_encoder(cfg, num_classes)
    sincos_position_start(encoder)
    encoder = encoder.to(device).train()
    opt = torch.optim.AdamW(encoder.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])
    start = time.time()
    for step in tqdm(range(t["steps"]), desc="train-semantic-encoder"):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, t)
        batch = fit[torch.randint(len(fit), (t["batch_size"],), generator=generator)]
        xb = augment(x[batch], t["crop_padding"], t["hflip"], generator).to(device)
        logits = encoder.vit(encoder.preprocess(xb))
        loss = F.cross_entropy(logits, labels[batch].to(device), label_smoothing=t["label_smoothing"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == t["steps"] - 1:
            log.info("step %d loss %.4f lr %.2e", step, loss.item(), opt.param_groups[0]["lr"])
    seconds = time.time() - start
    return encoder, accuracy(encoder, x[hold], labels[hold], device), seconds


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML (section semantic_encoder)")
    parser.add_argument("--data", required=True, help="toy training .npz (images uint8 [N,H,W,3], labels)")
    parser.add_argument("--out", required=True, help="encoder checkpoint to write (e.g. encoder.pt)")


def main(args) -> int:
    exp = view(args.config, __name__)
    cfg = exp["semantic_encoder"]
    if cfg["pretrained"]:
        raise ConfigError(
            f"{args.config}: semantic_encoder.pretrained is true; only an encoder "
            "with pretrained: false is trained here"
        )
    x, labels, num_classes = load_npz_images(args.data)
    device = get_device(exp["device"])
    encoder, acc, seconds = train(cfg, x, labels, num_classes, exp["seed"], device)
    log.info(
        "held-out accuracy %.4f (%d classes, chance %.4f), %.1f s", acc, num_classes, 1 / num_classes, seconds
    )
    torch_save(
        {
            "model": encoder.vit.state_dict(),
            "semantic_encoder": plain(cfg),
            "num_classes": num_classes,
            "steps": cfg["train"]["steps"],
            "holdout_accuracy": acc,
        },
        args.out,
    )
    write_json(
        {
            "holdout_accuracy": acc,
            "num_classes": num_classes,
            "steps": cfg["train"]["steps"],
            "train_seconds": seconds,
        },
        f"{args.out}.json",
    )
    return 0
