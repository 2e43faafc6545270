"""Semantic VAE: architecture, posterior, losses, released-layout loading, training and resume."""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
import yaml
from engine_fixtures import hidden_files, plant_leftovers
from omegaconf import OmegaConf
from safetensors.torch import save_file

from sfd.config import validate
from sfd.semantic import load_semvae
from sfd.semantic.semvae import SemanticVAE, SemVAEArch
from sfd.semantic.train_semvae import build_scheduler, semvae_losses, token_cosine, train

SMALL = SemVAEArch(
    input_dim=24,
    bottleneck_dim=4,
    arch="transformer",
    variational=True,
    hidden_dim=16,
    transformer_heads=2,
    transformer_blocks=2,
)

# The official configs/semvae_train/ch16.yaml as OmegaConf.to_yaml writes it into the checkpoint:
# references stay unresolved.
OFFICIAL_CONFIG = """\
variables:
  output_root: outputs/semantic_vae/dinov2_vitb14_reg/transformer_ch16
  bottleneck_dim: {c}
  model_name: dinov2_vitb14_reg
model:
  variational: true
  bottleneck_dim: ${{variables.bottleneck_dim}}
  arch: transformer
  params:
    hidden_dim: {h}
    transformer_heads: 2
    transformer_blocks: {blocks}
training:
  optimizer:
    type: AdamW
    lr: 5.0e-05
"""


def released_checkpoint(model: SemanticVAE, blocks: int) -> dict:
    """A checkpoint with exactly the keys and value types of the released semantic_ae_final.pt."""
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    sched = build_scheduler(opt, validate({}, "semvae")["train"])
    model(torch.randn(2, 16, model.arch.input_dim))[0].sum().backward()
    opt.step()
    sched.step()
    return {
        "iteration": 1000000,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": opt.state_dict(),
        "scheduler_state_dict": sched.state_dict(),
        "loss": 0.25,
        "loss_averages": {"mse": 0.1, "total": 0.25},
        "config": OFFICIAL_CONFIG.format(c=model.arch.bottleneck_dim, h=model.arch.hidden_dim, blocks=blocks),
        "input_dim": model.arch.input_dim,
        "bottleneck_dim": model.arch.bottleneck_dim,
    }


def test_paper_architecture_parameter_count_and_keys():
    section = validate({}, "semvae")
    with torch.device("meta"):
        model = SemanticVAE(SemVAEArch.from_section(section, input_dim=768))
    assert sum(p.numel() for p in model.encoder.parameters()) == 28_968_224
    assert sum(p.numel() for p in model.decoder.parameters()) == 28_956_672
    assert sum(p.numel() for p in model.parameters()) == 57_924_896  # "57.9M"
    keys = model.state_dict().keys()
    for key in (
        "encoder.0.weight",
        "encoder.4.attn.in_proj_weight",
        "encoder.4.attn.in_proj_bias",
        "encoder.4.attn.out_proj.weight",
        "encoder.4.mlp.0.weight",
        "encoder.4.mlp.2.bias",
        "encoder.5.weight",
        "decoder.6.weight",
    ):
        assert key in keys
    assert model.state_dict()["encoder.6.weight"].shape == (32, 768)
    assert model.state_dict()["decoder.0.weight"].shape == (768, 16)


@pytest.mark.parametrize("config", ["yaml", "omegaconf"])
def test_released_layout_checkpoint_loads(tmp_path, config):
    """Loaded with weights_only=True; also when the config is pickled as an OmegaConf object."""
    torch.manual_seed(0)
    model = SemanticVAE(SMALL)
    ckpt = released_checkpoint(model, blocks=2)
    if config == "omegaconf":
        ckpt["config"] = OmegaConf.create(ckpt["config"])
    torch.save(ckpt, tmp_path / "semantic_ae_final.pt")
    loaded = load_semvae(tmp_path / "semantic_ae_final.pt")
    assert loaded.arch == SMALL and not loaded.training
    tokens = torch.randn(3, 16, 24)
    model.eval()
    z, kl = model.encode(tokens, torch.Generator().manual_seed(1))
    z2, kl2 = loaded.encode(tokens, torch.Generator().manual_seed(1))
    assert torch.equal(z, z2) and torch.equal(kl, kl2)
    assert torch.equal(model.decode(z), loaded.decode(z2))


def test_wrong_architecture_names_file_and_first_key(tmp_path):
    ckpt = released_checkpoint(SemanticVAE(SMALL), blocks=3)  # weights of 2 blocks, config says 3
    torch.save(ckpt, tmp_path / "semantic_ae_final.pt")
    with pytest.raises(
        ValueError, match=r"semantic_ae_final.pt: architecture mismatch: missing key 'encoder.3.norm1.weight'"
    ):
        load_semvae(tmp_path / "semantic_ae_final.pt")
    del ckpt["config"]
    torch.save(ckpt, tmp_path / "no_config.pt")
    with pytest.raises(ValueError, match=r"no_config.pt: .*'config' is missing"):
        load_semvae(tmp_path / "no_config.pt")


