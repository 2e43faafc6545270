"""Generation engine: balanced labels, per-index noise, resumable shards, device-count
independence (1 vs 2 torchrun processes give the same images), ADM packing and the grid."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from engine_fixtures import ENV, make_latents, make_texture_vae, one_thread, tiny_experiment, train_tiny  # noqa: F401

from sfd.config import ConfigError, validate
from sfd.generate import (
    balanced_labels,
    batch_ranges,
    sample,
    sample_noise,
    shard_path,
    shard_ranges,
)
from sfd.pack import class_mixing_permutation, pack
from sfd.train import train


def test_balanced_labels_are_a_pure_function_of_the_index():
    n, classes = 50_000, 1000
    labels = balanced_labels(torch.arange(n), n, classes)
    assert torch.equal(labels, torch.arange(n) // 50)  # the official g // 50
    assert torch.equal(torch.bincount(labels), torch.full((classes,), 50))
    some = torch.tensor([49_999, 7, 123])
    assert torch.equal(balanced_labels(some, n, classes), labels[some])
    uneven = torch.bincount(balanced_labels(torch.arange(25), 25, 10))
    assert uneven.sum() == 25 and uneven.max() - uneven.min() <= 1


def test_noise_depends_only_on_seed_and_index():
    full = sample_noise(range(10), (2, 3, 3), seed=5)
    assert torch.equal(sample_noise([7, 3], (2, 3, 3), seed=5), full[[7, 3]])
    assert not torch.equal(sample_noise([7], (2, 3, 3), seed=6)[0], full[7])
    assert not torch.equal(full[0], full[1])


def test_batches_and_shards_are_global_index_ranges():
    assert shard_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert batch_ranges(4, 8, 2) == [(4, 6), (6, 8)]
    assert batch_ranges(8, 10, 4) == [(8, 10)]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A trained-for-a-few-steps tiny DiT (EMA export), its weak twin, latents and a texture VAE."""
    root = tmp_path_factory.mktemp("gen")
    latents = make_latents(root / "latents")
    cfg_path = root / "exp.yaml"
    cfg = tiny_experiment(train={"keep_steps": [2]}, sampling={"method": "euler", "num_steps": 5})
    cfg_path.write_text(yaml.safe_dump(cfg))
    run = train_tiny(cfg_path, latents, root / "run", until=4)
    return {
        "root": root,
        "cfg_path": cfg_path,
        "latents": latents,
        "ckpt": run / "ema" / "0000004.pt",
        "weak": run / "ema" / "0000002.pt",
        "vae": make_texture_vae(root / "vae.pt"),
    }


def _cfg(assets, **sampling):
    cfg = yaml.safe_load(assets["cfg_path"].read_text())
    cfg["sampling"].update(sampling)
    return validate(cfg, "experiment")


def _sample(assets, out, **kwargs):
    cfg = kwargs.pop("cfg", None) or _cfg(assets)
    return sample(cfg, "tiny", assets["ckpt"], assets["latents"], assets["vae"], out, **kwargs)


def _images(out):
    with open(out / "index.json") as f:
        index = json.load(f)
    arrays = [np.load(out / e["file"]) for e in index["shards"]]
    return np.concatenate([a["images"] for a in arrays]), np.concatenate([a["labels"] for a in arrays])


