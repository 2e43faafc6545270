"""Semantic encoder (DINOv2 via timm, the toy ViT), its training and feature extraction."""

import json

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from engine_fixtures import hidden_files, plant_leftovers
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from sfd.config import ConfigError, validate
from sfd.semantic import load_encoder
from sfd.semantic.encoder import IMAGENET_MEAN, IMAGENET_STD, build_encoder, feature_transform
from sfd.semantic.features import FeatureShards, extract
from sfd.semantic.train_encoder import train

TINY_DINO = {"timm_kwargs": {"embed_dim": 32, "depth": 2, "num_heads": 2}, "pretrained": False}
TOY_VIT = {
    "timm_model": "vit_tiny_patch16_224",
    "pretrained": False,
    "img_size": 16,
    "feature_resize": 18,
    "shard_size": 8,
    "num_workers": 0,
    "timm_kwargs": {
        "patch_size": 4,
        "embed_dim": 32,
        "depth": 1,
        "num_heads": 2,
        "class_token": False,
        "global_pool": "avg",
        "fc_norm": False,
    },
    "train": {
        "steps": 120,
        "batch_size": 32,
        "lr": 2e-3,
        "warmup_steps": 5,
        "label_smoothing": 0.0,
        "crop_padding": 0,
        "hflip": False,
        "holdout": 0.25,
    },
}


def section(**overrides):
    return validate(overrides, "semantic_encoder", source="test")