@pytest.mark.parametrize("arch", ["linear", "mlp", "resnet"])
def test_cheap_variants_round_trip_through_a_checkpoint(tmp_path, arch):
    model = SemanticVAE(
        SemVAEArch(input_dim=24, bottleneck_dim=4, arch=arch, variational=True, hidden_dim=16, num_layers=3)
    )
    ckpt = released_checkpoint(model, blocks=0)
    ckpt["config"] = yaml.safe_dump({"model": model.arch.official_model()})
    torch.save(ckpt, tmp_path / "m.pt")
    assert load_semvae(tmp_path / "m.pt").arch == model.arch
    z, kl = model.encode(torch.randn(2, 16, 24))
    assert z.shape == (2, 4, 4, 4) and kl.shape == (2,)


def test_encode_returns_a_sample_with_generator_determinism():
    torch.manual_seed(0)
    model = SemanticVAE(SMALL)
    tokens = torch.randn(2, 16, 24)
    z1, _ = model.encode(tokens, torch.Generator().manual_seed(7))
    z2, _ = model.encode(tokens, torch.Generator().manual_seed(7))
    z3, _ = model.encode(tokens, torch.Generator().manual_seed(8))
    assert torch.equal(z1, z2) and not torch.equal(z1, z3)
    moments = model.encoder(tokens)  # [B, L, 2C], token index h*W + w
    mean = moments[..., :4].transpose(1, 2).reshape(2, 4, 4, 4)
    logvar = moments[..., 4:].transpose(1, 2).reshape(2, 4, 4, 4).clamp(-30, 20)
    assert not torch.allclose(z1, mean)
    eps = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(7))  # drawn as [B, C, h, w]
    torch.testing.assert_close(z1, mean + torch.exp(0.5 * logvar) * eps)
    assert mean[1, 2, 3, 1] == moments[1, 3 * 4 + 1, 2]


def test_kl_is_the_per_sample_sum_of_the_gaussian_kl():
    torch.manual_seed(0)
    model = SemanticVAE(SMALL)
    with torch.no_grad():  # make some log-variances hit the clamp
        model.encoder[-1].bias[4:] = torch.tensor([40.0, -40.0, 0.0, 0.0])
    tokens = torch.randn(3, 16, 24)
    _, kl = model.encode(tokens)
    moments = model.encoder(tokens).transpose(1, 2).reshape(3, 8, 4, 4)
    mean, logvar = moments[:, :4], moments[:, 4:].clamp(-30, 20)
    posterior = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    direct = torch.distributions.kl_divergence(posterior, torch.distributions.Normal(0.0, 1.0)).sum(
        dim=(1, 2, 3)
    )
    torch.testing.assert_close(kl, direct, rtol=1e-5, atol=1e-3)


def test_not_variational_returns_the_code_and_zero_kl():
    model = SemanticVAE(SemVAEArch(input_dim=24, bottleneck_dim=4, arch="linear", variational=False))
    tokens = torch.randn(2, 16, 24)
    z, kl = model.encode(tokens)
    assert torch.equal(kl, torch.zeros(2))
    assert torch.equal(z, model.encoder(tokens).transpose(1, 2).reshape(2, 4, 4, 4))
    assert model.encoder[0].weight.shape == (4, 24)


def test_cos_loss_runs_across_tokens_per_channel():
    t = validate({}, "semvae")["train"]
    target = torch.randn(2, 16, 8)
    recon = target * torch.linspace(0.5, 2.0, 16).view(1, 16, 1)  # rescale each token: per-token cosine is 1
    losses = semvae_losses(recon, target, torch.zeros(2), t)
    across_tokens = torch.stack(
        [F.cosine_similarity(recon[b, :, d], target[b, :, d], dim=0) for b in range(2) for d in range(8)]
    ).mean()
    torch.testing.assert_close(losses["cos_loss"], 1 - across_tokens)
    assert losses["cos_loss"] > 0.01
    torch.testing.assert_close(token_cosine(recon, target), torch.tensor(1.0))
    kl = torch.tensor([3.0, 5.0])
    total = semvae_losses(recon, target, kl, t)["total"]
    torch.testing.assert_close(total, F.mse_loss(recon, target) + losses["cos_loss"] + 1e-7 * 4.0)


def test_learning_rate_schedule():
    t = {"lr": 1e-3, "warmup_steps": 4, "constant_steps": 3, "iterations": 17, "min_lr_factor": 0.1}
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=t["lr"])
    sched = build_scheduler(opt, t)
    lrs = []
    for _ in range(t["iterations"]):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-5)
    assert lrs[4:8] == pytest.approx([1e-3] * 4)
    assert lrs[-1] > 1e-4 and opt.param_groups[0]["lr"] == pytest.approx(1e-4)


