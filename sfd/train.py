"""`sfd train`: the SFD DiT training loop (docs/method.md §3.5), one loop for every model size.

Launched the same way everywhere: `sfd train ...` is a world of 1, `torchrun --nproc-per-node=G
[--nnodes=N ...] -m sfd train ...` is DDP over all ranks (NCCL / HCCL / gloo by device). The global
batch is split evenly across ranks.

Reproducibility is engineered, not hoped for (the official train.py seeds nothing, docs/method.md §7.13):
  * step s sees global batch s of an endless stream of per-epoch permutations seeded by
    (seed, epoch), so the data position is a pure function of the step;
  * every step reseeds from (seed, rank, step): one generator draws the noise and t, torch's global
    RNG (label dropout inside the model) is reseeded from an independent stream of the same key.
So a resumed run repeats exactly the steps an uninterrupted one takes: on the CPU a run killed with
SIGKILL and started again ends at the same checkpoint, bit for bit (tests/test_train.py).

Run directory: `checkpoints/{step:07d}.pt` (model, ema, opt, step, RNG states, data position,
resolved config), `ema/{step:07d}.pt` = {'ema': state_dict} (the released layout; exported at every
budget and `keep_steps` entry), `log.jsonl`, `config.yaml`.

Resume protocol: run the same command again. The newest complete checkpoint with step <= the
target is restored (an unreadable one is reported and the previous one used). `--until-step N`
stops at a budget; the same run directory, or `--init-from` a previous budget's checkpoint in a new
one, continues to a larger budget exactly as one longer run would.

Exit codes: 0 = target step reached; 75 (EX_TEMPFAIL) = SIGTERM or SIGUSR1 (e.g. SLURM's
pre-timeout signal) arrived, a checkpoint was written, resubmit to continue; 2 = bad configuration
or checkpoint. Under torchrun the launcher reports its own failure status (1) when a worker exits
with 75; the workflow treats both as "retry".
"""

import copy
import json
import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from sfd import distributed as dist
from sfd.config import ConfigError
from sfd.device import autocast, autocast_dtype, device_name, maybe_compile, peak_bf16_flops, set_tf32
from sfd.errors import first_line
from sfd.io import append_jsonl, torch_save, write_text
from sfd.models.flops import train_flops_per_image
from sfd.reads import plain, view

EXIT_SUSPENDED = 75  # EX_TEMPFAIL: checkpointed on request, run again to continue
CKPT_FORMAT = 1

log = logging.getLogger("sfd.train")

# Experiment keys this command reads (sfd/reads.py): READS shape its output, ALSO_READS do not.
READS = (
    "seed",
    "data.num_classes",
    "latents.multiplier",
    "models.{model}.model",
    "models.{model}.train.global_batch_size",
    "models.{model}.train.lr",
    "models.{model}.train.beta2",
    "models.{model}.train.weight_decay",
    "models.{model}.train.ema_decay",
    "models.{model}.train.use_cosine_loss",
    "models.{model}.train.use_lognorm",
    "models.{model}.train.mixed_precision",
    "models.{model}.train.seed_offset",
)
ALSO_READS = (
    "device",
    "models.{model}.train.budgets",
    "models.{model}.train.ckpt_every",
    "models.{model}.train.keep_steps",
    "models.{model}.train.log_every",
    "models.{model}.train.num_workers",
    "models.{model}.train.compile",
)

# ----------------------------------------------------------------------------
# Seeds and data order: pure functions of (seed, rank, step) / (seed, epoch).


def step_seeds(seed: int, rank: int, step: int) -> tuple[int, int]:
    """Two independent 63-bit seeds for step `step` of rank `rank`: (loss generator, torch global)."""
    state = np.random.SeedSequence([seed, rank, step]).generate_state(2, np.uint64)
    return int(state[0] >> np.uint64(1)), int(state[1] >> np.uint64(1))


def epoch_permutation(num_items: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))
    return torch.randperm(num_items, generator=generator)


