"""`sfd sample-run`: `sfd sample` for one run of the experiment, its settings read when it runs.

dvc.yaml keeps commands as text, so a command must carry no value of the experiment file: DVC
would see the parameter change and rerun the stage with the old value still in its command line.
This reads `runs.<run>` (model, guidance kind, scale and model, sample count, source) from the
experiment, checks that the checkpoints it was handed are the ones that run samples (a dvc.yaml
older than the experiment names others), and runs `sfd sample` with them.
"""

import argparse
from pathlib import Path

from sfd.config import ConfigError
from sfd.workflow.matrix import load


def sample_argv(exp, run: str, ckpt: Path, guide_ckpt: Path | None) -> list[str]:
    """The `sfd sample` options of `run`, after checking the checkpoint paths against it."""
    spec = exp.run(run)
    expected = exp.ema(spec["model"], spec["step"], spec["source"])
    if Path(ckpt) != Path(expected):
        raise ConfigError(f"{exp.path}: runs.{run} samples {expected}, not {ckpt} (dvc.yaml stale? run `sfd dvc-yaml`)")
    guidance = spec["guidance"]
    argv = ["--config", exp.path, "--model", spec["model"], "--ckpt", str(ckpt), "--guidance", guidance["kind"],
            "--cfg-scale", str(guidance["scale"]), "--num-samples", str(exp.num_samples(run))]
    if guidance["kind"] == "autoguidance":
        guide = exp.ema(guidance["model"], guidance["step"], spec["source"])
        if guide_ckpt is None or Path(guide_ckpt) != Path(guide):
            raise ConfigError(f"{exp.path}: runs.{run}.guidance uses {guide}, not {guide_ckpt} (dvc.yaml stale?)")
        argv += ["--guide-model", guidance["model"], "--guide-ckpt", str(guide_ckpt)]
    return argv


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML")
    parser.add_argument("--run", required=True, help="a key of `runs`")
    parser.add_argument("--ckpt", required=True, type=Path, help="the run's EMA checkpoint")
    parser.add_argument("--guide-ckpt", type=Path, default=None, help="AutoGuidance: the weak model's EMA checkpoint")
    parser.add_argument("--latents", required=True, type=Path, help="directory with the latent statistics")
    parser.add_argument("--texture-vae", required=True, type=Path, help="texture VAE checkpoint (decoder)")
    parser.add_argument("--out", required=True, type=Path, help="sample directory")


def main(args) -> int:
    from sfd import generate

    exp = load(args.config)
    argv = sample_argv(exp, args.run, args.ckpt, args.guide_ckpt)
    argv += ["--latents", str(args.latents), "--texture-vae", str(args.texture_vae), "--out", str(args.out)]
    parser = argparse.ArgumentParser(prog="sfd sample")
    generate.add_arguments(parser)
    return generate.main(parser.parse_args(argv))
