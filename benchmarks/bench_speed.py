"""Side-by-side speed: our training step and sampler forward against the official-shaped ones.

The official SFD code is not vendored; its step is rebuilt here from its structure, on the same
model class (ours is bit-identical to the official LightningDiT, docs/decisions.md):
  * compiled as the official code compiles: it puts @torch.compile on the forward of each block,
    of the final layer and of the time and label embedders (SwiGLU's forward and `modulate` run
    inside a block's graph), and never compiles the model itself, so the patch embedding, the REPA
    projector and the unpatchify run eager (`official_compile`);
  * official train step: that model's forward/backward of the SFD losses, zero_grad between
    forward and backward (DiT's training-loop order), torch.optim.AdamW with its default
    implementation, and an EMA that loops over the parameters (two kernels each);
  * official sampling forward: that model with the REPA projector running and its output
    discarded (its eval forward returns the tokens too; here: our train-mode forward with label
    dropout off, which computes exactly that), TF32 on (a no-op on the CPU).
Ours is what `sfd train` / `sfd sample` run: sfd.train.train_step through sfd.device.Compiled,
the fused AdamW of sfd.train.make_optimizer, the foreach EMA; the eval forward without projector.

Rounds are interleaved (ours, official, then official, ours, ...) so load drifts hit both; each
ratio is ours / official per round, printed as the median [min..max], with the ratio of the best
times (the calls least disturbed by other load) beside it. Peak memory is the peak
resident set of a child process per variant, sampled every 2 ms during steady-state steps (after
compiling), or torch's peak allocation on CUDA. The first call of each variant compiles (not timed
in the rounds); both first-call times are printed.

    OMP_NUM_THREADS=1 python benchmarks/bench_speed.py [--sizes S B] [--batch 4] [--rounds 5]
"""

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import bench_core  # same directory: the benchmark model is defined once
import torch
from bench_core import DELTA_T, GRID, IN_CHANS, SEMANTIC_CHANS

from sfd.config import validate
from sfd.device import Compiled, device_name, get_device, peak_bf16_flops, set_tf32, synchronize
from sfd.flow import sample_logit_normal, training_losses
from sfd.models import build_model
from sfd.models.embeddings import LabelEmbedder, TimestepEmbedder
from sfd.models.flops import sample_flops_per_nfe, train_flops_per_image
from sfd.models.lightningdit import FinalLayer, LightningDiTBlock
from sfd.train import make_optimizer, train_step

TRAIN = {
    "lr": 1e-4,
    "beta2": 0.999,
    "weight_decay": 0.0,
    "ema_decay": 0.9999,
    "use_lognorm": True,
    "use_cosine_loss": True,
    "mixed_precision": "bf16",
}


def model_config(size: str) -> dict:
    """bench_core's benchmark model (the paper's SFD flags at `size`), schema defaults filled."""
    return validate(bench_core.model_config(size), "model", source="bench")


def batch_of(mcfg: dict, batch: int, device) -> tuple:
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(batch, IN_CHANS, GRID, GRID, generator=g)
    labels = torch.randint(0, 1000, (batch,), generator=g)
    feats = torch.randn(batch, GRID * GRID, 768, generator=g)
    return tuple(v.to(device) for v in (x1, labels, feats))


# ----------------------------------------------------------------------------
# The two training steps.

OFFICIAL_COMPILED = (LightningDiTBlock, FinalLayer, TimestepEmbedder, LabelEmbedder)