class StepBatches(torch.utils.data.Sampler):
    """Batch sampler: this rank's share of global batches start..stop-1, as (epoch, index) pairs.

    Each epoch is a fresh permutation with drop_last (official DataLoader: shuffle, drop_last); the
    global batch of step s is rows [j*G, (j+1)*G) of epoch s // (N // G)'s permutation, j = s mod
    (N // G), and rank r takes its r-th slice of G / world.
    """

    def __init__(self, num_items, global_batch, rank, world, seed, start, stop):
        self.num_items, self.global_batch, self.seed = num_items, global_batch, seed
        self.local = global_batch // world
        self.offset = rank * self.local
        self.start, self.stop = start, stop
        self.steps_per_epoch = num_items // global_batch

    def position(self, step: int) -> dict:
        return {
            "epoch": step // self.steps_per_epoch,
            "batch_in_epoch": step % self.steps_per_epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "num_items": self.num_items,
        }

    def __len__(self):
        return self.stop - self.start

    def __iter__(self):
        epoch, perm = None, None
        for step in range(self.start, self.stop):
            where = self.position(step)
            if where["epoch"] != epoch:
                epoch = where["epoch"]
                perm = epoch_permutation(self.num_items, self.seed, epoch)
            first = where["batch_in_epoch"] * self.global_batch + self.offset
            yield [(epoch, int(i)) for i in perm[first : first + self.local]]


class EpochIndexed(torch.utils.data.Dataset):
    """Items addressed by (epoch, index), so the flip coin of LatentDataset (a pure function of
    (seed, epoch, index), set with set_epoch) is right inside DataLoader workers too."""

    def __init__(self, dataset):
        self.dataset, self.epoch = dataset, None

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        if epoch != self.epoch:
            self.dataset.set_epoch(epoch)
            self.epoch = epoch
        return self.dataset[index]


# ----------------------------------------------------------------------------
# EMA, checkpoints and their compatibility checks.


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- ema + (1-decay)·(model - ema) over every named parameter (frozen pos_embed included),
    as one foreach kernel per dtype/device group instead of two kernels per parameter."""
    ema_params = dict(ema.named_parameters())
    names, params = zip(*model.named_parameters())
    torch._foreach_lerp_([ema_params[name] for name in names], list(params), 1 - decay)


def make_optimizer(model: torch.nn.Module, tcfg: dict, device: torch.device) -> torch.optim.AdamW:
    """AdamW (betas (0.9, beta2), constant lr), fused where torch has the kernel: on CUDA and on the
    CPU (3.1x faster than the default per B/1 step on one thread, docs/decisions.md)."""
    fused = True if device.type in ("cuda", "cpu") else None
    return torch.optim.AdamW(
        model.parameters(),
        lr=tcfg["lr"],
        betas=(0.9, tcfg["beta2"]),
        weight_decay=tcfg["weight_decay"],
        fused=fused,
    )


def ckpt_path(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"{step:07d}.pt"


def ema_path(run_dir: Path, step: int) -> Path:
    return run_dir / "ema" / f"{step:07d}.pt"


class UnreadableCheckpoint(ConfigError):
    """A checkpoint file torch cannot load (truncated by a crash outside sfd.io, disk error)."""


def read_checkpoint(path: Path) -> dict:
    """A full training checkpoint, checked for every entry a resume needs."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such checkpoint") from None
    except Exception as err:
        raise UnreadableCheckpoint(
            f"{path}: unreadable checkpoint (truncated?): {type(err).__name__}: {first_line(err)}"
        ) from None
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: not a training checkpoint (a {type(state).__name__})")
    for key in ("model", "ema", "opt", "step", "config", "model_name", "rng"):
        if key not in state:
            raise ConfigError(
                f"{path}: training checkpoint has no {key!r} entry (an EMA export or a foreign file?)"
            )
    return state


def latest_checkpoint(run_dir: Path, max_step: int) -> tuple[Path, dict] | None:
    """Newest checkpoint with step <= max_step; unreadable ones are reported and skipped, while a
    readable one that lacks an entry (e.g. 'ema') is an error."""
    candidates = []
    for path in (run_dir / "checkpoints").glob("*.pt"):
        if path.stem.isdigit() and int(path.stem) <= max_step:
            candidates.append((int(path.stem), path))
    for _, path in sorted(candidates, reverse=True):
        try:
            return path, read_checkpoint(path)
        except UnreadableCheckpoint as err:
            dist.print0(f"warning: skipping {err}")
    return None


