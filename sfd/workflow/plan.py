"""`sfd plan`: the jobs a target needs, their device-hours and downloads, before anything is submitted.

For an experiment and a profile, builds the Snakemake DAG of the targets as if nothing existed
(no job runs), counts each rule's jobs and estimates the device-hours of the device jobs from the
FLOPs of their models: hours = FLOPs / (peak x MFU) / 3600, with the peak of the precision the job
computes in (bf16 autocast training; sampling and latent extraction in fp32, TF32 off) and the
profile's assumptions `peak_tflops_bf16`, `peak_tflops_fp32`, `mfu`
(workflow/schemas/config.schema.yaml). FLOPs per job:
  * train: images x train_flops_per_image (sfd.models.flops: forward + backward);
  * sample: samples x NFE x (sample_flops_per_nfe [+ the AutoGuidance model's | x2 for CFG]) + the VAE decode;
    NFE is counted for fixed-step methods and `sampling.expected_nfe` for dopri5;
  * train_semvae: iterations x batch x the Semantic VAE's forward + backward on one token set;
  * extract_features: images x the encoder on the SemVAE-training crop;
  * extract_latents: images x views (flips) x (texture VAE encoder + encoder + SemVAE encoder).
The models other than the DiT are counted by torch's FlopCounterMode on meta tensors (no weights,
no compute). Jobs without a device (statistics, packing, the TensorFlow evaluator, tables) are
counted but not costed. Then the files the targets download (`sfd downloads`).
"""

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import yaml

from sfd.config import ConfigError, load_yaml
from sfd.models.flops import sample_flops_per_nfe, train_flops_per_image
from sfd.workflow import downloads
from sfd.workflow.matrix import Experiment, load

FIXED_STEP_NFE = {"euler": 1, "heun": 2, "midpoint": 2}  # model evaluations per grid interval


@dataclass(frozen=True)
class Cost:
    flops: float | None  # None: not estimable (dopri5 without sampling.expected_nfe)
    precision: str  # "bf16" or "fp32": which device peak applies


def sampler_nfe(sampling: dict) -> int | None:
    """Model evaluations per sample: exact for fixed-step methods, assumed for the adaptive dopri5."""
    if sampling["method"] in FIXED_STEP_NFE:
        return FIXED_STEP_NFE[sampling["method"]] * (sampling["num_steps"] - 1)
    return sampling["expected_nfe"]


def _on_meta(build):
    """A module built on the meta device: shapes only, no memory, no initialisation cost."""
    import torch

    with torch.device("meta"):
        return build()


