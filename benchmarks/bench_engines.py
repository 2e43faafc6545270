"""Engine throughput: `sfd train` and `sfd sample` images/s, one process vs 2-process gloo DDP.

Two cases, both on the CPU through the real commands (torchrun --nproc-per-node 2 for DDP):
  * toy: a model of config/toy.yaml (default sfd_t) with its own training recipe and sampler;
  * B/1: config/paper.yaml's sfd_b (the AutoGuidance model, LightningDiT-B/1 at 48x16x16) with
    a small global batch and a few Euler steps, since a CPU cannot run the paper's batch.
Inputs are synthetic latents of the right shapes and a randomly initialised texture VAE of the
config's architecture: throughput does not depend on the values.

Training images/s is the median of the per-step figures in log.jsonl after `--warmup` steps.
Generation images/s is N / (the slowest rank's summed shard time), i.e. without process start-up
and model loading; it includes the VAE decode. A single process uses `--threads` intra-op
threads, each DDP rank max(threads/2, 1): `--threads 2` compares both settings on the same two
cores, `--threads 1` one core against two. On a shared, loaded machine two spinning intra-op
threads in one process can be many times slower than one, so read `--threads 2` figures with
the load average printed alongside.

    python benchmarks/bench_engines.py [--cases toy b1] [--steps N] [--threads 2] [--workdir DIR]
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from sfd.config import load_experiment
from sfd.latents import compute_stats, write_index, write_shard
from sfd.models.sizes import repa_out_dim
from sfd.tokenizers import AEArch, TextureVAE, save_texture_vae

CASES = {
    # case: (config, model, global batch (None = the recipe's), train steps, train items,
    #        samples, sample batch, sampler overrides)
    "toy": ("config/toy.yaml", "sfd_t", None, 12, 256, 200, 50, None),
    "b1": ("config/paper.yaml", "sfd_b", 2, 4, 8, 4, 1, {"method": "euler", "num_steps": 6}),
}


def synthetic_latents(path: Path, cfg: dict, model: str, items: int) -> None:
    """Random latents, flipped copies, REPA tokens and labels in the extraction format."""
    mcfg = cfg["models"][model]["model"]
    arch = AEArch.from_dict(cfg["texture_vae"]["arch"])
    grid = cfg["data"]["image_size"] // arch.downsample_factor
    tex, sem = mcfg["in_chans"] - mcfg["semantic_chans"], mcfg["semantic_chans"]
    dim = repa_out_dim(mcfg)
    g = torch.Generator().manual_seed(0)
    shard = {
        "latents": torch.randn(items, tex, grid, grid, generator=g),
        "latents_sv": torch.randn(items, sem, grid, grid, generator=g),
        "feats": torch.randn(items, grid * grid, dim, generator=g).half(),
        "labels": torch.randint(0, cfg["data"]["num_classes"], (items,), generator=g),
    }
    for key in ("latents", "latents_sv", "feats"):
        shard[f"{key}_flip"] = shard[key].clone()
    write_shard(path, 0, shard)
    write_index(path)
    compute_stats(path, samples=items, seed=0)


def run(cmd: list[str], threads: int, log: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as f:
        done = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}); see {log}")


def launcher(nproc: int) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "sfd"]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "sfd",
    ]


def train_throughput(
    work: Path, cfg_path: Path, model: str, latents: Path, nproc: int, threads: int, warmup: int
) -> tuple[float, Path]:
    run_dir = work / f"train-{nproc}"
    run(
        [
            *launcher(nproc),
            "train",
            "--config",
            str(cfg_path),
            "--model",
            model,
            "--latents",
            str(latents),
            "--run-dir",
            str(run_dir),
        ],
        threads,
        work / f"train-{nproc}.log",
    )
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return statistics.median(r["images_per_s"] for r in records[warmup:]), run_dir


def sample_throughput(
    work: Path,
    cfg_path: Path,
    model: str,
    ckpt: Path,
    latents: Path,
    vae: Path,
    nproc: int,
    threads: int,
    num: int,
) -> float:
    log = work / f"sample-{nproc}.log"
    run(
        [
            *launcher(nproc),
            "sample",
            "--config",
            str(cfg_path),
            "--model",
            model,
            "--ckpt",
            str(ckpt),
            "--latents",
            str(latents),
            "--texture-vae",
            str(vae),
            "--out",
            str(work / f"samples-{nproc}"),
        ],
        threads,
        log,
    )
    per_rank = {}
    for rank, seconds in re.findall(r"rank (\d+): shard \d+ \[\d+, \d+\) in ([\d.]+)s", log.read_text()):
        per_rank[rank] = per_rank.get(rank, 0.0) + float(seconds)
    return num / max(per_rank.values())


def bench_case(name: str, work: Path, steps: int | None, threads: int, warmup: int) -> dict:
    config, model, batch, case_steps, items, num, sample_batch, sampler = CASES[name]
    steps = steps or case_steps
    cfg = load_experiment(config)
    raw = yaml.safe_load(Path(config).read_text())
    raw["device"] = "cpu"
    train = raw["models"][model].setdefault("train", {})
    train.update(budgets=[steps], keep_steps=[], ckpt_every=10**9, log_every=1, num_workers=0)
    if batch is not None:
        train["global_batch_size"] = batch
    raw["sampling"] = {
        **raw.get("sampling", {}),
        **(sampler or {}),
        "num_samples": num,
        "batch_size": sample_batch,
        "shard_size": sample_batch,
    }
    cfg_path = work / "exp.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    latents = work / "latents"
    synthetic_latents(latents, cfg, model, items)
    vae = work / "vae.pt"
    torch.manual_seed(0)
    save_texture_vae(TextureVAE(cfg["texture_vae"]["arch"]), vae)

    result = {
        "case": name,
        "model": cfg["models"][model]["model"]["model_type"],
        "steps": steps,
        "global_batch": batch or cfg["models"][model]["train"]["global_batch_size"],
    }
    for nproc in (1, 2):
        per_rank = max(threads // nproc, 1)
        result[f"train_{nproc}p"], run_dir = train_throughput(
            work, cfg_path, model, latents, nproc, per_rank, warmup
        )
        if nproc == 1:
            ckpt = run_dir / "ema" / f"{steps:07d}.pt"
        result[f"sample_{nproc}p"] = sample_throughput(
            work, cfg_path, model, ckpt, latents, vae, nproc, per_rank, num
        )
    result["train_ratio"] = result["train_2p"] / result["train_1p"]
    result["sample_ratio"] = result["sample_2p"] / result["sample_1p"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=["toy", "b1"])
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default: per case)")
    parser.add_argument("--warmup", type=int, default=1, help="leading steps left out of the median")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads in total")
    parser.add_argument("--workdir", type=Path, default=None, help="keep inputs and logs here")
    args = parser.parse_args()

    start = time.time()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            work = (args.workdir or Path(tmp)) / case
            work.mkdir(parents=True, exist_ok=True)
            rows.append(bench_case(case, work, args.steps, args.threads, args.warmup))
    print(
        f"\nCPU, {args.threads} threads in total; load average {os.getloadavg()[0]:.1f}; "
        f"{time.time() - start:.0f}s"
    )
    print(
        f"{'case':5} {'model':18} {'batch':>5} | {'train img/s 1p':>14} {'2p':>8} {'2p/1p':>6} | "
        f"{'sample img/s 1p':>15} {'2p':>8} {'2p/1p':>6}"
    )
    for r in rows:
        print(
            f"{r['case']:5} {r['model']:18} {r['global_batch']:>5} | "
            f"{r['train_1p']:>14.2f} {r['train_2p']:>8.2f} "
            f"{r['train_ratio']:>6.2f} | {r['sample_1p']:>15.3f} {r['sample_2p']:>8.3f} "
            f"{r['sample_ratio']:>6.2f}"
        )


if __name__ == "__main__":
    main()
