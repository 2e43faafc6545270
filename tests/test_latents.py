"""Latent extraction (shards, flips, resume, bad images, ranks), statistics and LatentDataset."""

import json
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from engine_fixtures import hidden_files, plant_leftovers
from PIL import Image

import sfd.latents.extract as extract
from sfd.data.images import BadImageError, ImageDataset, to_tensor
from sfd.data.toy import save_npz
from sfd.latents import (
    LatentDataset,
    compute_stats,
    denormalize_texture,
    flip_coin,
    load_stats,
    normalize,
    read_index,
    write_index,
    write_shard,
)
from sfd.latents.stats import sample_rows
from sfd.tokenizers import TextureVAE

TOY_VAE = {
    "ch": 32,
    "ch_mult": [1, 2, 2],
    "num_res_blocks": 1,
    "attn_resolutions": [],
    "z_channels": 4,
    "resolution": 32,
    "norm_groups": 8,
}


class FakeEncoder(torch.nn.Module):
    """Deterministic stand-in for sfd.semantic's encoder: 4x4 patches -> linear -> tokens [B, 64, 6]."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(48, 6)
        with torch.no_grad():
            self.proj.weight.copy_(torch.linspace(-0.1, 0.1, 288).view(6, 48))
            self.proj.bias.zero_()

    def tokens(self, x):
        return self.proj(F.unfold(x, 4, stride=4).transpose(1, 2))


class FakeSemVAE(torch.nn.Module):
    """Stand-in Semantic VAE: 3 channels of the tokens as the mean, a seeded posterior sample."""

    def encode(self, tokens, generator=None):
        b, length, _ = tokens.shape
        side = int(length**0.5)
        mean = tokens[..., :3].transpose(1, 2).reshape(b, 3, side, side)
        eps = torch.randn(mean.shape, generator=generator).to(mean.device)
        return mean + 0.1 * eps, torch.zeros(b)


def models():
    torch.manual_seed(0)
    return TextureVAE(TOY_VAE).eval(), FakeEncoder().eval(), FakeSemVAE()


@pytest.fixture(scope="module")
def toy_npz(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "train.npz"
    save_npz(path, rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8), np.arange(10) % 3, ["a", "b", "c"])
    return path


def run(data, out, **overrides):
    kwargs = {"shard_size": 4, "batch_size": 3, "seed": 5, **overrides}
    return extract.extract_latents(ImageDataset(data, 32), models(), out, **kwargs)


def shard_bytes(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_extraction_layout_and_flipped_copies(toy_npz, tmp_path):
    index = run(toy_npz, tmp_path / "lat")
    assert [s["file"] for s in index["shards"]] == [f"shard-0000{i}.safetensors" for i in range(3)]
    assert [s["count"] for s in index["shards"]] == [4, 4, 2] and index["num_items"] == 10
    assert index["keys"]["latents"] == {"dtype": "F32", "shape": [4, 8, 8]}
    assert index["keys"]["latents_sv_flip"] == {"dtype": "F32", "shape": [3, 8, 8]}
    assert index["keys"]["feats"] == {"dtype": "F16", "shape": [64, 6]}
    assert sorted(p.name for p in (tmp_path / "lat").iterdir()) == ["index.json"] + [
        s["file"] for s in index["shards"]
    ]

    from safetensors.torch import load_file

    shard = load_file(tmp_path / "lat" / "shard-00000.safetensors")
    images = ImageDataset(toy_npz, 32)
    assert shard["labels"].tolist() == images.labels[:4].tolist() and shard["indices"].tolist() == [
        0,
        1,
        2,
        3,
    ]
    # Re-encode shard 0 by hand with the documented per-shard seeds: batches of 3, flipped IMAGE appended.
    vae, encoder, semvae = models()
    tex_seed, sem_seed = extract.shard_seeds(5, 0)
    tex_gen, sem_gen = torch.Generator().manual_seed(tex_seed), torch.Generator().manual_seed(sem_seed)
    expected = {}
    for batch in ([0, 1, 2], [3]):
        x = torch.stack([to_tensor(images.array(i)) for i in batch])
        out = extract.encode_batch(torch.cat([x, x.flip(-1)]), vae, encoder, semvae, tex_gen, sem_gen)
        for key, value in out.items():
            expected.setdefault(key, []).append(value[: len(batch)])
            expected.setdefault(key + "_flip", []).append(value[len(batch) :])
    for key, parts in expected.items():
        assert torch.equal(shard[key], torch.cat(parts)), key
    flipped_tokens = encoder.tokens(to_tensor(images.array(1)[:, ::-1].copy())[None]).half()
    assert torch.equal(shard["feats_flip"][1], flipped_tokens[0])
    assert not torch.allclose(
        shard["latents_flip"], shard["latents"].flip(-1), atol=1e-2
    )  # not a flipped latent


def test_killed_extraction_resumes_to_identical_bytes(toy_npz, tmp_path, monkeypatch):
    run(toy_npz, tmp_path / "ref")
    real = extract.extract_shard

    def dies_at_shard_2(images, shard, *args, **kwargs):
        if shard == 2:
            raise KeyboardInterrupt("killed")
        return real(images, shard, *args, **kwargs)

    monkeypatch.setattr(extract, "extract_shard", dies_at_shard_2)
    with pytest.raises(KeyboardInterrupt):
        run(toy_npz, tmp_path / "resumed")
    assert sorted(p.name for p in (tmp_path / "resumed").iterdir()) == [
        "shard-00000.safetensors",
        "shard-00001.safetensors",
    ]
    with pytest.raises(FileNotFoundError, match="extraction has not finished"):
        read_index(tmp_path / "resumed")
    # what a kill can also leave: a torn shard (a disk error) and the temporary files of a save
    torn = tmp_path / "resumed" / "shard-00001.safetensors"
    torn.write_bytes(torn.read_bytes()[:100])
    plant_leftovers(tmp_path / "resumed", "shard-00002.safetensors")
    monkeypatch.setattr(extract, "extract_shard", real)
    done = []
    monkeypatch.setattr(
        extract,
        "extract_shard",
        lambda images, shard, *a, **k: done.append(shard) or real(images, shard, *a, **k),
    )
    run(toy_npz, tmp_path / "resumed")
    assert done == [1, 2]  # only the unfinished and the torn shard were redone
    assert shard_bytes(tmp_path / "resumed") == shard_bytes(tmp_path / "ref")
    assert hidden_files(tmp_path / "resumed") == []
    with pytest.raises(
        ValueError, match=r"shard-00000.safetensors: written with .*'seed': 5.*use another --out"
    ):
        run(toy_npz, tmp_path / "resumed", seed=6)
    with pytest.raises(ValueError, match=r"'texture_vae': None.*'texture_vae': 'ab12'"):  # another model
        run(toy_npz, tmp_path / "resumed", provenance={"texture_vae": "ab12"})


def test_flip_false_and_spatial_mismatch(toy_npz, tmp_path):
    index = run(toy_npz, tmp_path / "noflip", flip=False, shard_size=10)
    assert "latents_flip" not in index["keys"] and "feats_flip" not in index["keys"]
    vae, encoder, _ = models()

    class WrongGrid(FakeSemVAE):
        def encode(self, tokens, generator=None):
            z, kl = super().encode(tokens, generator)
            return z[..., :4, :4], kl

    with pytest.raises(ValueError, match=r"texture latents are \[4, 8, 8\] but semantic latents \[3, 4, 4\]"):
        extract.extract_latents(
            ImageDataset(toy_npz, 32),
            (vae, encoder, WrongGrid()),
            tmp_path / "bad",
            shard_size=4,
            batch_size=4,
            seed=0,
        )


def test_bad_image_error_or_skip(tmp_path, caplog):
    folder = tmp_path / "imgs"
    for i in range(5):
        (folder / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((40, 36, 3), 40 * i, np.uint8)).save(folder / f"c{i % 2}" / f"{i}.JPEG")
    broken = folder / "c1" / "3.JPEG"
    broken.write_bytes(broken.read_bytes()[:50])
    with pytest.raises(BadImageError, match="3.JPEG"):
        run(folder, tmp_path / "err")
    index = run(folder, tmp_path / "skip", on_bad_image="skip")  # shard 1 = [3.JPEG] only: left empty
    assert (
        index["num_items"] == 4
        and index["num_skipped"] == 1
        and [s["count"] for s in index["shards"]] == [4, 0]
    )
    assert str(broken) in index["shards"][1]["skipped"][0]
    assert str(broken) in caplog.text
    compute_stats(tmp_path / "skip", samples=4, seed=0)
    for in_memory in (True, False):
        ds = LatentDataset(tmp_path / "skip", in_memory=in_memory)
        assert len(ds) == 4 and ds[3][1].item() == 1


def synthetic_latents(directory, n=30, flip=True):
    g = torch.Generator().manual_seed(1)
    tex, sem = torch.randn(n, 4, 2, 2, generator=g) * 3 + 2, torch.randn(n, 2, 2, 2, generator=g) * 0.5 - 1
    tensors = {
        "latents": tex,
        "latents_sv": sem,
        "feats": torch.randn(n, 4, 5, generator=g).half(),
        "labels": torch.arange(n) % 3,
    }
    if flip:
        tensors.update(
            {"latents_flip": tex + 100, "latents_sv_flip": sem + 100, "feats_flip": tensors["feats"] + 1}
        )
    write_shard(directory, 0, {k: v[:12] for k, v in tensors.items()})
    write_shard(directory, 1, {k: v[12:] for k, v in tensors.items()})
    write_index(directory)
    return tensors


def test_stats_are_seeded_and_exact(tmp_path):
    tensors = synthetic_latents(tmp_path)
    stats = compute_stats(tmp_path, samples=10, seed=3)
    rows = torch.from_numpy(sample_rows(30, 10, 3))
    assert torch.equal(stats.tex_mean, tensors["latents"][rows].mean(dim=[0, 2, 3], keepdim=True))
    assert torch.equal(stats.sem_std, tensors["latents_sv"][rows].std(dim=[0, 2, 3], keepdim=True))
    first = (tmp_path / "latents_stats.pt").read_bytes()
    compute_stats(tmp_path, samples=10, seed=3)
    assert (tmp_path / "latents_stats.pt").read_bytes() == first  # same seed, same file
    other = compute_stats(tmp_path, samples=10, seed=4)
    assert not torch.equal(other.tex_mean, stats.tex_mean)
    loaded = load_stats(tmp_path)
    assert loaded.tex_mean.shape == (1, 4, 1, 1) and loaded.sem_std.shape == (1, 2, 1, 1)


def test_released_stats_format_and_errors(tmp_path):
    torch.save(
        {"mean": torch.zeros(1, 32, 1, 1), "std": torch.ones(1, 32, 1, 1)}, tmp_path / "latents_stats.pt"
    )
    with pytest.raises(FileNotFoundError, match="latents_sv_stats.pt: missing"):
        load_stats(tmp_path)
    torch.save({"mean": torch.zeros(16), "std": torch.ones(16)}, tmp_path / "latents_sv_stats.pt")
    with pytest.raises(ValueError, match=r"latents_sv_stats.pt: mean/std must be \[1, C, 1, 1\]"):
        load_stats(tmp_path)
    torch.save(
        {"mean": torch.zeros(1, 16, 1, 1), "std": torch.ones(1, 16, 1, 1)}, tmp_path / "latents_sv_stats.pt"
    )
    assert load_stats(tmp_path).tex_channels == 32


def test_latent_dataset_normalisation_round_trip_and_coin(tmp_path):
    tensors = synthetic_latents(tmp_path)
    stats = compute_stats(tmp_path, samples=30, seed=0)
    ds = LatentDataset(tmp_path, multiplier=0.5, seed=7)
    assert len(ds) == 30
    x1, label, feats = ds[13]
    assert (
        x1.dtype == torch.float32
        and x1.shape == (6, 2, 2)
        and label.dtype == torch.int64
        and feats.shape == (4, 5)
    )
    flip = flip_coin(7, 0, 13)
    tex = tensors["latents"][13] + (100 if flip else 0)
    assert torch.equal(x1[:4], (tex - stats.tex_mean[0]) / stats.tex_std[0] * 0.5)
    assert torch.equal(feats, (tensors["feats"][13] + (1 if flip else 0)).float())
    assert torch.allclose(denormalize_texture(x1[None], stats, 0.5)[0], tex, atol=1e-5)
    batch = normalize(tensors["latents"][:3], tensors["latents_sv"][:3], stats, 0.5)
    assert torch.allclose(denormalize_texture(batch, stats, 0.5), tensors["latents"][:3], atol=1e-5)
    # The coin is a pure function of (seed, epoch, index): a fresh dataset at the same epoch agrees.
    ds.set_epoch(3)
    again = LatentDataset(tmp_path, multiplier=0.5, seed=7)
    again.set_epoch(3)
    assert all(torch.equal(ds[i][0], again[i][0]) for i in range(30))
    flips = [flip_coin(7, e, i) for e in range(20) for i in range(30)]
    assert 0.4 < np.mean(flips) < 0.6
    assert [flip_coin(7, 0, i) for i in range(30)] != [flip_coin(7, 1, i) for i in range(30)]
    lazy = LatentDataset(tmp_path, multiplier=0.5, seed=7, in_memory=False)
    lazy.set_epoch(3)
    assert all(torch.equal(lazy[i][k], ds[i][k]) for i in (0, 11, 12, 29) for k in range(3))
    restored = pickle.loads(pickle.dumps(lazy))  # what a DataLoader worker receives
    assert torch.equal(restored[12][0], ds[12][0])
    with pytest.raises(IndexError):
        ds[30]


def test_dataset_without_flips_and_missing_index(tmp_path):
    synthetic_latents(tmp_path / "a", flip=False)
    compute_stats(tmp_path / "a", samples=30, seed=0)
    ds = LatentDataset(tmp_path / "a", seed=0)
    assert not ds.has_flip and all(torch.equal(ds[i][2], ds[i][2]) for i in range(3))
    with pytest.raises(FileNotFoundError, match="index.json: missing"):
        LatentDataset(tmp_path / "nothing")


@pytest.mark.slow
def test_two_ranks_write_the_same_directory_as_one(toy_npz, tmp_path):
    """torchrun with 2 CPU ranks (gloo): shard ranges split, rank 0 indexes after a barrier.
    Both sides use one CPU thread (torchrun's default): float results depend on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(toy_npz, tmp_path / "single")
    finally:
        torch.set_num_threads(threads)
    script = tmp_path / "ranks.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(os.path.dirname(__file__))!r})
        from test_latents import run, models
        from sfd import distributed as dist
        dist.init("cpu")
        run({str(toy_npz)!r}, {str(tmp_path / "multi")!r})
        dist.cleanup()
    """)
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29517",
            str(script),
        ],
        check=True,
        timeout=300,
    )
    assert shard_bytes(tmp_path / "multi") == shard_bytes(tmp_path / "single")
    assert json.loads((tmp_path / "multi" / "index.json").read_text())["num_items"] == 10
