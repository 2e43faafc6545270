"""`sfd train-semvae`: train the Semantic VAE on extracted encoder features (docs/method.md §1.2).

The official recipe (tokenizer/semvae/train.py and configs/semvae_train/ch16.yaml):
loss = mse_w * MSE + l1_w * L1 + cos_w * cos_loss + kl_w * KL, where MSE/L1 are means over all
elements, KL is the per-sample sum averaged over the batch, and
cos_loss = 1 - F.cosine_similarity(recon, feat).mean() with the DEFAULT dim=1: on [B, L, D] that
is the cosine along the token axis per feature channel, not per token (docs/method.md §7.8, kept as is).
AdamW (torch defaults but lr, so weight_decay 0.01); SequentialLR of linear warm-up 0.01*lr -> lr,
constant, cosine to min_lr_factor*lr; bf16 autocast around the forward (Accelerate's
mixed_precision), losses in float32. Each epoch visits the training items in a fresh shuffled
order, the last batch of an epoch being smaller (DataLoader shuffle=True, drop_last=False).

Beyond the official code: the run is deterministic given the experiment seed (epoch orders and
per-step posterior noise are pure functions of (seed, epoch) and (seed, step)), so rerunning the
same command resumes bit-exactly from the latest checkpoint in the run directory. Checkpoints
use the released layout, `iteration` counting completed steps. The eval metric is the official
one: per-token cosine similarity (and MSE, L1, KL) of reconstructions of the first
`eval_samples` items of the eval features, averaged over eval batches.
"""

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from tqdm import tqdm

from sfd.config import ConfigError
from sfd.device import autocast, get_device
from sfd.io import append_jsonl, directory_lock, require_writable, sweep_temps, torch_save, write_json
from sfd.reads import view
from sfd.semantic.features import FeatureShards
from sfd.semantic.semvae import SemanticVAE, SemVAEArch

log = logging.getLogger(__name__)

# Experiment keys this command reads (sfd/reads.py): READS shape its output, ALSO_READS do not.
READS = ("seed", "semvae")
ALSO_READS = ("device",)

LOSS_MOMENTUM = 0.99  # official LossTracker: exponential moving averages of the step losses


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that is a pure function of integer keys (seed, stream, position)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def semvae_losses(recon: torch.Tensor, target: torch.Tensor, kl: torch.Tensor, t: dict) -> dict:
    """The official training losses of reconstructed tokens [B, L, D] (float32)."""
    mse = F.mse_loss(recon, target)
    l1 = F.l1_loss(recon, target)
    cos_loss = 1 - F.cosine_similarity(recon, target).mean()  # dim=1: across tokens, per channel
    kl_loss = kl.mean()
    total = (
        t["mse_weight"] * mse + t["l1_weight"] * l1 + t["cos_weight"] * cos_loss + t["kl_weight"] * kl_loss
    )
    return {"mse": mse, "l1": l1, "cos_loss": cos_loss, "kl_loss": kl_loss, "total": total}