def _diff(a, b, prefix=""):
    """First differing dotted key between two nested dicts, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            found = _diff(a.get(key, "<absent>"), b.get(key, "<absent>"), f"{prefix}{key}.")
            if found:
                return found
        return None
    return None if a == b else (prefix.rstrip("."), a, b)


def check_compatible(state: dict, ckpt: Path, identity: dict, source: str) -> None:
    """Refuse a checkpoint of another model/recipe before any training, naming both sides."""
    theirs = state.get("identity", {})
    found = _diff(theirs, identity)
    if found:
        key, old, new = found
        raise ConfigError(
            f"{ckpt} was trained as {theirs.get('model_name')!r} "
            f"({theirs.get('model', {}).get('model_type')}) "
            f"and does not match {source} models.{identity['model_name']} "
            f"({identity['model']['model_type']}): {key} is {old!r} in the checkpoint, {new!r} in the config"
        )


def run_identity(cfg: dict, model_name: str, num_classes: int, input_size: int, num_items: int) -> dict:
    """Everything that fixes the training trajectory; a resumed run must agree on all of it."""
    run = cfg["models"][model_name]
    recipe = {k: v for k, v in run["train"].items() if f"models.{{model}}.train.{k}" in READS}
    return {
        "model_name": model_name,
        "model": run["model"],
        "recipe": recipe,
        "seed": cfg["seed"],
        "num_classes": num_classes,
        "input_size": input_size,
        "num_items": num_items,
    }


# ----------------------------------------------------------------------------
# Suspension on SIGTERM / SIGUSR1.


class SuspendRequest:
    """Remembers that the scheduler asked us to stop; the loop checkpoints and exits with 75."""

    def __init__(self):
        self.signal = None
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name


def model_section(cfg: dict, model_name: str, source: str) -> tuple[dict, dict]:
    """The `model:` and `train:` sections of models.<model_name>."""
    if model_name not in cfg.get("models", {}):
        raise ConfigError(
            f"{source}: models.{model_name}: no such model (have: {', '.join(cfg.get('models', {}))})"
        )
    run = cfg["models"][model_name]
    return run["model"], run["train"]


def local_batch_size(global_batch: int, world: int, where: str) -> int:
    """Each rank's share of the global batch; it must split evenly (the official code rounds)."""
    if global_batch % world:
        raise ConfigError(f"{where}.train.global_batch_size {global_batch} does not split over {world} ranks")
    return global_batch // world


def open_latents(latents: Path, cfg: dict, model_name: str, seed: int, source: str):
    """The latent dataset models.<model_name> trains on and its latent grid size, checked against
    the model (channels) and the recipe (at least one global batch) before any model is built."""
    from sfd.latents import LatentDataset

    mcfg, tcfg = model_section(cfg, model_name, source)
    # A model without semantic channels is the texture-only LightningDiT baseline (docs/method.md §1.4).
    texture_only = mcfg["semantic_chans"] == 0
    dataset = LatentDataset(
        latents, multiplier=cfg["latents"]["multiplier"], seed=seed, texture_only=texture_only
    )
    if len(dataset) < tcfg["global_batch_size"]:
        raise ConfigError(
            f"{latents}: {len(dataset)} latents, fewer than one global batch ({tcfg['global_batch_size']})"
        )
    x_probe = dataset[0][0]
    if x_probe.shape[0] != mcfg["in_chans"]:
        stats = dataset.stats
        raise ConfigError(
            f"{source}: models.{model_name}.model.in_chans: {mcfg['in_chans']}, but {latents} gives "
            f"{x_probe.shape[0]} channels ({stats.tex_channels} texture"
            + (")" if texture_only else f" + {stats.sem_mean.shape[1]} semantic)")
            + "; a model with semantic_chans 0 trains on the texture channels only"
        )
    return dataset, x_probe.shape[-1]


# ----------------------------------------------------------------------------
# The loop.


def train(
    cfg: dict,
    model_name: str,
    latents: Path,
    run_dir: Path,
    *,
    until_step: int | None = None,
    init_from: Path | None = None,
    source: str = "<config>",
) -> int:
    """Train models.<model_name> on the latent dataset `latents` into `run_dir`; returns the exit code.
    One run per run directory: a second one refuses while this one holds its lock."""
    with dist.output_lock(run_dir, sweep=(".", "checkpoints", "ema")):
        return _train(
            cfg, model_name, latents, Path(run_dir), until_step=until_step, init_from=init_from, source=source
        )