def quadrant_images(n: int, size: int = 16, seed: int = 0):
    """4 classes: which quadrant holds a bright square; colours and noise are random."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    images = rng.uniform(0, 0.3, (n, size, size, 3))
    half = size // 2
    for i, k in enumerate(labels):
        y, x = divmod(int(k), 2)
        images[i, y * half : (y + 1) * half, x * half : (x + 1) * half] += rng.uniform(0.5, 0.7, 3)
    return (np.clip(images, 0, 1) * 255).astype(np.uint8), labels.astype(np.int64)


def write_npz(path, images, labels):
    np.savez(
        path, images=images, labels=labels, class_names=np.array([f"c{k}" for k in range(labels.max() + 1)])
    )


# -- DINOv2-B/14-reg through timm ------------------------------------------------------------------


def test_dinov2_architecture_gives_256_tokens_of_768():
    with torch.device("meta"):
        encoder = build_encoder(section(pretrained=False))
        tokens = encoder.tokens(torch.empty(2, 3, 256, 256))
    assert (encoder.num_tokens, encoder.dim) == (256, 768)
    assert encoder.vit.num_prefix_tokens == 5  # class + 4 registers, dropped from the tokens
    assert tuple(tokens.shape) == (2, 256, 768)


def test_pretrained_false_without_weights_is_an_error():
    with pytest.raises(ConfigError, match="pretrained is false"):
        load_encoder(section(pretrained=False))


def hub_state_dict(dim: int, depth: int, generator) -> dict:
    """A random state dict in the layout of the official torch.hub dinov2_*14_reg checkpoints."""

    def r(*shape):
        return torch.randn(*shape, generator=generator) * 0.2

    state = {
        "cls_token": r(1, 1, dim),
        "pos_embed": r(1, 1 + 37 * 37, dim),
        "register_tokens": r(1, 4, dim),
        "mask_token": torch.zeros(1, dim),
        "patch_embed.proj.weight": r(dim, 3, 14, 14),
        "patch_embed.proj.bias": r(dim),
        "norm.weight": 1 + r(dim),
        "norm.bias": r(dim),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        state.update(
            {
                b + "norm1.weight": 1 + r(dim),
                b + "norm1.bias": r(dim),
                b + "attn.qkv.weight": r(3 * dim, dim),
                b + "attn.qkv.bias": r(3 * dim),
                b + "attn.proj.weight": r(dim, dim),
                b + "attn.proj.bias": r(dim),
                b + "ls1.gamma": r(dim),
                b + "norm2.weight": 1 + r(dim),
                b + "norm2.bias": r(dim),
                b + "mlp.fc1.weight": r(4 * dim, dim),
                b + "mlp.fc1.bias": r(4 * dim),
                b + "mlp.fc2.weight": r(dim, 4 * dim),
                b + "mlp.fc2.bias": r(dim),
                b + "ls2.gamma": r(dim),
            }
        )
    return state


def hub_forward(state: dict, pixels: torch.Tensor, depth: int, heads: int) -> torch.Tensor:
    """x_norm_patchtokens as facebookresearch/dinov2 computes them (no xFormers), written out:
    run-time bicubic+antialias resampling of the 37x37 position table to the input grid."""
    dim = state["cls_token"].shape[-1]
    b = pixels.shape[0]
    x = F.conv2d(pixels, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=14)
    grid = x.shape[-1]
    x = torch.cat([state["cls_token"].expand(b, -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
    table = state["pos_embed"][:, 1:].reshape(1, 37, 37, dim).permute(0, 3, 1, 2)
    table = F.interpolate(table, size=(grid, grid), mode="bicubic", antialias=True)
    x = x + torch.cat([state["pos_embed"][:, :1], table.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)
    x = torch.cat([x[:, :1], state["register_tokens"].expand(b, -1, -1), x[:, 1:]], dim=1)
    for i in range(depth):
        p = {k[len(f"blocks.{i}.") :]: v for k, v in state.items() if k.startswith(f"blocks.{i}.")}
        h = F.layer_norm(x, (dim,), p["norm1.weight"], p["norm1.bias"], eps=1e-6)
        qkv = F.linear(h, p["attn.qkv.weight"], p["attn.qkv.bias"]).reshape(b, -1, 3, heads, dim // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = ((q * (dim // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        h = F.linear(
            (attn @ v).transpose(1, 2).reshape(b, -1, dim), p["attn.proj.weight"], p["attn.proj.bias"]
        )
        x = x + h * p["ls1.gamma"]
        h = F.layer_norm(x, (dim,), p["norm2.weight"], p["norm2.bias"], eps=1e-6)
        h = F.linear(
            F.gelu(F.linear(h, p["mlp.fc1.weight"], p["mlp.fc1.bias"])),
            p["mlp.fc2.weight"],
            p["mlp.fc2.bias"],
        )
        x = x + h * p["ls2.gamma"]
    return F.layer_norm(x, (dim,), state["norm.weight"], state["norm.bias"], eps=1e-6)[:, 5:]


def test_hub_checkpoint_through_timm_reproduces_the_hub_forward(tmp_path):
    generator = torch.Generator().manual_seed(0)
    state = hub_state_dict(dim=32, depth=2, generator=generator)
    torch.save(state, tmp_path / "dinov2_vitb14_reg4_pretrain.pth")
    encoder = load_encoder(section(**TINY_DINO), tmp_path / "dinov2_vitb14_reg4_pretrain.pth")

    # the 16x16 table timm resampled at load time is the hub's run-time table, bit for bit
    table = state["pos_embed"][:, 1:].reshape(1, 37, 37, 32).permute(0, 3, 1, 2)
    hub_table = (
        F.interpolate(table, size=(16, 16), mode="bicubic", antialias=True)
        .permute(0, 2, 3, 1)
        .reshape(1, 256, 32)
    )
    assert torch.equal(encoder.vit.pos_embed, hub_table)
    no_antialias = F.interpolate(table, size=(16, 16), mode="bicubic").permute(0, 2, 3, 1).reshape(1, 256, 32)
    assert not torch.allclose(encoder.vit.pos_embed, no_antialias, atol=1e-3)

    x = torch.rand(2, 3, 256, 256, generator=generator) * 2 - 1
    tokens = encoder.tokens(x)
    reference = hub_forward(state, encoder.preprocess(x), depth=2, heads=2)
    assert tokens.shape == (2, 256, 32)
    assert torch.equal(tokens, reference)  # op for op the hub's computation (unfused attention)


def test_pretrained_weights_come_through_timm_from_the_hub_cache(tmp_path, monkeypatch):
    """`pretrained: true` is timm's Hub path; the (offline) Hub cache holds a file written here."""
    import huggingface_hub.constants

    commit = "0" * 40
    repo = tmp_path / "models--timm--vit_base_patch14_reg4_dinov2.lvd142m"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    source = timm.create_model(
        "vit_base_patch14_reg4_dinov2", img_size=518, num_classes=0, **TINY_DINO["timm_kwargs"]
    )
    save_file(
        source.state_dict(), str(repo / "snapshots" / commit / "model.safetensors")
    )  # timm layout, 37x37
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    encoder = load_encoder(section(timm_kwargs=TINY_DINO["timm_kwargs"]))
    assert torch.equal(encoder.vit.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight)
    table = source.pos_embed.reshape(1, 37, 37, 32).permute(0, 3, 1, 2)
    table = (
        F.interpolate(table, size=(16, 16), mode="bicubic", antialias=True)
        .permute(0, 2, 3, 1)
        .reshape(1, 256, 32)
    )
    assert torch.equal(encoder.vit.pos_embed, table)
    assert not encoder.vit.blocks[0].attn.fused_attn


