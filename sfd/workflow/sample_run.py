"""`sfd sample-run`: `sfd sample` for one run of the experiment, its settings read when it runs.

dvc.yaml keeps commands as text, so a command must carry no value of the experiment file: DVC
would see the parameter change and rerun the stage with the old value still in its command line.
This reads `runs.<run>` (model, guidance kind, scale and model, sample count, source, seed) from the
experiment, checks that the checkpoints it was handed are the ones that run samples (a dvc.yaml
older than the experiment names others), and calls the sampler of `sfd.generate` with them.
"""

from pathlib import Path

from sfd.config import ConfigError
from sfd.workflow.matrix import Experiment, load

# Experiment keys this command reads (sfd/reads.py): READS shape its output, ALSO_READS do not.
READS = (
    "data.num_classes",
    "latents.multiplier",
    "runs.{run}",
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
    "sampling.tf32",
    "texture_vae.pretrained",
    "texture_vae.arch",
)
ALSO_READS = ("device", "name", "sampling.compile")


def check_checkpoints(exp: Experiment, run: str, ckpt: Path, guide_ckpt: Path | None) -> None:
    """The checkpoints handed over must be the ones `run` samples with (else dvc.yaml is stale)."""
    spec = exp.run(run)
    expected = exp.ema(spec["model"], spec["step"], spec["source"])
    if Path(ckpt) != Path(expected):
        raise ConfigError(
            f"{exp.path}: runs.{run} samples {expected}, not {ckpt} (dvc.yaml stale? run `sfd dvc-yaml`)"
        )
    guidance = spec["guidance"]
    if guidance["kind"] == "autoguidance":
        guide = exp.ema(guidance["model"], guidance["step"], spec["source"])
        if guide_ckpt is None or Path(guide_ckpt) != Path(guide):
            raise ConfigError(
                f"{exp.path}: runs.{run}.guidance uses {guide}, not {guide_ckpt} (dvc.yaml stale?)"
            )


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML")
    parser.add_argument("--run", required=True, help="a key of `runs`")
    parser.add_argument("--ckpt", required=True, type=Path, help="the run's EMA checkpoint")
    parser.add_argument(
        "--guide-ckpt", type=Path, default=None, help="AutoGuidance: the weak model's EMA checkpoint"
    )
    parser.add_argument("--latents", required=True, type=Path, help="directory with the latent statistics")
    parser.add_argument("--texture-vae", required=True, type=Path, help="texture VAE checkpoint (decoder)")
    parser.add_argument("--out", required=True, type=Path, help="sample directory")


def main(args) -> int:
    from sfd import generate

    exp = load(args.config, __name__, run=args.run)
    check_checkpoints(exp, args.run, args.ckpt, args.guide_ckpt)
    spec = exp.run(args.run)
    guidance = spec["guidance"]
    ag = guidance["kind"] == "autoguidance"
    return generate.sample(
        exp.cfg,
        spec["model"],
        args.ckpt,
        args.latents,
        args.texture_vae,
        args.out,
        guidance=guidance["kind"],
        cfg_scale=guidance["scale"],
        guide_model=guidance["model"] if ag else None,
        guide_ckpt=args.guide_ckpt if ag else None,
        num_samples=exp.num_samples(args.run),
        seed=spec.get("seed"),
        source=exp.path,
    )