def official_compile(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with @torch.compile where the official code puts it: on the forward of every
    module of OFFICIAL_COMPILED, not on the model's own forward."""
    for module in model.modules():
        if isinstance(module, OFFICIAL_COMPILED):
            module.forward = torch.compile(module.forward)
    return model


@torch.no_grad()
def ema_loop(ema, model, decay: float) -> None:
    """The official EMA update: one mul_ and one add_ per parameter."""
    ema_params = dict(ema.named_parameters())
    for name, param in model.named_parameters():
        ema_params[name].mul_(decay).add_(param.data, alpha=1 - decay)


class TrainVariant:
    """A model, its EMA and optimizer, and `step()` as ours or the official code does it."""

    def __init__(self, kind: str, mcfg: dict, batch: tuple, device):
        torch.manual_seed(0)
        self.kind, self.mcfg, self.batch, self.device, self.step_index = kind, mcfg, batch, device, 0
        self.model = build_model(mcfg).to(device).train()
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        if kind == "ours":
            self.net = Compiled(self.model, "bench ours")
            self.opt = make_optimizer(self.model, TRAIN, device)
        else:
            self.net = official_compile(self.model)
            self.opt = torch.optim.AdamW(
                self.model.parameters(),
                lr=TRAIN["lr"],
                betas=(0.9, TRAIN["beta2"]),
                weight_decay=TRAIN["weight_decay"],
            )

    def step(self) -> None:
        if self.kind == "ours":
            train_step(
                self.net,
                self.model,
                self.ema,
                self.opt,
                self.batch,
                seed=0,
                rank=0,
                step=self.step_index,
                device=self.device,
                mcfg=self.mcfg,
                tcfg=TRAIN,
            )
        else:
            x1, y, feats = self.batch
            gen = torch.Generator(self.device).manual_seed(self.step_index)
            noise = torch.randn(x1.shape, generator=gen, device=self.device)
            losses = training_losses(
                self.net,
                x1,
                y,
                delta_t=DELTA_T,
                semantic_chans=SEMANTIC_CHANS,
                semantic_weight=2.0,
                repa_target=feats,
                t=sample_logit_normal(len(x1), gen),
                noise=noise,
            )
            self.opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            self.opt.step()
            ema_loop(self.ema, self.model, TRAIN["ema_decay"])
        self.step_index += 1
        synchronize(self.device)


# ----------------------------------------------------------------------------
# The two sampling forwards.


def sampling_forwards(mcfg: dict, batch: tuple):
    """(ours, official) callables x, t, y -> velocity on the same perturbed weights."""
    torch.manual_seed(1)
    model = build_model(mcfg).to(batch[0].device)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.02 * torch.randn_like(param))
    ours = Compiled(model.eval().requires_grad_(False), "bench ours sampling")
    official_model = copy.deepcopy(model).train()
    official_model.y_embedder.dropout_prob = 0.0  # the eval forward: labels kept, projector computed
    official_compile(official_model)

    def official(x, t, y):
        return official_model(x, t, y)[0]

    return ours, official