def token_cosine(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean per-token cosine similarity over the D features (the official eval metric)."""
    d = target.shape[-1]
    return F.cosine_similarity(target.reshape(-1, d), recon.reshape(-1, d), dim=1).mean()


def build_scheduler(opt: torch.optim.Optimizer, t: dict) -> torch.optim.lr_scheduler.SequentialLR:
    """Warm-up / constant / cosine as the official setup_scheduler (a zero-length phase is 1 step)."""
    warmup = max(t["warmup_steps"], 1)
    constant = t["constant_steps"]
    cosine = max(t["iterations"] - warmup - constant, 1)
    sched = torch.optim.lr_scheduler
    return sched.SequentialLR(
        opt,
        [
            sched.LinearLR(opt, start_factor=0.01, end_factor=1.0, total_iters=warmup),
            sched.ConstantLR(opt, factor=1.0, total_iters=constant),
            sched.CosineAnnealingLR(opt, T_max=cosine, eta_min=t["lr"] * t["min_lr_factor"]),
        ],
        milestones=[warmup, warmup + constant],
    )


class EpochOrder:
    """Training indices of step s: batch s mod n_batches of a permutation seeded by (seed, epoch)."""

    def __init__(self, items: int, batch_size: int, seed: int):
        self.items, self.batch_size, self.seed = items, batch_size, seed
        self.batches = math.ceil(items / batch_size)
        self._epoch, self._perm = None, None

    def __call__(self, step: int) -> torch.Tensor:
        epoch, position = divmod(step, self.batches)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, 1, epoch))
            self._epoch, self._perm = epoch, torch.randperm(self.items, generator=generator)
        return self._perm[position * self.batch_size : (position + 1) * self.batch_size]


@torch.no_grad()
def evaluate(
    model: SemanticVAE,
    shards: FeatureShards,
    indices,
    batch_size: int,
    device,
    mixed_precision: bool,
    seed: int,
) -> dict:
    """Official eval metrics, each the mean of per-batch means; posterior noise from `seed`."""
    was_training = model.training
    model.eval()
    generator = torch.Generator(device).manual_seed(seed)
    sums = {"mse": 0.0, "l1": 0.0, "cosine": 0.0, "kl": 0.0}
    batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    for batch in batches:
        target = shards.batch(batch)[0].to(device)
        with autocast(device, mixed_precision):
            recon, _, kl = model(target, generator)
        recon = recon.float()
        sums["mse"] += F.mse_loss(recon, target).item()
        sums["l1"] += F.l1_loss(recon, target).item()
        sums["cosine"] += token_cosine(recon, target).item()
        sums["kl"] += kl.float().mean().item()
    model.train(was_training)
    return {k: v / len(batches) for k, v in sums.items()}


def checkpoint(model, opt, sched, iteration: int, averages: dict, section: dict) -> dict:
    """The released `semantic_ae_final.pt` layout; `config` embeds the official `model:` section."""
    config = {"model": model.arch.official_model(), "training": section["train"]}
    return {
        "iteration": iteration,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": opt.state_dict(),
        "scheduler_state_dict": sched.state_dict(),
        "loss": averages.get("total", 0.0),
        "loss_averages": dict(averages),
        "config": yaml.safe_dump(config, sort_keys=False),
        "input_dim": model.arch.input_dim,
        "bottleneck_dim": model.arch.bottleneck_dim,
    }


def latest_checkpoint(directory: Path, device) -> tuple[Path, dict] | None:
    """The readable checkpoint with the highest step in its name (not the largest file, unlike the
    official), loaded; an unreadable one (torn by a crash outside sfd.io) is reported and skipped."""
    for path in sorted(directory.glob("[0-9]" * 7 + ".pt"), reverse=True):
        try:
            return path, torch.load(path, map_location=device, weights_only=True)
        except Exception as err:
            log.warning(
                "skipping unreadable checkpoint %s (%s); its steps are redone", path, type(err).__name__
            )
    return None


def eval_split(data: FeatureShards, eval_features, t: dict) -> tuple[FeatureShards, np.ndarray, int]:
    """(eval set, its indices, number of training items): the first eval_samples items of
    `eval_features`, or else the last eval_samples items of `data`, then left out of training."""
    if eval_features:
        eval_data = FeatureShards(eval_features)
        return eval_data, np.arange(min(t["eval_samples"], len(eval_data))), len(data)
    if len(data) <= t["eval_samples"]:
        raise ConfigError(
            f"semvae.train.eval_samples: {t['eval_samples']} leaves no training items "
            f"of the {len(data)} in {data.directory}"
        )
    train_items = len(data) - t["eval_samples"]
    return data, np.arange(train_items, len(data)), train_items


def save_checkpoint(state: dict, ckpt_dir: Path) -> None:
    """Write checkpoints/{iteration:07d}.pt and delete the older ones: resume needs only the last."""
    path = ckpt_dir / f"{state['iteration']:07d}.pt"
    torch_save(state, path)
    for old in ckpt_dir.glob("[0-9]" * 7 + ".pt"):
        if old != path:
            old.unlink()


def train(exp: dict, features, eval_features, out, run_dir) -> dict:
    """Train (or resume) and write the final checkpoint to `out`; returns the final eval metrics.
    One run per run directory: it holds the directory's lock throughout."""
    data = FeatureShards(features)
    eval_data, eval_indices, train_items = eval_split(data, eval_features, exp["semvae"]["train"])
    require_writable(out)
    with directory_lock(run_dir, sweep=(".", "checkpoints")):
        sweep_temps(Path(out).parent, Path(out).name)
        return _train(exp, data, eval_data, eval_indices, train_items, Path(out), Path(run_dir))


def _train(
    exp: dict,
    data: FeatureShards,
    eval_data: FeatureShards,
    eval_indices,
    train_items: int,
    out: Path,
    run_dir: Path,
) -> dict:
    section, t, seed = exp["semvae"], exp["semvae"]["train"], exp["seed"]
    device = get_device(exp["device"])
    ckpt_dir = run_dir / "checkpoints"

    torch.manual_seed(seed)
    model = SemanticVAE(SemVAEArch.from_section(section, input_dim=data.dim)).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])
    sched = build_scheduler(opt, t)
    averages, start = {}, 0
    if (found := latest_checkpoint(ckpt_dir, device)) is not None:
        latest, state = found
        model.load_state_dict(state["model_state_dict"])
        opt.load_state_dict(state["optimizer_state_dict"])
        sched.load_state_dict(state["scheduler_state_dict"])
        averages, start = dict(state["loss_averages"]), state["iteration"]
        log.info("resuming from %s (iteration %d)", latest, start)
    log.info(
        "Semantic VAE %s: %.2fM parameters, %d training items, %d eval items",
        section["arch"],
        sum(p.numel() for p in model.parameters()) / 1e6,
        train_items,
        len(eval_indices),
    )

    def run_eval(step: int) -> dict:
        metrics = evaluate(
            model,
            eval_data,
            eval_indices,
            t["eval_batch_size"],
            device,
            t["mixed_precision"],
            derive_seed(seed, 3),
        )
        log.info(
            "eval @ %d: per-token cosine %.4f  mse %.5f  l1 %.5f  kl %.2f",
            step,
            metrics["cosine"],
            metrics["mse"],
            metrics["l1"],
            metrics["kl"],
        )
        append_jsonl({"step": step, "eval": metrics}, run_dir / "log.jsonl")
        return metrics

    order = EpochOrder(train_items, t["batch_size"], seed)
    started = time.time()
    for step in tqdm(
        range(start, t["iterations"]), desc="train-semvae", initial=start, total=t["iterations"]
    ):
        target = data.batch(order(step))[0].to(device)
        generator = torch.Generator(device).manual_seed(derive_seed(seed, 2, step))
        with autocast(device, t["mixed_precision"]):
            recon, _, kl = model(target, generator)
        losses = semvae_losses(recon.float(), target, kl.float(), t)
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        opt.step()
        sched.step()
        for key, value in losses.items():
            value = value.item()
            averages[key] = (
                value if key not in averages else LOSS_MOMENTUM * averages[key] + (1 - LOSS_MOMENTUM) * value
            )
        done = step + 1
        if done % t["log_every"] == 0 or done == t["iterations"]:
            append_jsonl({"step": done, "lr": opt.param_groups[0]["lr"], **averages}, run_dir / "log.jsonl")
        if done % t["eval_every"] == 0 and done < t["iterations"]:
            run_eval(done)
        if done % t["save_every"] == 0 and done < t["iterations"]:
            save_checkpoint(checkpoint(model, opt, sched, done, averages, section), ckpt_dir)
    seconds = time.time() - started
    metrics = run_eval(t["iterations"])
    torch_save(checkpoint(model, opt, sched, t["iterations"], averages, section), out)
    write_json(
        {
            "iterations": t["iterations"],
            "eval_items": len(eval_indices),
            **metrics,
            "train_seconds_this_run": seconds,
            "loss_averages": averages,
        },
        run_dir / "metrics.json",
    )
    return metrics


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML (section semvae)")
    parser.add_argument(
        "--features", required=True, help="training features directory (sfd extract-features)"
    )
    parser.add_argument(
        "--eval-features",
        default=None,
        help="held-out features directory; default: the last eval_samples items of --features",
    )
    parser.add_argument(
        "--out", required=True, help="final checkpoint (released semantic_ae_final.pt layout)"
    )
    parser.add_argument(
        "--run-dir", default=None, help="checkpoints/ and log.jsonl; default: <out stem>_run/"
    )


def main(args) -> int:
    out = Path(args.out)
    run_dir = Path(args.run_dir) if args.run_dir else out.with_name(f"{out.stem}_run")
    train(view(args.config, __name__), args.features, args.eval_features, out, run_dir)
    return 0
