"""Core cost benchmark: SFD training step and sampling cost of LightningDiT-S/1 and B/1 on CPU.

For each size (in_chans 48, semantic_chans 16, delta_t 0.3, REPA on, untrained but initialised):
  * train step: forward + backward of sfd.flow.training_losses at the given batch (min over reps);
  * forward: one eval forward at that batch, the cost of one sampler NFE (min over reps);
  * dopri5 (atol 1e-6, rtol 1e-3, 250 output points) and euler-N: NFE and seconds per image.

Sampling time per image is NFE × forward / batch plus the solver's own overhead (measured on a
zero field), not a timed full solve: a full solve of B/1 at batch 8 takes many minutes on a small
CPU. The NFE comes from a real `ode_sample` run. An initialised model predicts exactly zero
velocity (its output layer is zero-initialised, docs/method.md §2.5); when the check below confirms this,
the solve is run on a zero field, which gives the identical step sequence and NFE at no model
cost. An untrained model's dopri5 NFE is NOT the NFE of a trained model.

    python benchmarks/bench_core.py [--sizes S B] [--batch 8] [--reps 2] [--euler-steps 50]
"""

import argparse
import os
import time

import torch

from sfd.flow import training_losses
from sfd.models import build_model
from sfd.sampling import ode_sample

DELTA_T, SEMANTIC_CHANS, IN_CHANS, GRID, REPA_DIM = 0.3, 16, 48, 16, 768


def model_config(size: str) -> dict:
    return dict(
        model_type=f"LightningDiT-{size}/1",
        in_chans=IN_CHANS,
        semantic_chans=SEMANTIC_CHANS,
        semfirst_delta_t=DELTA_T,
        semantic_weight=2.0,
        use_qknorm=True,
        use_swiglu=True,
        use_rope=True,
        use_rmsnorm=True,
        use_repa=True,
    )


def best_time(fn, reps: int) -> float:
    """Minimum wall time over reps (the first call doubles as warm-up)."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


class ZeroVelocity(torch.nn.Module):
    def forward(self, x, t, y):
        return torch.zeros_like(x)


def sampling_cost(model, noise, labels, forward_s: float, method: str, num_steps: int) -> tuple[int, float]:
    """(NFE, seconds per image) of one solve; see the module docstring for how it is measured."""
    kwargs = dict(delta_t=DELTA_T, semantic_chans=SEMANTIC_CHANS, method=method, num_steps=num_steps)
    with torch.no_grad():
        zero_field = (
            model.eval()(noise, (torch.zeros(len(noise)), torch.zeros(len(noise))), labels).abs().max() == 0
        )
    stats = {}
    start = time.perf_counter()
    ode_sample(ZeroVelocity(), noise, labels, stats=stats, **kwargs)
    overhead = time.perf_counter() - start
    if not zero_field:
        stats = {}
        ode_sample(model, noise, labels, stats=stats, **kwargs)
    return stats["nfe"], (stats["nfe"] * forward_s + overhead) / len(noise)


def bench(size: str, batch: int, reps: int, euler_steps: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    model = build_model(model_config(size))
    x1 = torch.randn(batch, IN_CHANS, GRID, GRID, generator=g)
    labels = torch.randint(0, 1000, (batch,), generator=g)
    target = torch.randn(batch, GRID * GRID, REPA_DIM, generator=g)

    def train_step():
        model.train()
        model.zero_grad(set_to_none=True)
        losses = training_losses(
            model, x1, labels, delta_t=DELTA_T, semantic_chans=SEMANTIC_CHANS, repa_target=target, generator=g
        )
        losses["total"].backward()

    def forward():
        t = torch.full((batch,), 0.5)
        with torch.no_grad():
            model.eval()(x1, (t, t), labels)

    row = dict(size=size, params=sum(p.numel() for p in model.parameters()) / 1e6)
    row["train"] = best_time(train_step, reps)
    row["forward"] = best_time(forward, reps)
    noise = torch.randn(batch, IN_CHANS, GRID, GRID, generator=g)
    row["dopri5_nfe"], row["dopri5_img"] = sampling_cost(model, noise, labels, row["forward"], "dopri5", 250)
    row["euler_nfe"], row["euler_img"] = sampling_cost(
        model, noise, labels, row["forward"], "euler", euler_steps
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["S", "B"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument(
        "--euler-steps", type=int, default=50, help="grid points; euler takes one fewer steps"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"load {load:.1f}; batch {args.batch}, min of {args.reps} reps; delta_t {DELTA_T}, REPA on"
    )
    rows = [bench(size, args.batch, args.reps, args.euler_steps, args.seed) for size in args.sizes]

    euler = f"euler-{args.euler_steps}"
    header = (
        f"{'model':<18}{'params M':>9}{'train s':>9}{'fwd s':>8}{'dopri5 NFE':>11}{'s/img':>8}"
        f"{euler + ' NFE':>14}{'s/img':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{'LightningDiT-' + r['size'] + '/1':<18}{r['params']:>9.1f}"
            f"{r['train']:>9.2f}{r['forward']:>8.2f}"
            f"{r['dopri5_nfe']:>11d}{r['dopri5_img']:>8.2f}{r['euler_nfe']:>14d}{r['euler_img']:>8.2f}"
        )
    print()
    for r in rows:
        print(
            f"{r['size']}/1: train step / forward = {r['train'] / r['forward']:.2f}x; "
            f"dopri5 / {euler} time per image = {r['dopri5_img'] / r['euler_img']:.2f}x"
        )
    for a, b in zip(rows, rows[1:]):
        print(
            f"{b['size']}/1 vs {a['size']}/1: params {b['params'] / a['params']:.2f}x, "
            f"train step {b['train'] / a['train']:.2f}x, forward {b['forward'] / a['forward']:.2f}x"
        )
    print("dopri5 NFE here is for an untrained (initialised) model, not the NFE of a trained one.")


if __name__ == "__main__":
    main()
