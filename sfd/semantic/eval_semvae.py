"""`sfd eval-semvae`: reconstruction metrics of a Semantic VAE checkpoint on extracted features.

Works for our checkpoints and the released `semantic_ae_final.pt` alike (`load_semvae`), with the
official eval metrics of `train_semvae.evaluate`: per-token cosine similarity, MSE, L1 and KL on
the first `semvae.train.eval_samples` items (the official eval set: the first 500 ImageNet val
images in ImageFolder order, extracted with `sfd extract-features --limit 500`).
"""

import logging

import numpy as np

from sfd.device import get_device
from sfd.io import write_json
from sfd.reads import view
from sfd.semantic.features import FeatureShards
from sfd.semantic.semvae import load_semvae
from sfd.semantic.train_semvae import derive_seed, evaluate

log = logging.getLogger(__name__)

# Experiment keys this command reads (sfd/reads.py): READS shape its output, ALSO_READS do not.
READS = ("seed", "semvae.train.eval_samples", "semvae.train.eval_batch_size", "semvae.train.mixed_precision")
ALSO_READS = ("device",)


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML (section semvae.train: eval sizes)")
    parser.add_argument("--checkpoint", required=True, help="Semantic VAE checkpoint")
    parser.add_argument("--features", required=True, help="features directory (sfd extract-features)")
    parser.add_argument("--out", required=True, help="metrics JSON to write")


def main(args) -> int:
    exp = view(args.config, __name__)
    t, device = exp["semvae"]["train"], get_device(exp["device"])
    model = load_semvae(args.checkpoint).to(device)
    data = FeatureShards(args.features)
    if data.dim != model.arch.input_dim:
        raise ValueError(
            f"{args.features}: features have dim {data.dim}, "
            f"{args.checkpoint} expects input_dim {model.arch.input_dim}"
        )
    indices = np.arange(min(t["eval_samples"], len(data)))
    metrics = evaluate(
        model, data, indices, t["eval_batch_size"], device, t["mixed_precision"], derive_seed(exp["seed"], 3)
    )
    log.info(
        "%s on %d items: per-token cosine %.4f  mse %.5f  l1 %.5f  kl %.2f",
        args.checkpoint,
        len(indices),
        metrics["cosine"],
        metrics["mse"],
        metrics["l1"],
        metrics["kl"],
    )
    write_json({"checkpoint": str(args.checkpoint), "items": len(indices), **metrics}, args.out)
    return 0