def _train(
    cfg: dict,
    model_name: str,
    latents: Path,
    run_dir: Path,
    *,
    until_step: int | None,
    init_from: Path | None,
    source: str,
) -> int:
    from sfd.models import build_model

    mcfg, tcfg = model_section(cfg, model_name, source)
    target = until_step if until_step is not None else max(tcfg["budgets"])
    exports = set(tcfg["budgets"]) | set(tcfg["keep_steps"]) | {target}
    seed = cfg["seed"] + tcfg["seed_offset"]

    device = dist.init(cfg["device"])
    rank, world = dist.get_rank(), dist.get_world_size()
    local_batch = local_batch_size(tcfg["global_batch_size"], world, f"{source}: models.{model_name}")
    set_tf32(False)

    dataset, input_size = open_latents(latents, cfg, model_name, seed, source)
    num_classes = cfg["data"]["num_classes"]
    identity = run_identity(cfg, model_name, num_classes, input_size, len(dataset))

    torch.manual_seed(seed)
    model = build_model(mcfg, num_classes=num_classes, input_size=input_size).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = make_optimizer(model, tcfg, device)

    step = restore(run_dir, target, init_from, identity, model, ema, opt, world, source)
    if rank == 0:
        prepare_run_dir(run_dir, cfg, step)
    sampler = StepBatches(len(dataset), tcfg["global_batch_size"], rank, world, seed, step, target)
    if step == target:  # done before (or --init-from is the target): make sure both outputs exist here
        if rank == 0 and not ckpt_path(run_dir, step).exists():
            _save(run_dir, step, model, ema, opt, cfg, identity, sampler, world, device)
        if rank == 0 and not ema_path(run_dir, step).exists():
            torch_save({"ema": ema.state_dict()}, ema_path(run_dir, step))
        dist.print0(f"{model_name}: already at step {target}; nothing to do")
        dist.cleanup()
        return 0

    n_params = sum(p.numel() for p in model.parameters())
    dist.print0(
        f"{model_name}: {mcfg['model_type']} ({n_params / 1e6:.2f}M params), {len(dataset)} latents, "
        f"global batch {tcfg['global_batch_size']} = {world} x {local_batch}, steps {step} -> {target}, "
        f"device {device}, autocast {autocast_dtype(device) if tcfg['mixed_precision'] == 'bf16' else None}"
    )
    throughput = Throughput.of(mcfg, input_size, tcfg["global_batch_size"], device, world)
    loader = batch_loader(dataset, sampler, tcfg["num_workers"], device)
    net = maybe_compile(distribute(model, world, device), tcfg["compile"], f"train {model_name}")
    model.train()
    suspend = SuspendRequest()
    interval = LogInterval(step)

    bar = tqdm(total=target, initial=step, desc=f"train {model_name}", disable=rank != 0, dynamic_ncols=True)
    t_fetch = time.perf_counter()
    for batch in loader:
        interval.wait += time.perf_counter() - t_fetch  # time the loop stood waiting for this batch
        terms = train_step(
            net, model, ema, opt, batch, seed=seed, rank=rank, step=step, device=device, mcfg=mcfg, tcfg=tcfg
        )
        step += 1
        interval.add(terms)
        bar.update(1)

        if step % tcfg["log_every"] == 0 or step == target:
            record = interval.close(step, sampler, throughput)
            if rank == 0:
                report(record, run_dir / "log.jsonl", bar)

        stop = dist.any_rank(suspend.signal is not None, device) if world > 1 else suspend.signal is not None
        if step % tcfg["ckpt_every"] == 0 or step in exports or stop:
            if rank == 0:
                _save(run_dir, step, model, ema, opt, cfg, identity, sampler, world, device)
                if step in exports:
                    torch_save({"ema": ema.state_dict()}, ema_path(run_dir, step))
            dist.barrier()
        if stop:
            bar.close()
            dist.print0(
                f"{suspend.signal or 'signal on another rank'}: checkpointed step {step}; "
                f"exit {EXIT_SUSPENDED}"
            )
            dist.cleanup()
            return EXIT_SUSPENDED
        t_fetch = time.perf_counter()
    bar.close()
    dist.print0(f"{model_name}: reached step {step}; checkpoint {ckpt_path(run_dir, step)}")
    dist.cleanup()
    return 0