def write_features(directory, tokens: torch.Tensor, shard_size: int):
    """A features directory in the `sfd extract-features` format."""
    shards = []
    for i, start in enumerate(range(0, len(tokens), shard_size)):
        part = tokens[start : start + shard_size]
        name = f"shard-{i:05d}.safetensors"
        save_file(
            {"patch_tokens": part.half().contiguous(), "labels": torch.zeros(len(part), dtype=torch.int64)},
            str(directory / name),
        )
        shards.append({"file": name, "count": len(part)})
    (directory / "index.json").write_text(
        json.dumps(
            {
                "num_samples": len(tokens),
                "num_tokens": tokens.shape[1],
                "dim": tokens.shape[2],
                "shards": shards,
            }
        )
    )


def experiment(iterations: int) -> dict:
    semvae = {
        "arch": "transformer",
        "bottleneck_dim": 4,
        "hidden_dim": 16,
        "transformer_heads": 2,
        "transformer_blocks": 1,
        "train": {
            "iterations": iterations,
            "batch_size": 8,
            "lr": 2e-3,
            "warmup_steps": 2,
            "constant_steps": 4,
            "eval_samples": 10,
            "eval_batch_size": 4,
            "eval_every": 5,
            "save_every": 4,
            "log_every": 2,
        },
    }
    return validate({"name": "t", "device": "cpu", "seed": 3, "semvae": semvae}, "experiment")


def test_training_learns_checkpoints_and_resumes_exactly(tmp_path):
    generator = torch.Generator().manual_seed(0)
    basis = torch.randn(3, 24, generator=generator)
    tokens = torch.randn(50, 16, 3, generator=generator) @ basis  # rank-3 features: compressible
    (tmp_path / "feats").mkdir()
    write_features(tmp_path / "feats", tokens, shard_size=16)

    exp = experiment(iterations=10)
    first = train(exp, tmp_path / "feats", None, tmp_path / "a.pt", tmp_path / "run_a")
    ckpt = torch.load(tmp_path / "a.pt", weights_only=True)
    assert set(ckpt) == {
        "iteration",
        "model_state_dict",
        "optimizer_state_dict",
        "scheduler_state_dict",
        "loss",
        "loss_averages",
        "config",
        "input_dim",
        "bottleneck_dim",
    }
    assert ckpt["iteration"] == 10 and ckpt["input_dim"] == 24 and ckpt["bottleneck_dim"] == 4
    model = load_semvae(tmp_path / "a.pt")
    assert model.arch.transformer_blocks == 1
    assert {"cosine", "mse", "l1", "kl"} <= set(first)
    log = [json.loads(line) for line in (tmp_path / "run_a" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "eval" in e] == [5, 10]
    assert [p.name for p in (tmp_path / "run_a" / "checkpoints").iterdir()] == ["0000008.pt"]

    longer = train(experiment(iterations=60), tmp_path / "feats", None, tmp_path / "b.pt", tmp_path / "run_b")
    assert longer["cosine"] > first["cosine"] and longer["mse"] < first["mse"]

    # resume: start a fresh run directory from the step-8 checkpoint of run_a
    (tmp_path / "run_c" / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "run_a" / "checkpoints" / "0000008.pt", tmp_path / "run_c" / "checkpoints")
    # and what a kill can leave: a torn newer checkpoint, temporary files of a save
    (tmp_path / "run_c" / "checkpoints" / "0000009.pt").write_bytes(b"torn")
    plant_leftovers(tmp_path / "run_c" / "checkpoints", "0000010.pt")
    resumed = train(exp, tmp_path / "feats", None, tmp_path / "c.pt", tmp_path / "run_c")
    assert resumed == first
    assert hidden_files(tmp_path / "run_c") == []
    final_c = torch.load(tmp_path / "c.pt", weights_only=True)["model_state_dict"]
    assert all(torch.equal(final_c[k], v) for k, v in ckpt["model_state_dict"].items())


def test_eval_semvae_cli_on_a_released_layout_checkpoint(tmp_path):
    from sfd.cli import main as cli

    torch.manual_seed(0)
    model = SemanticVAE(SMALL)
    torch.save(released_checkpoint(model, blocks=2), tmp_path / "semantic_ae_final.pt")
    (tmp_path / "feats").mkdir()
    write_features(tmp_path / "feats", torch.randn(12, 16, 24), shard_size=5)
    config = tmp_path / "exp.yaml"
    config.write_text(
        json.dumps(
            {"name": "t", "device": "cpu", "semvae": {"train": {"eval_samples": 10, "eval_batch_size": 4}}}
        )
    )
    assert (
        cli(
            [
                "eval-semvae",
                "--config",
                str(config),
                "--checkpoint",
                str(tmp_path / "semantic_ae_final.pt"),
                "--features",
                str(tmp_path / "feats"),
                "--out",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["items"] == 10 and -1 <= metrics["cosine"] <= 1