def _counted(fn) -> int:
    """FLOPs torch's FlopCounterMode counts for `fn(torch)`, run on meta tensors."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"), FlopCounterMode(display=False) as counter:
        fn(torch)
    return counter.get_total_flops()


class Costs:
    """FLOPs of the experiment's jobs; per-image model costs are counted once, on demand."""

    def __init__(self, exp: Experiment):
        self.exp = exp
        self.cfg = exp.cfg

    @property
    def latent_grid(self) -> int:
        return self.cfg["data"]["image_size"] // 2 ** (len(self.cfg["texture_vae"]["arch"]["ch_mult"]) - 1)

    def dit(self, model: str, train: bool) -> int:
        model_cfg = self.cfg["models"][model]["model"]
        count = train_flops_per_image if train else sample_flops_per_nfe
        return count(model_cfg, self.latent_grid)

    @cached_property
    def train_images(self) -> int:
        data = self.cfg["data"]
        return data["train_size"] if data["source"] == "toy" else data["hf"]["expected_images"]["train"]

    @cached_property
    def _texture_vae(self):
        from sfd.tokenizers.texture_vae import TextureVAE

        return _on_meta(lambda: TextureVAE(self.cfg["texture_vae"]["arch"]))

    @cached_property
    def _encoder(self):
        from sfd.semantic.encoder import build_encoder

        return _on_meta(lambda: build_encoder(self.cfg["semantic_encoder"]))

    @cached_property
    def _semvae(self):
        from sfd.semantic.semvae import SemanticVAE, SemVAEArch

        return _on_meta(lambda: SemanticVAE(SemVAEArch.from_section(self.cfg["semvae"], self._encoder.dim)))

    @cached_property
    def texture_encode(self) -> int:
        size = self.cfg["data"]["image_size"]
        return _counted(lambda torch: self._texture_vae.posterior(torch.empty(1, 3, size, size)))

    @cached_property
    def texture_decode(self) -> int:
        z, grid = self.cfg["texture_vae"]["arch"]["z_channels"], self.latent_grid
        return _counted(lambda torch: self._texture_vae.decode(torch.empty(1, z, grid, grid)))

    @cached_property
    def encoder_tokens(self) -> int:
        size = self.cfg["data"]["image_size"]
        return _counted(lambda torch: self._encoder.tokens(torch.empty(1, 3, size, size)))

    @cached_property
    def encoder_features(self) -> int:
        size = self.cfg["semantic_encoder"]["img_size"]
        return _counted(lambda torch: self._encoder.features(torch.empty(1, 3, size, size)))

    def _tokens(self, torch):
        return torch.empty(1, self._encoder.num_tokens, self._encoder.dim)

    @cached_property
    def semvae_encode(self) -> int:
        return _counted(lambda torch: self._semvae.encode(self._tokens(torch)))

    @cached_property
    def semvae_train(self) -> int:
        return _counted(lambda torch: self._semvae(self._tokens(torch))[0].sum().backward())

    def job(self, rule: str, wildcards: dict) -> Cost | None:
        """The job's FLOPs and precision; None for a job with no model on a device."""
        cfg, exp = self.cfg, self.exp
        if rule == "train":
            model, step = wildcards["model"], int(wildcards["step"])
            train = cfg["models"][model]["train"]
            images = (step - (exp.previous_step(model, step) or 0)) * train["global_batch_size"]
            return Cost(
                images * self.dit(model, True), "bf16" if train["mixed_precision"] == "bf16" else "fp32"
            )
        if rule == "sample_run":
            run = exp.run(wildcards["run"])
            nfe = sampler_nfe(cfg["sampling"])
            if nfe is None:
                return Cost(None, "fp32")
            forward = self.dit(run["model"], False)
            guidance = run["guidance"]
            if guidance["kind"] == "autoguidance" and guidance["scale"] > 1:
                forward += self.dit(guidance["model"], False)
            elif guidance["kind"] == "cfg" and guidance["scale"] > 1:
                forward *= 2
            return Cost(exp.num_samples(wildcards["run"]) * (nfe * forward + self.texture_decode), "fp32")
        if rule == "train_semvae":
            t = cfg["semvae"]["train"]
            return Cost(
                t["iterations"] * t["batch_size"] * self.semvae_train,
                "bf16" if t["mixed_precision"] else "fp32",
            )
        if rule == "extract_features":
            return Cost(self.train_images * self.encoder_features, "fp32")
        if rule == "extract_latents":
            views = 2 if cfg["latents"]["flip"] else 1
            per_view = self.texture_encode + self.encoder_tokens + self.semvae_encode
            return Cost(self.train_images * views * per_view, "fp32")
        return None


def device_hours(cost: Cost, settings: dict) -> float | None:
    peak = settings[f"peak_tflops_{cost.precision}"]
    if cost.flops is None or peak is None:
        return None
    return cost.flops / (peak * 1e12 * settings["mfu"]) / 3600


def profile_config(profile) -> dict:
    """The Snakemake `config:` entries (key=value) of a profile directory."""
    profile = Path(profile)
    files = [profile / name for name in ("config.v8+.yaml", "config.yaml") if (profile / name).is_file()]
    if not files:
        raise ConfigError(f"{profile}: no config.v8+.yaml or config.yaml; give a Snakemake profile directory")
    entries = load_yaml(files[0]).get("config") or []
    return {key: yaml.safe_load(value) for key, _, value in (str(e).partition("=") for e in entries)}


@dataclass
class RuleRow:
    rule: str
    jobs: int = 0
    devices: int = 0  # per job, from the job's resources
    flops: float = 0.0
    hours: float | None = 0.0  # None once any job's hours are unknown
    costed: bool = False