def prepare_run_dir(run_dir: Path, cfg: dict, step: int) -> None:
    """Rank 0, before the first step: the run's config.yaml, and log.jsonl cut back to `step`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(yaml.safe_dump(plain(cfg), sort_keys=False), run_dir / "config.yaml")
    _truncate_log(run_dir / "log.jsonl", step)


def batch_loader(dataset, sampler: StepBatches, num_workers: int, device: torch.device):
    """The rank's batches in the sampler's order, loaded by `num_workers` processes."""
    return torch.utils.data.DataLoader(
        EpochIndexed(dataset),
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if num_workers else None,
    )


def distribute(model: torch.nn.Module, world: int, device: torch.device) -> torch.nn.Module:
    """`model` itself on one rank, wrapped in DDP (gradients averaged over ranks) on several."""
    if world == 1:
        return model
    return DistributedDataParallel(model, device_ids=None if device.type == "cpu" else [device.index])


def report(record: dict, log_path: Path, bar: tqdm) -> None:
    """One closed log interval: a line of log.jsonl, the progress bar's postfix, the log."""
    append_jsonl(record, log_path)
    bar.set_postfix(
        loss=f"{record['loss']:.4f}",
        img_s=f"{record['images_per_s']:.1f}",
        **({"mfu": f"{record['mfu']:.1%}"} if "mfu" in record else {}),
    )
    log.info(json.dumps(record))


def load_optimizer(opt: torch.optim.Optimizer, state: dict) -> None:
    """Adam's moments and step from `state`, keeping this device's kernel choice: a checkpoint
    written with fused AdamW on CUDA resumes on a device without the fused kernel, and back."""
    fused = [group.get("fused") for group in opt.param_groups]
    opt.load_state_dict(state)
    for group, flag in zip(opt.param_groups, fused):
        group["fused"] = flag