def test_sample_resume_and_pack(assets, tmp_path):
    whole = tmp_path / "whole"
    assert _sample(assets, whole) == 0
    images, labels = _images(whole)
    assert images.shape == (24, 16, 16, 3) and images.dtype == np.uint8
    assert np.array_equal(labels, np.arange(24) * 4 // 24)
    assert images.std() > 0
    assert json.loads((whole / "index.json").read_text())["tf32"] is True  # the official inference's setting

    # An interrupted run: one shard and the index missing, as after a kill. Rerunning makes only
    # the missing shard and the packed npz is byte-identical.
    partial = tmp_path / "partial"
    _sample(assets, partial)
    os.unlink(shard_path(partial, 1))
    os.unlink(partial / "index.json")
    kept = shard_path(partial, 0).stat().st_mtime_ns
    _sample(assets, partial)
    assert shard_path(partial, 0).stat().st_mtime_ns == kept
    pack(whole, tmp_path / "a.npz", seed=42, grid=tmp_path / "grid.png", rows=3, per_class=2)
    pack(partial, tmp_path / "b.npz", seed=42, grid=None, rows=3, per_class=2)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()

    packed = np.load(tmp_path / "a.npz")
    assert sorted(packed.files) == ["arr_0", "arr_1"]
    order = class_mixing_permutation(24, 42)
    assert np.array_equal(packed["arr_0"], images[order]) and np.array_equal(packed["arr_1"], labels[order])
    assert not np.array_equal(packed["arr_1"], np.sort(packed["arr_1"]))  # classes are mixed
    from PIL import Image

    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (3 * 18 + 2, 2 * 18 + 2, 3)
    assert np.array_equal(grid[2:18, 2:18], images[0])  # row 0 = class 0, its first image


def test_sample_refuses_a_directory_made_with_other_settings(assets, tmp_path):
    _sample(assets, tmp_path / "s")
    with pytest.raises(ConfigError, match="seed=0.*has 1"):
        _sample(assets, tmp_path / "s", cfg=_cfg(assets, seed=1))


def test_guidance_paths(assets, tmp_path):
    assert _sample(assets, tmp_path / "none") == 0
    plain, _ = _images(tmp_path / "none")
    _sample(
        assets,
        tmp_path / "ag",
        guidance="autoguidance",
        cfg_scale=1.5,
        guide_model="tiny",
        guide_ckpt=assets["weak"],
    )
    _sample(assets, tmp_path / "cfg", guidance="cfg", cfg_scale=2.0)
    _sample(
        assets,
        tmp_path / "ag1",
        guidance="autoguidance",
        cfg_scale=1.0,
        guide_model="tiny",
        guide_ckpt=assets["weak"],
    )
    assert not np.array_equal(_images(tmp_path / "ag")[0], plain)
    assert not np.array_equal(_images(tmp_path / "cfg")[0], plain)
    assert np.array_equal(_images(tmp_path / "ag1")[0], plain)  # scale 1: guidance is off
    with pytest.raises(ConfigError, match="guide"):
        _sample(assets, tmp_path / "bad", guidance="autoguidance", cfg_scale=1.5)


def test_one_and_two_processes_give_the_same_images(assets, tmp_path):
    """dopri5 with batch-global error norm: batches are global index ranges, so the world size does
    not change any sample (torchrun, 2 gloo ranks, shards dealt round-robin)."""
    cfg_path = tmp_path / "exp.yaml"
    cfg = yaml.safe_load(assets["cfg_path"].read_text())
    cfg["sampling"].update(method="dopri5", rtol=1e-2, atol=1e-4)
    cfg_path.write_text(yaml.safe_dump(cfg))
    args = [
        "sample",
        "--config",
        str(cfg_path),
        "--model",
        "tiny",
        "--ckpt",
        str(assets["ckpt"]),
        "--latents",
        str(assets["latents"]),
        "--texture-vae",
        str(assets["vae"]),
    ]
    one = subprocess.run(
        [sys.executable, "-m", "sfd", *args, "--out", str(tmp_path / "one")],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "sfd",
            *args,
            "--out",
            str(tmp_path / "two"),
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _images(tmp_path / "one"), _images(tmp_path / "two")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    nfe = [np.load(p)["nfe"] for p in sorted((tmp_path / "two").glob("shard-*.npz"))]
    assert all((x > 0).all() for x in nfe)


def test_sampling_seed_of_a_run_moves_only_the_noise(assets, tmp_path):
    _sample(assets, tmp_path / "default")
    _sample(assets, tmp_path / "seed0", seed=0)  # sampling.seed is 0
    _sample(assets, tmp_path / "seed7", seed=7)
    default, labels = _images(tmp_path / "default")
    assert np.array_equal(_images(tmp_path / "seed0")[0], default)
    other, other_labels = _images(tmp_path / "seed7")
    assert not np.array_equal(other, default) and np.array_equal(other_labels, labels)
    assert json.loads((tmp_path / "seed7" / "meta.json").read_text())["seed"] == 7


def test_texture_only_baseline_trains_on_texture_channels_and_decodes(assets, tmp_path):
    """semantic_chans 0 = the texture-only LightningDiT baseline: same latents minus the semantic
    channels, REPA on, one time embedder; its samples decode like SFD's."""
    from sfd.latents import LatentDataset

    composite = LatentDataset(assets["latents"], seed=3)
    texture = LatentDataset(assets["latents"], seed=3, texture_only=True)
    x, y, feats = composite[5]
    xt, yt, feats_t = texture[5]
    assert xt.shape[0] == 4 and torch.equal(xt, x[:4]) and yt == y and torch.equal(feats_t, feats)

    cfg = yaml.safe_load(assets["cfg_path"].read_text())
    model = cfg["models"]["tiny"]["model"]
    model.update(in_chans=8, semantic_chans=0, semfirst_delta_t=0.0)
    with pytest.raises(
        ConfigError, match=r"models.tiny.model.in_chans: 8, but .* gives 4 channels \(4 texture\)"
    ):
        train(validate(cfg, "experiment"), "tiny", assets["latents"], tmp_path / "bad")
    model["in_chans"] = 4
    cfg_path = tmp_path / "texture.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    run = train_tiny(cfg_path, assets["latents"], tmp_path / "run", until=2)
    state = torch.load(run / "ema" / "0000002.pt", weights_only=True)["ema"]
    assert state["x_embedder.proj.weight"].shape[1] == 4 and any(
        k.startswith("repa_projector") for k in state
    )
    out = tmp_path / "samples"
    assert (
        sample(
            validate(cfg, "experiment"),
            "tiny",
            run / "ema" / "0000002.pt",
            assets["latents"],
            assets["vae"],
            out,
        )
        == 0
    )
    images, _ = _images(out)
    assert images.shape == (24, 16, 16, 3) and images.std() > 0
