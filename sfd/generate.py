"""`sfd sample`: the N-sample evaluation set of one (model, checkpoint, guidance) (docs/method.md §4.4).

Every sample is a pure function of its global index g, so the output does not depend on how many
devices made it (the official inference seeds by rank and sizes batches by world size,
docs/method.md §7.7, §7.11):
  * label(g) = floor(g · num_classes / N): balanced, N / num_classes per class when divisible, in
    class order (the official g // 50 for N = 50,000);
  * noise(g) = randn from a CPU generator seeded by (seed, g), then moved to the device, so CUDA, NPU
    and CPU runs start from the same noise;
  * batch k is the global index range [k·B, (k+1)·B), whatever the world size: dopri5's adaptive
    step uses an error norm over the whole batch tensor, so batch composition must not depend on
    the number of ranks;
  * shard j is [j·S, (j+1)·S) with S a multiple of B; ranks take whole shards round-robin
    (shard j -> rank j mod world), i.e. whole batches.
Sampling runs in fp32 with the EMA weights; TF32 matmuls are on by default, as the official inference
sets them (`sampling.tf32`, recorded in meta.json and index.json), and the DiT forward is compiled
(`sampling.compile`).

Output directory: `shard-XXXXX.npz` (images uint8 [n,H,W,3], labels, indices, nfe per batch) written
atomically, `meta.json` (what is being sampled, checked on resume) first and `index.json` last;
every checkpoint is loaded into its model before anything is written, and the directory is locked
while a run works in it. Resume = run the same command again: existing shards are kept, the
missing and unreadable ones made (with a warning), so the final set is identical to an
uninterrupted run.
"""

import hashlib
import json
import logging
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sfd import distributed as dist
from sfd.checkpoint import CheckpointError
from sfd.config import ConfigError
from sfd.device import maybe_compile, set_tf32
from sfd.errors import InputError
from sfd.io import atomic_path, sha256, write_json
from sfd.latents import denormalize_texture, load_stats
from sfd.reads import view
from sfd.sampling import ode_sample
from sfd.tokenizers import load_texture_vae

log = logging.getLogger("sfd.generate")

# Experiment keys this command reads (sfd/reads.py): READS shape its output, ALSO_READS do not.
READS = (
    "data.num_classes",
    "latents.multiplier",
    "models.{model}.model",
    "models.{guide}.model",
    "sampling.method",
    "sampling.num_steps",
    "sampling.atol",
    "sampling.rtol",
    "sampling.timestep_shift",
    "sampling.batch_size",
    "sampling.shard_size",
    "sampling.seed",
    "sampling.cfg_interval_start",
    "sampling.num_samples",
    "sampling.guidance",
    "sampling.cfg_scale",
    "texture_vae.pretrained",
    "texture_vae.arch",
    "sampling.tf32",
)
ALSO_READS = ("device", "sampling.compile")

INDEX_VERSION = 1

# ----------------------------------------------------------------------------
# Index arithmetic: labels, noise, batches and shards are functions of the global index.


def balanced_labels(indices: torch.Tensor, num_samples: int, num_classes: int) -> torch.Tensor:
    """label(g) = floor(g · num_classes / num_samples) (int64)."""
    return torch.div(indices.long() * num_classes, num_samples, rounding_mode="floor")


def sample_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def sample_noise(indices, shape, seed: int) -> torch.Tensor:
    """[len(indices), *shape] float32 noise; row i drawn from a CPU generator seeded by (seed, g_i)."""
    rows = []
    for index in indices:
        generator = torch.Generator().manual_seed(sample_seed(seed, int(index)))
        rows.append(torch.randn(shape, generator=generator))
    return torch.stack(rows)


def shard_ranges(num_samples: int, shard_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + shard_size, num_samples)) for start in range(0, num_samples, shard_size)]


def batch_ranges(start: int, stop: int, batch_size: int) -> list[tuple[int, int]]:
    """Global batches [k·B, (k+1)·B) inside a shard (which starts on a batch boundary)."""
    return [(b, min(b + batch_size, stop)) for b in range(start, stop, batch_size)]


def shard_path(out: Path, shard: int) -> Path:
    return out / f"shard-{shard:05d}.npz"