def restore(
    run_dir: Path,
    target: int,
    init_from: Path | None,
    identity: dict,
    model,
    ema,
    opt,
    world: int,
    source: str,
) -> int:
    """Load the newest checkpoint of `run_dir` (else `init_from`) into model/ema/opt; returns its
    step (0 for a fresh start)."""
    found = latest_checkpoint(run_dir, target)
    if found is None and init_from is not None:
        found = (Path(init_from), read_checkpoint(Path(init_from)))
    elif found is not None and init_from is not None:
        dist.print0(f"note: {run_dir} has checkpoints; resuming there, not from --init-from {init_from}")
    if found is None:
        return 0
    path, state = found
    check_compatible(state, path, identity, source)
    if state["step"] > target:
        raise ConfigError(
            f"{path}: checkpoint is at step {state['step']}, past the requested --until-step {target}"
        )
    model.load_state_dict(state["model"])
    ema.load_state_dict(state["ema"])
    load_optimizer(opt, state["opt"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["world_size"] != world:
        dist.print0(
            f"note: {path} was written by {state['world_size']} ranks, now {world}: "
            "per-rank random streams differ from an uninterrupted run"
        )
    dist.print0(f"resumed from {path} at step {state['step']}")
    return state["step"]


def train_step(
    net, model, ema, opt, batch, *, seed: int, rank: int, step: int, device, mcfg: dict, tcfg: dict
) -> dict:
    """One optimizer step on this rank's share of global batch `step`; returns the loss terms
    (detached batch means). Randomness is reseeded from (seed, rank, step) first. The previous
    step's gradients are freed before the forward (the official step frees them after it, so they
    sit beside the activations at the memory peak)."""
    from sfd.flow import sample_logit_normal, training_losses

    opt.zero_grad(set_to_none=True)
    loss_seed, global_seed = step_seeds(seed, rank, step)
    torch.manual_seed(global_seed)  # label dropout inside the model
    gen = torch.Generator(device).manual_seed(loss_seed)
    x1, y, feats = (v.to(device, non_blocking=True) for v in batch)
    noise = torch.randn(x1.shape, generator=gen, device=device)
    if tcfg["use_lognorm"]:
        t = sample_logit_normal(len(x1), gen)
    else:
        t = torch.rand(len(x1), generator=gen, device=device)
    with autocast(device, enabled=tcfg["mixed_precision"] == "bf16"):
        losses = training_losses(
            net,
            x1,
            y,
            delta_t=mcfg["semfirst_delta_t"],
            semantic_chans=mcfg["semantic_chans"],
            semantic_weight=mcfg["semantic_weight"],
            use_cosine_loss=tcfg["use_cosine_loss"],
            repa_target=feats if mcfg["use_repa"] else None,
            repa_weight=mcfg["repa_weight"],
            repa_mode=mcfg["repa_mode"],
            t=t,
            noise=noise,
        )
    losses["total"].backward()
    opt.step()
    update_ema(ema, model, tcfg["ema_decay"])
    return {
        name: losses[name].detach().float().mean()
        for name in ("total", "mse", "cos", "repa")
        if name in losses
    }


def _save(run_dir, step, model, ema, opt, cfg, identity, sampler, world, device) -> None:
    rng = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    torch_save(
        {
            "format": CKPT_FORMAT,
            "step": step,
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "opt": opt.state_dict(),
            "rng": rng,
            "data": sampler.position(step),
            "world_size": world,
            "model_name": identity["model_name"],
            "identity": identity,
            "config": plain(cfg),
        },
        ckpt_path(run_dir, step),
    )


@dataclass(frozen=True)
class Throughput:
    """What turns a log interval's wall time into images/s and model-FLOPs utilisation."""

    global_batch: int
    flops_per_image: int  # forward + backward, sfd.models.flops
    peak_flops: float | None  # dense bf16 peak of all ranks together; None: unknown device (no MFU)

    @classmethod
    def of(cls, mcfg: dict, input_size: int, global_batch: int, device, world: int) -> "Throughput":
        peak = peak_bf16_flops(device_name(device))
        flops = train_flops_per_image(mcfg, input_size)
        dist.print0(
            f"{flops / 1e9:.3g} GFLOP per training image; device {device_name(device)}, "
            + (f"bf16 peak {peak / 1e12:.0f} TFLOP/s x {world}" if peak else "peak unknown (no MFU)")
        )
        return cls(global_batch, flops, None if peak is None else peak * world)

    def record(self, elapsed: float, steps: int, wait: float) -> dict:
        images_per_s = self.global_batch * steps / max(elapsed, 1e-9)
        record = {
            "images_per_s": images_per_s,
            "sec_per_step": elapsed / max(steps, 1),
            "data_wait_s": wait / max(steps, 1),
        }
        if self.peak_flops:
            record["mfu"] = images_per_s * self.flops_per_image / self.peak_flops
        return record


class LogInterval:
    """The loss terms and timing of the steps since the last log line."""

    def __init__(self, step: int):
        self._open(step, time.perf_counter())

    def _open(self, step: int, now: float) -> None:
        self.sums, self.count, self.wait, self.t_start, self.step_start = {}, 0, 0.0, now, step

    def add(self, terms: dict) -> None:
        self.count += 1
        for name, value in terms.items():
            self.sums[name] = self.sums.get(name, 0) + value

    def close(self, step: int, sampler: StepBatches, throughput: Throughput) -> dict:
        """The log record at `step`: loss terms averaged over the interval and over ranks, plus
        throughput (rank 0's timing); the next interval starts here."""
        now = time.perf_counter()
        names = sorted(self.sums)
        sums = dist.all_reduce_(torch.stack([self.sums[n] for n in names]))
        values = sums / (self.count * dist.get_world_size())
        record = {"step": step, "epoch": round(step / sampler.steps_per_epoch, 4)}
        for name, value in zip(names, values.tolist()):
            if not math.isfinite(value):
                raise FloatingPointError(f"step {step}: loss term {name!r} is {value}")
            record["loss" if name == "total" else name] = value
        record.update(throughput.record(now - self.t_start, step - self.step_start, self.wait))
        self._open(step, now)
        return record


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past the resume point (written by the interrupted run) and partial lines."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    write_text("".join(kept), path)


# ----------------------------------------------------------------------------
# CLI.


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML")
    parser.add_argument("--model", required=True, help="run name under `models:` in the config")
    parser.add_argument(
        "--latents", required=True, type=Path, help="latent dataset directory (sfd extract-latents)"
    )
    parser.add_argument("--run-dir", required=True, type=Path, help="output: checkpoints/, ema/, log.jsonl")
    parser.add_argument(
        "--until-step", type=int, default=None, help="stop at this step (a budget); default: max(budgets)"
    )
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="full checkpoint of a previous budget to continue from when --run-dir has none",
    )
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda", "npu"], default=None, help="override `device`"
    )


def main(args) -> int:
    cfg = view(args.config, __name__, model=args.model)
    if args.device:
        cfg = cfg.replace("device", args.device)
    if args.until_step is not None and args.until_step < 1:
        raise ConfigError(f"--until-step must be >= 1, got {args.until_step}")
    return train(
        cfg,
        args.model,
        args.latents,
        args.run_dir,
        until_step=args.until_step,
        init_from=args.init_from,
        source=args.config,
    )