def plan(exp: Experiment, jobs: list, settings: dict) -> list[RuleRow]:
    """One row per rule, in DAG order of first appearance; device jobs costed."""
    costs = Costs(exp)
    rows: dict[str, RuleRow] = {}
    for job in jobs:
        row = rows.setdefault(job.rule.name, RuleRow(job.rule.name))
        row.jobs += 1
        resources = dict(job.resources)
        row.devices = max(row.devices, resources.get("gpu", 0) or _gres_devices(resources.get("gres")))
        cost = costs.job(job.rule.name, dict(job.wildcards_dict))
        if cost is None:
            continue
        row.costed = True
        row.flops += cost.flops or 0.0
        hours = device_hours(cost, settings)
        row.hours = None if hours is None or row.hours is None else row.hours + hours
    return list(rows.values())


def _gres_devices(gres) -> int:
    return int(str(gres).rsplit(":", 1)[1]) if gres else 0


def report(rows: list[RuleRow]) -> str:
    lines = [f"{'rule':<21} {'jobs':>5} {'dev/job':>7} {'PFLOP':>12} {'device-hours':>13}"]
    for r in rows:
        flops = f"{r.flops / 1e15:,.1f}" if r.costed else "-"
        hours = ("?" if r.hours is None else f"{r.hours:,.1f}") if r.costed else "-"
        lines.append(f"{r.rule:<21} {r.jobs:>5} {r.devices or '-':>7} {flops:>12} {hours:>13}")
    costed = [r for r in rows if r.costed]
    total = "?" if any(r.hours is None for r in costed) else f"{sum(r.hours for r in costed):,.1f}"
    lines.append(
        f"{'total':<21} {sum(r.jobs for r in rows):>5} {'':>7} "
        f"{sum(r.flops for r in costed) / 1e15:>12,.1f} {total:>13}"
    )
    return "\n".join(lines)


def assumptions(exp: Experiment, settings: dict) -> str:
    def peak(precision):
        value = settings[f"peak_tflops_{precision}"]
        return f"{value:g}" if value is not None else f"unset (peak_tflops_{precision})"

    nfe = sampler_nfe(exp.cfg["sampling"])
    sampling = exp.cfg["sampling"]
    nfe_text = (
        f"{nfe} NFE per sample ({sampling['method']}"
        + (", assumed: sampling.expected_nfe)" if sampling["method"] == "dopri5" else ")")
        if nfe is not None
        else "dopri5 NFE unknown: set sampling.expected_nfe"
    )
    return (
        f"assumptions: peak TFLOP/s per device bf16 {peak('bf16')}, fp32 {peak('fp32')}; "
        f"MFU {settings['mfu']:g}; {nfe_text}"
    )


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML")
    parser.add_argument("--profile", default=None, help="Snakemake profile directory (its config: entries)")
    parser.add_argument("--offline", action="store_true", help="download sizes from download_sizes only")
    parser.add_argument(
        "targets", nargs="*", help="Snakemake targets (default: the default target, every table)"
    )


def main(args) -> int:
    from sfd.workflow.dvc_yaml import snakemake_jobs

    exp = load(args.config)
    profile = profile_config(args.profile) if args.profile else {}
    jobs = snakemake_jobs(args.config, Path("."), args.targets, profile)
    settings = jobs[0].rule.workflow.config  # the profile's entries, schema defaults filled
    rows = plan(exp, jobs, settings)
    print(
        f"sfd plan: {args.config}, profile {args.profile or '(none)'}, "
        f"targets {' '.join(args.targets) or '(default)'}, every job from scratch"
    )
    print(assumptions(exp, settings))
    print(report(rows))
    outputs = {str(out) for job in jobs for out in job.output}
    needed = [d for d in downloads.planned(exp) if d.out in outputs]
    online = not (args.offline or downloads.hub_offline())
    print("\ndownloads (local rules, on this node):")
    print(downloads.report(downloads.sized(needed, exp.cfg["download_sizes"], online)))
    return 0