# ----------------------------------------------------------------------------
# Timing, memory.


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def interleaved(fns: dict, rounds: int, reps: int) -> dict:
    """Per round, each fn run `reps` times (order alternating between rounds); seconds per call."""
    times = {name: [] for name in fns}
    order = list(fns)
    for r in range(rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            for _ in range(reps):
                fns[name]()
            times[name].append((time.perf_counter() - start) / reps)
    return times


def ratio_line(what: str, ours: list, official: list) -> str:
    """Median [min..max] of the per-round ratios, and the ratio of the best times (least load)."""
    ratios = [a / b for a, b in zip(ours, official)]
    return (
        f"{what}: ours {statistics.median(ours):.4f} s, official {statistics.median(official):.4f} s, "
        f"ours/official {statistics.median(ratios):.3f} [{min(ratios):.3f}..{max(ratios):.3f}], "
        f"best-of {min(ours) / min(official):.3f}"
    )


def utilisation(images: int, seconds: float, flops_per_image: int, device) -> str:
    """images/s, and the model-FLOPs utilisation of the device's bf16 peak where it is known."""
    rate = images / seconds
    peak = peak_bf16_flops(device_name(device))
    mfu = f", MFU {rate * flops_per_image / peak:.1%} of {peak / 1e12:.0f} TFLOP/s" if peak else ""
    return f"{rate:.2f} images/s at {flops_per_image / 1e9:.1f} GFLOP/image{mfu}"


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident set (bytes) of this process while the context runs, sampled every 2 ms."""

    def __enter__(self):
        self.peak, self.done = resident_bytes(), False
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self):
        while not self.done:
            self.peak = max(self.peak, resident_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.done = True
        self.thread.join()


def child_memory(kind: str, size: str, batch_size: int, device) -> float:
    """Peak memory (MiB) of two steady-state training steps of one variant (run in a child)."""
    mcfg = model_config(size)
    variant = TrainVariant(kind, mcfg, batch_of(mcfg, batch_size, device), device)
    for _ in range(2):  # compile and warm up
        variant.step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(2):
            variant.step()
        return torch.cuda.max_memory_allocated(device) / 2**20
    with PeakRSS() as watch:
        for _ in range(2):
            variant.step()
    return watch.peak / 2**20


def peak_memory(kind: str, size: str, batch_size: int, device_kind: str) -> float:
    cmd = [
        sys.executable,
        __file__,
        "--child-memory",
        kind,
        "--sizes",
        size,
        "--batch",
        str(batch_size),
        "--device",
        device_kind,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


# ----------------------------------------------------------------------------


def bench_size(size: str, args, device) -> list[str]:
    mcfg = model_config(size)
    batch = batch_of(mcfg, args.batch, device)
    lines = []

    set_tf32(False)  # as `sfd train`
    variants = {kind: TrainVariant(kind, mcfg, batch, device) for kind in ("ours", "official")}
    compile_s = {kind: timed(v.step) for kind, v in variants.items()}
    times = interleaved({k: v.step for k, v in variants.items()}, args.rounds, args.reps)
    lines.append(
        ratio_line(f"{size}/1 train step (batch {args.batch})", times["ours"], times["official"])
        + f"; first call (compiling) ours {compile_s['ours']:.0f} s, official {compile_s['official']:.0f} s"
    )
    lines.append(
        f"{size}/1 ours training: "
        + utilisation(args.batch, statistics.median(times["ours"]), train_flops_per_image(mcfg, GRID), device)
    )
    del variants

    set_tf32(True)  # both samplers run with TF32
    ours, official = sampling_forwards(mcfg, batch)
    x, y = batch[0], batch[1]
    t = (torch.full((len(x),), 0.4, device=device), torch.full((len(x),), 0.7, device=device))
    with torch.no_grad():
        gap = (ours(x, t, y) - official(x, t, y)).abs().max().item()
        times = interleaved(
            {"ours": lambda: ours(x, t, y), "official": lambda: official(x, t, y)}, args.rounds, args.reps
        )
    lines.append(
        ratio_line(
            f"{size}/1 sampling forward = cost per NFE (batch {args.batch})", times["ours"], times["official"]
        )
        + f"; max |v_ours - v_official| {gap:.1e} (same field: same NFE)"
    )
    lines.append(
        f"{size}/1 ours sampling, per NFE: "
        + utilisation(args.batch, statistics.median(times["ours"]), sample_flops_per_nfe(mcfg, GRID), device)
    )

    for r in range(args.memory_rounds):
        kinds = ("ours", "official") if r % 2 == 0 else ("official", "ours")
        mem = {kind: peak_memory(kind, size, args.batch, args.device) for kind in kinds}
        lines.append(
            f"{size}/1 train step peak memory, child pair {r + 1}: ours {mem['ours']:.0f} MiB, "
            f"official {mem['official']:.0f} MiB, ours/official {mem['ours'] / mem['official']:.3f}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["S", "B"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=1, help="calls per variant per round")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "npu"], default="cpu")
    parser.add_argument("--memory-rounds", type=int, default=1, help="pairs of peak-memory child processes")
    parser.add_argument("--child-memory", choices=["ours", "official"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = get_device(args.device)

    if args.child_memory:
        print(json.dumps({"peak_mib": child_memory(args.child_memory, args.sizes[0], args.batch, device)}))
        return
    load = os.getloadavg()[0]
    print(
        f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, load {load:.1f}; "
        f"{args.rounds} interleaved rounds x {args.reps} calls; median ratio [min..max] over rounds"
    )
    for size in args.sizes:
        for line in bench_size(size, args, device):
            print(line, flush=True)


if __name__ == "__main__":
    main()