def test_latent_extraction_preprocessing():
    encoder = build_encoder(section(**TINY_DINO))
    x = torch.rand(2, 3, 256, 256) * 2 - 1
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    expected = F.interpolate(((x + 1) / 2 - mean) / std, size=(224, 224), mode="bicubic", align_corners=False)
    assert torch.equal(encoder.preprocess(x), expected)
    toy = build_encoder(section(**TOY_VIT))
    small = torch.rand(1, 3, 16, 16) * 2 - 1
    assert torch.equal(toy.preprocess(small), ((small + 1) / 2 - mean) / std)  # already at img_size


def test_semvae_training_preprocessing_resizes_short_side_then_center_crops():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    pixels = feature_transform(section())(image)
    assert pixels.shape == (3, 224, 224)
    resized = image.resize((341, 256), Image.BICUBIC)  # short side 300 -> 256, long side int(400*256/300)
    crop = np.asarray(resized)[16:240, 58:282]  # offsets round((256-224)/2), round((341-224)/2)
    crop = torch.from_numpy(crop.copy()).permute(2, 0, 1) / 255
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(pixels, (crop - mean) / std)


# -- the toy encoder ---------------------------------------------------------------------------------


def test_toy_encoder_trains_above_chance_and_deterministically():
    images, labels = quadrant_images(256)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    cfg = section(**TOY_VIT)
    encoder, acc, _ = train(cfg, x, torch.from_numpy(labels), 4, seed=0, device=torch.device("cpu"))
    assert acc > 0.5, acc  # chance is 0.25
    again, acc_again, _ = train(cfg, x, torch.from_numpy(labels), 4, seed=0, device=torch.device("cpu"))
    assert acc_again == acc
    assert all(torch.equal(a, b) for a, b in zip(encoder.state_dict().values(), again.state_dict().values()))
    assert encoder.tokens(x[:3]).shape == (3, 16, 32)