def read_shard(path: Path, start: int, stop: int) -> dict | None:
    """A complete shard's arrays, or None if it is missing, unreadable (truncated: reported, so
    that it is redone) or not the expected range."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            arrays = {key: data[key] for key in ("images", "labels", "indices")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        log.warning("redoing %s: unreadable shard (%s: %s)", path, type(err).__name__, err)
        return None
    if not np.array_equal(arrays["indices"], np.arange(start, stop)) or len(arrays["images"]) != stop - start:
        log.warning("redoing %s: it does not hold samples [%d, %d)", path, start, stop)
        return None
    return arrays


# ----------------------------------------------------------------------------
# Models.


def latent_size(state_dict: dict, model_cfg: dict) -> int:
    """The latent grid the checkpoint was trained on, read from its pos_embed [1, T, D] (T = (H/p)²)."""
    from sfd.models.sizes import parse_model_type

    tokens = state_dict["pos_embed"].shape[1]
    side = int(round(tokens**0.5))
    if side * side != tokens:
        raise CheckpointError(f"pos_embed has {tokens} tokens, not a square grid")
    return side * parse_model_type(model_cfg["model_type"])[1]


def released_vae_arch(cfg: dict) -> dict | None:
    """The texture VAE architecture to load a released file with (it records none); our own
    checkpoints carry theirs."""
    return cfg["texture_vae"]["arch"] if cfg["texture_vae"]["pretrained"] is not None else None


def load_ema_model(cfg: dict, model_name: str, ckpt: Path, num_classes: int, device, source: str):
    """models.<model_name> with the EMA weights of `ckpt` (any layout sfd.checkpoint accepts); a
    checkpoint of another architecture is a CheckpointError naming the file and the first misfit key."""
    from sfd.checkpoint import load_strict, load_weights
    from sfd.models import build_model

    if model_name not in cfg.get("models", {}):
        raise ConfigError(
            f"{source}: models.{model_name}: no such model (have: {', '.join(cfg.get('models', {}))})"
        )
    model_cfg = cfg["models"][model_name]["model"]
    state = load_weights(ckpt)
    if "pos_embed" not in state:
        raise CheckpointError(f"{ckpt}: no pos_embed entry; not a LightningDiT checkpoint")
    try:
        input_size = latent_size(state, model_cfg)
    except CheckpointError as err:
        raise CheckpointError(f"{ckpt}: {err}") from None
    model = build_model(model_cfg, num_classes=num_classes, input_size=input_size)
    load_strict(model, state, f"{ckpt} (models.{model_name})")
    return model.to(device).eval().requires_grad_(False)


# ----------------------------------------------------------------------------
# The sampling loop.


def guidance_settings(scfg: dict, guidance: str, cfg_scale, guide_model, guide_ckpt) -> dict:
    """The guidance actually applied: kind, scale s (1 = off; forced for `none`), interval start."""
    scale = scfg["cfg_scale"] if cfg_scale is None else cfg_scale
    if guidance == "none":
        scale = 1.0
    if guidance == "autoguidance" and (guide_model is None or guide_ckpt is None):
        raise ConfigError("guidance autoguidance needs --guide-model and --guide-ckpt (the weak model)")
    if guidance != "none" and scale <= 1.0:
        log.warning("guidance %s with scale %s <= 1 is unguided sampling", guidance, scale)
    return {"guidance": guidance, "cfg_scale": float(scale), "cfg_interval_start": scfg["cfg_interval_start"]}


@dataclass
class ImageSampler:
    """Global indices -> uint8 images: per-index noise and label, ODE solve, de-normalise, decode."""

    model: torch.nn.Module  # or its sfd.device.Compiled stand-in (sampling.compile), likewise `weak`
    weak: torch.nn.Module | None  # AutoGuidance's weak model
    vae: torch.nn.Module
    stats: object
    settings: dict  # the `sampling` section
    guide: dict  # guidance_settings()
    num_samples: int
    num_classes: int
    delta_t: float
    interval_mode: str  # the model's semfirst_infer_interval_mode
    multiplier: float
    device: torch.device

    def __call__(self, indices: torch.Tensor) -> tuple[np.ndarray, int]:
        """(images uint8 [n, H, W, 3], NFE) for one batch of global indices."""
        model, s = self.model, self.settings
        side = model.grid_size * model.patch_size
        noise = sample_noise(indices, (model.in_chans, side, side), s["seed"]).to(self.device)
        labels = balanced_labels(indices, self.num_samples, self.num_classes).to(self.device)
        info = {}
        latents = ode_sample(
            model,
            noise,
            labels,
            delta_t=self.delta_t,
            semantic_chans=model.semantic_chans,
            method=s["method"],
            num_steps=s["num_steps"],
            atol=s["atol"],
            rtol=s["rtol"],
            timestep_shift=s["timestep_shift"],
            cfg_scale=self.guide["cfg_scale"],
            cfg_interval_start=self.guide["cfg_interval_start"],
            cfg_interval_mode=self.interval_mode,
            guide_model=self.weak,
            null_label=self.num_classes,
            stats=info,
        )
        with torch.no_grad():
            images = self.vae.decode_to_uint8(denormalize_texture(latents, self.stats, self.multiplier))
        return images.cpu().numpy(), info["nfe"]


def sample(
    cfg: dict,
    model_name: str,
    ckpt: Path,
    latents: Path,
    texture_vae: Path,
    out: Path,
    *,
    guidance: str | None = None,
    cfg_scale: float | None = None,
    guide_model: str | None = None,
    guide_ckpt: Path | None = None,
    num_samples: int | None = None,
    seed: int | None = None,
    source: str = "<config>",
) -> int:
    """Make the missing shards of `out` (this rank's share) and, on rank 0, the index.

    `seed` (default sampling.seed) seeds every sample's noise: replicate runs of a condition
    differ in it."""
    scfg = cfg["sampling"] if seed is None else {**cfg["sampling"], "seed": seed}
    n = scfg["num_samples"] if num_samples is None else num_samples
    if scfg["shard_size"] % scfg["batch_size"]:
        raise ConfigError(
            f"{source}: sampling.shard_size {scfg['shard_size']} is not a multiple of "
            f"batch_size {scfg['batch_size']}"
        )
    guide = guidance_settings(scfg, guidance or scfg["guidance"], cfg_scale, guide_model, guide_ckpt)
    ag = guide["guidance"] == "autoguidance"
    for name in (model_name, guide_model if ag else None):
        if name is not None and name not in cfg.get("models", {}):
            raise ConfigError(
                f"{source}: models.{name}: no such model (have: {', '.join(cfg.get('models', {}))})"
            )
    for path in (ckpt, texture_vae, guide_ckpt if ag else None):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{path}: no such file")
    meta = {
        "version": INDEX_VERSION,
        "model_name": model_name,
        "model": cfg["models"][model_name]["model"],
        "num_samples": n,
        "num_classes": cfg["data"]["num_classes"],
        "seed": scfg["seed"],
        **{
            k: scfg[k]
            for k in (
                "method",
                "num_steps",
                "atol",
                "rtol",
                "timestep_shift",
                "batch_size",
                "shard_size",
                "tf32",
            )
        },
        **guide,
        "guide_model": guide_model if ag else None,
        "multiplier": cfg["latents"]["multiplier"],
        "ckpt_sha256": sha256(ckpt),
        "guide_ckpt_sha256": sha256(guide_ckpt) if ag else None,
        "texture_vae_sha256": sha256(texture_vae),
        "stats_sha256": {p.name: sha256(p) for p in sorted(Path(latents).glob("*stats.pt"))},
        "ckpt_path": str(ckpt),
        "guide_ckpt_path": str(guide_ckpt) if ag else None,
        "texture_vae_path": str(texture_vae),
        "latents_path": str(latents),
    }

    device = dist.init(cfg["device"])
    rank, world = dist.get_rank(), dist.get_world_size()
    set_tf32(scfg["tf32"])
    # Every input is loaded (the checkpoints into their models) before anything is written.
    num_classes = meta["num_classes"]
    models = [
        maybe_compile(
            load_ema_model(cfg, name, path, num_classes, device, source), scfg["compile"], f"sample {name}"
        )
        for name, path in ((model_name, ckpt), (guide_model, guide_ckpt))[: 1 + ag]
    ]
    sampler = ImageSampler(
        model=models[0],
        weak=models[1] if ag else None,
        vae=load_texture_vae(texture_vae, arch=released_vae_arch(cfg)).to(device).eval(),
        stats=load_stats(latents),
        settings=scfg,
        guide=guide,
        num_samples=n,
        num_classes=num_classes,
        delta_t=meta["model"]["semfirst_delta_t"],
        interval_mode=meta["model"]["semfirst_infer_interval_mode"],
        multiplier=meta["multiplier"],
        device=device,
    )
    shards = shard_ranges(n, scfg["shard_size"])
    with dist.output_lock(out):
        if rank == 0:
            _claim(out, meta)
        dist.barrier()
        mine = [
            j
            for j in range(len(shards))
            if j % world == rank and read_shard(shard_path(out, j), *shards[j]) is None
        ]
        dist.print0(
            f"sampling {n} images of {model_name} ({ckpt}) with {guide['guidance']} s={guide['cfg_scale']}, "
            f"{scfg['method']}: {len(shards)} shards of {scfg['shard_size']} on {world} ranks, "
            f"{len(mine)} to make on rank 0"
        )
        _make_shards(sampler, out, [(j, *shards[j]) for j in mine], scfg["batch_size"], rank)
        dist.barrier()
        if rank == 0:
            _write_index(out, meta, shards)
    dist.cleanup()
    return 0


def _make_shards(
    sampler: ImageSampler, out: Path, todo: list[tuple[int, int, int]], batch_size: int, rank: int
):
    bar = tqdm(
        total=sum(len(batch_ranges(a, b, batch_size)) for _, a, b in todo),
        desc=f"sample rank {rank}",
        position=rank,
        dynamic_ncols=True,
    )
    for j, start, stop in todo:
        images, nfes, t0 = [], [], time.perf_counter()
        for b0, b1 in batch_ranges(start, stop, batch_size):
            batch, nfe = sampler(torch.arange(b0, b1))
            images.append(batch)
            nfes.append(nfe)
            bar.update(1)
        indices = np.arange(start, stop)
        labels = balanced_labels(torch.from_numpy(indices), sampler.num_samples, sampler.num_classes).numpy()
        with atomic_path(shard_path(out, j)) as tmp:
            np.savez(tmp, images=np.concatenate(images), labels=labels, indices=indices, nfe=np.asarray(nfes))
        log.info(
            "rank %d: shard %d [%d, %d) in %.1fs, mean NFE %.1f",
            rank,
            j,
            start,
            stop,
            time.perf_counter() - t0,
            float(np.mean(nfes)),
        )
    bar.close()


def _claim(out: Path, meta: dict) -> None:
    """Write meta.json, or check that existing shards were made with the same settings (file
    contents by hash; the paths they came from may differ). Settings that no shard was made with
    yet are simply replaced."""
    path = out / "meta.json"
    if path.exists() and any(out.glob("shard-*.npz")):
        try:
            old = json.loads(path.read_text())
        except ValueError as err:
            raise InputError(f"{path}: not valid JSON ({err}); delete {out} to start over") from None
        for key in sorted(set(old) | set(meta)):
            if not key.endswith("_path") and old.get(key) != meta.get(key):
                raise ConfigError(
                    f"{out}: holds samples made with {key}={old.get(key)!r}, this run has {meta.get(key)!r}; "
                    "use another output directory or delete it"
                )
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json(meta, path)


def _write_index(out: Path, meta: dict, shards: list[tuple[int, int]]) -> None:
    entries, shape = [], None
    for j, (start, stop) in enumerate(shards):
        arrays = read_shard(shard_path(out, j), start, stop)
        if arrays is None:
            raise RuntimeError(f"{shard_path(out, j)}: missing or incomplete after sampling")
        shape = list(arrays["images"].shape[1:])
        entries.append(
            {
                "file": shard_path(out, j).name,
                "start": start,
                "stop": stop,
                "sha256": sha256(shard_path(out, j)),
            }
        )
    digest = hashlib.sha256("".join(e["sha256"] for e in entries).encode()).hexdigest()
    write_json(
        {**meta, "image_shape": shape, "shards": entries, "content_sha256": digest}, out / "index.json"
    )
    dist.print0(f"wrote {out / 'index.json'}: {meta['num_samples']} images {shape}")


# ----------------------------------------------------------------------------
# CLI.


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML")
    parser.add_argument("--model", required=True, help="run name under `models:` (architecture of --ckpt)")
    parser.add_argument("--ckpt", required=True, type=Path, help="checkpoint; its EMA weights are sampled")
    parser.add_argument(
        "--latents",
        required=True,
        type=Path,
        help="directory with latents_stats.pt / latents_sv_stats.pt (de-normalisation)",
    )
    parser.add_argument("--texture-vae", required=True, type=Path, help="texture VAE checkpoint (decoder)")
    parser.add_argument(
        "--out", required=True, type=Path, help="output sample directory (shards + index.json)"
    )
    parser.add_argument(
        "--guidance", choices=["none", "cfg", "autoguidance"], default=None, help="default: sampling.guidance"
    )
    parser.add_argument(
        "--cfg-scale", type=float, default=None, help="guidance scale; default: sampling.cfg_scale"
    )
    parser.add_argument("--guide-model", default=None, help="AutoGuidance: run name of the weak model")
    parser.add_argument(
        "--guide-ckpt", type=Path, default=None, help="AutoGuidance: the weak model's checkpoint"
    )
    parser.add_argument("--num-samples", type=int, default=None, help="default: sampling.num_samples")
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda", "npu"], default=None, help="override `device`"
    )


def main(args) -> int:
    cfg = view(args.config, __name__, model=args.model, guide=args.guide_model)
    if args.device:
        cfg = cfg.replace("device", args.device)
    if args.num_samples is not None and args.num_samples < 1:
        raise ConfigError(f"--num-samples must be >= 1, got {args.num_samples}")
    return sample(
        cfg,
        args.model,
        args.ckpt,
        args.latents,
        args.texture_vae,
        args.out,
        guidance=args.guidance,
        cfg_scale=args.cfg_scale,
        guide_model=args.guide_model,
        guide_ckpt=args.guide_ckpt,
        num_samples=args.num_samples,
        source=args.config,
    )