def test_cli_train_then_extract_resumable(tmp_path, monkeypatch):
    from sfd.cli import main as cli

    images, labels = quadrant_images(40)
    write_npz(tmp_path / "train.npz", images, labels)
    config = tmp_path / "exp.yaml"
    config.write_text(
        json.dumps(
            {
                "name": "t",
                "device": "cpu",
                "semantic_encoder": {**TOY_VIT, "train": {**TOY_VIT["train"], "steps": 3}},
            }
        )
    )
    assert (
        cli(
            [
                "train-semantic-encoder",
                "--config",
                str(config),
                "--data",
                str(tmp_path / "train.npz"),
                "--out",
                str(tmp_path / "encoder.pt"),
            ]
        )
        == 0
    )
    assert "holdout_accuracy" in json.loads((tmp_path / "encoder.pt.json").read_text())

    cfg = section(**TOY_VIT)
    out = tmp_path / "features"
    index = extract(
        cfg, tmp_path / "train.npz", tmp_path / "encoder.pt", out, torch.device("cpu"), limit=20, batch_size=6
    )
    assert index["num_samples"] == 20 and [s["count"] for s in index["shards"]] == [8, 8, 4]
    shards = FeatureShards(out)
    tokens, got_labels = shards.batch([0, 9, 19])
    assert tokens.dtype == torch.float32 and tokens.shape == (3, 16, 32)
    assert got_labels.tolist() == [int(labels[0]), int(labels[9]), int(labels[19])]
    encoder = load_encoder(cfg, tmp_path / "encoder.pt")
    pixels = feature_transform(cfg)(Image.fromarray(images[9]))
    assert torch.equal(tokens[1], encoder.features(pixels[None])[0].half().float())
    with safe_open(str(out / "shard-00001.safetensors"), framework="pt") as f:
        assert f.get_tensor("patch_tokens").dtype == torch.float16

    # resume: a finished shard is kept, a missing one is rewritten, a stale one (other encoder) too
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    (out / "shard-00001.safetensors").unlink()
    torn = out / "shard-00002.safetensors"  # and what a kill can leave: a torn shard, temporary files
    whole = torn.read_bytes()
    torn.write_bytes(whole[:100])
    plant_leftovers(out, "shard-00001.safetensors")
    extract(cfg, tmp_path / "train.npz", tmp_path / "encoder.pt", out, torch.device("cpu"), limit=20)
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    assert after["shard-00000.safetensors"] == before["shard-00000.safetensors"]
    assert torch.equal(FeatureShards(out).batch([9])[0], tokens[1:2])
    assert torn.read_bytes() == whole and hidden_files(out) == []
    other = load_encoder(cfg, tmp_path / "encoder.pt")
    with torch.no_grad():
        other.vit.head.weight.add_(1)
    torch.save({"model": other.vit.state_dict()}, tmp_path / "other.pt")
    extract(cfg, tmp_path / "train.npz", tmp_path / "other.pt", out, torch.device("cpu"), limit=20)
    assert all(p.stat().st_mtime_ns != after[p.name] for p in out.glob("shard-*"))


def test_wrong_encoder_weights_name_file_and_key(tmp_path):
    cfg = section(**TOY_VIT)
    state = build_encoder(cfg).vit.state_dict()
    state["blocks.0.attn.qkv.weight"] = state["blocks.0.attn.qkv.weight"][:, :16]
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(
        ValueError, match=r"bad.pt: architecture mismatch: key 'blocks.0.attn.qkv.weight' has shape"
    ):
        load_encoder(cfg, tmp_path / "bad.pt")


def test_extract_from_an_image_folder_in_imagefolder_order(tmp_path):
    rng = np.random.default_rng(0)
    for name, sizes in (("n02", [(20, 30), (40, 18)]), ("n01", [(25, 25)])):
        (tmp_path / "val" / name).mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                tmp_path / "val" / name / f"{i}.png"
            )
    (tmp_path / "val" / ".archives").mkdir()  # sfd fetch-imagenet's download folder: not a class
    (tmp_path / "val" / ".archives" / "val_images.tar.gz").write_bytes(b"kept archive")
    cfg = section(**TOY_VIT)
    encoder = build_encoder(cfg)
    torch.save({"model": encoder.vit.state_dict()}, tmp_path / "enc.pt")
    index = extract(
        cfg, tmp_path / "val", tmp_path / "enc.pt", tmp_path / "feats", torch.device("cpu"), limit=2
    )
    assert index["num_samples"] == 2
    tokens, labels = FeatureShards(tmp_path / "feats").batch([0, 1])
    assert labels.tolist() == [0, 1]  # n01 first, then n02/0.png
    first = feature_transform(cfg)(Image.open(tmp_path / "val" / "n01" / "0.png").convert("RGB"))
    assert torch.equal(tokens[0], encoder.features(first[None])[0].half().float())
