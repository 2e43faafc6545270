"""Texture VAE: released-layout strict loading, posterior sampling, uint8 decoding, toy training."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from sfd import cli
from sfd.tokenizers import AEArch, TextureVAE, load_texture_vae, save_texture_vae
from sfd.tokenizers.texture_vae import AttnBlock, to_uint8
from sfd.tokenizers.train import train_texture_vae


@pytest.fixture(autouse=True)
def one_thread():
    """Training on a shared 2-core machine: two OpenMP threads wait on each other, one does not."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TOY = {
    "ch": 32,
    "ch_mult": [1, 2, 2],
    "num_res_blocks": 1,
    "attn_resolutions": [],
    "z_channels": 4,
    "resolution": 32,
    "norm_groups": 8,
}


def released_layout_checkpoint(path, extra=None, drop=None):
    """An f16d32 state dict in the released file's layout, at 1 element of storage per tensor:
    wrapped under `state_dict`, with `loss.*` entries and the siblings a PyTorch Lightning 2.4
    checkpoint of the VA-VAE trainer (vavae/main.py: ModelCheckpoint callback) writes."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in TextureVAE().state_dict().items()}
    state = {
        k: torch.full((), float(i)).expand(shape) for i, (k, shape) in enumerate(shapes.items()) if k != drop
    }
    state.update(
        {"loss.logvar": torch.zeros(()), "loss.discriminator.main.0.weight": torch.zeros(4, 3, 4, 4)}
    )
    state.update(extra or {})
    checkpoint_callback = {
        "monitor": None,
        "best_model_score": None,
        "best_model_path": "",
        "current_score": None,
        "dirpath": "logs/ckpts",
        "best_k_models": {},
        "kth_best_model_path": "",
        "kth_value": torch.tensor(float("inf")),
        "last_model_path": "logs/ckpts/last.ckpt",
    }
    loops = {
        "fit_loop": {
            "state_dict": {},
            "epoch_loop.state_dict": {"_batches_that_stepped": 250200},
            "epoch_progress": {"total": {"ready": 50, "completed": 49}, "current": {"ready": 50}},
        }
    }
    torch.save(
        {
            "state_dict": state,
            "epoch": 49,
            "global_step": 250200,
            "pytorch-lightning_version": "2.4.0",
            "loops": loops,
            "callbacks": {"ModelCheckpoint{'monitor': None, 'mode': 'min'}": checkpoint_callback},
            "optimizer_states": [],
            "lr_schedulers": [],
        },
        path,
    )
    return shapes


def test_released_f16d32_checkpoint_loads_strictly(tmp_path):
    shapes = released_layout_checkpoint(tmp_path / "ldm.ckpt")
    model = load_texture_vae(tmp_path / "ldm.ckpt")
    assert model.arch == AEArch() and not model.training
    assert sum(v.numel() for v in model.state_dict().values()) == 69_836_067
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes
    assert shapes["encoder.conv_out.weight"] == (64, 512, 3, 3)  # double_z: 2 x 32 channels
    assert shapes["quant_conv.weight"] == (64, 64, 1, 1) and shapes["post_quant_conv.weight"] == (
        32,
        32,
        1,
        1,
    )
    for key in (
        "encoder.down.3.downsample.conv.weight",
        "encoder.down.4.attn.1.proj_out.bias",
        "encoder.down.2.block.0.nin_shortcut.weight",
        "encoder.mid.attn_1.q.weight",
        "decoder.up.4.attn.2.k.weight",
        "decoder.up.1.upsample.conv.weight",
        "decoder.up.0.block.2.conv2.bias",
    ):
        assert key in shapes, key
    assert (
        "encoder.down.4.downsample.conv.weight" not in shapes
        and "decoder.up.0.upsample.conv.weight" not in shapes
    )
    assert float(model.state_dict()["encoder.conv_in.bias"][0]) == 1.0  # the checkpoint's values, not an init
    raw = {k: v for k, v in torch.load(tmp_path / "ldm.ckpt", weights_only=True)["state_dict"].items()}
    torch.save(raw, tmp_path / "raw.ckpt")  # an unwrapped state dict loads too
    assert load_texture_vae(tmp_path / "raw.ckpt").arch == AEArch()


@pytest.mark.parametrize(
    "arch, extra, drop, message",
    [
        (
            TOY,
            None,
            None,
            r"key 'encoder.conv_in.weight' has shape \[128, 3, 3, 3\] in the checkpoint, "
            r"expected \[32, 3, 3, 3\]",
        ),
        (None, None, "decoder.conv_out.bias", r"missing key 'decoder.conv_out.bias'"),
        (None, {"encoder.extra.weight": torch.zeros(1)}, None, r"unexpected key 'encoder.extra.weight'"),
    ],
)
def test_wrong_architecture_names_the_first_mismatching_key(tmp_path, arch, extra, drop, message):
    released_layout_checkpoint(tmp_path / "ldm.ckpt", extra=extra, drop=drop)
    with pytest.raises(ValueError, match=message) as err:
        load_texture_vae(tmp_path / "ldm.ckpt", arch=arch)
    assert "ldm.ckpt" in str(err.value)


def test_our_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = TextureVAE(TOY).eval()
    save_texture_vae(model, tmp_path / "vae.pt", metrics={"psnr": 1.0})
    loaded = load_texture_vae(tmp_path / "vae.pt")
    assert loaded.arch == AEArch(**TOY)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model.posterior(x)[0], loaded.posterior(x)[0])
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_texture_vae(tmp_path / "nope.pt")
    data = (tmp_path / "vae.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.pt: not a readable torch checkpoint"):
        load_texture_vae(tmp_path / "cut.pt")


def test_encode_is_a_seeded_posterior_sample_with_clamped_logvar():
    torch.manual_seed(0)
    model = TextureVAE(TOY).eval()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        mean, logvar = model.posterior(x)
        z = model.encode(x, generator=torch.Generator().manual_seed(7))
        assert z.shape == (3, 4, 8, 8)  # f4
        eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(7))
        assert torch.equal(z, mean + torch.exp(0.5 * logvar) * eps)
        assert torch.equal(z, model.encode(x, generator=torch.Generator().manual_seed(7)))
        assert not torch.equal(z, model.encode(x, generator=torch.Generator().manual_seed(8)))
        for bias, bound in ((1e4, 20.0), (-1e4, -30.0)):
            model.quant_conv.bias[4:] = bias
            assert torch.all(model.posterior(x)[1] == bound)


def test_decode_to_uint8_clamps_and_truncates():
    x = (
        torch.tensor([-2.0, -1.0, -0.999, 0.0, 0.5 / 127.5, 0.996, 1.0, 3.0])
        .view(1, 1, 1, 8)
        .expand(1, 3, 1, 8)
    )
    out = to_uint8(x)
    assert out.dtype == torch.uint8 and out.shape == (1, 1, 8, 3)
    assert out[0, 0, :, 0].tolist() == [0, 0, 0, 128, 128, 254, 255, 255]  # floor(127.5x + 128), clamped
    model = TextureVAE(TOY).eval()
    assert model.decode_to_uint8(torch.zeros(2, 4, 8, 8)).shape == (2, 32, 32, 3)


def test_attention_and_f16_geometry():
    torch.manual_seed(0)
    block = AttnBlock(32, AEArch())
    x = torch.randn(2, 32, 5, 5)
    with torch.no_grad():
        h = block.norm(x)
        q, k, v = (conv(h).flatten(2).transpose(1, 2) for conv in (block.q, block.k, block.v))
        expected = x + block.proj_out(
            F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 32, 5, 5)
        )
        torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)
        small_f16 = TextureVAE({"ch": 32, "z_channels": 8, "resolution": 64, "attn_resolutions": [4]}).eval()
        z = small_f16.encode(torch.zeros(1, 3, 64, 64))
        assert z.shape == (1, 8, 4, 4) and small_f16.decode(z).shape == (1, 3, 64, 64)
    assert AEArch().downsample_factor == 16 and AEArch(**TOY).downsample_factor == 4


def _toy_images(n=48):
    from sfd.config import validate
    from sfd.data.toy import make_split

    return make_split(validate({"train_size": n}, "data"), "train")[0]


def test_toy_training_is_deterministic_and_learns():
    from sfd.config import validate

    images = _toy_images()
    train = validate({"train": {"steps": 100, "holdout": 8, "log_every": 10}}, "texture_vae")["train"]
    arch = {**TOY, "ch": 16}
    model, metrics = train_texture_vae(images, arch, train, seed=0)
    _, repeat = train_texture_vae(images, arch, {**train, "steps": 10}, seed=0)
    first = metrics["history"][0]
    assert first["step"] == 10 and repeat["mse"] == first["mse"]  # same seed, same numbers
    assert metrics["step"] == 100 and metrics["psnr"] > first["psnr"] + 1.0
    with pytest.raises(ValueError, match="holdout=48 leaves no training images"):
        train_texture_vae(images, arch, {**train, "holdout": 48}, seed=0)


def test_train_tokenizer_cli(tmp_path):
    from sfd.data.toy import save_npz

    save_npz(tmp_path / "train.npz", _toy_images(40), np.arange(40) % 10, [str(i) for i in range(10)])
    config = tmp_path / "exp.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "t",
                "texture_vae": {
                    "arch": {**TOY, "ch": 16},
                    "train": {"steps": 4, "batch_size": 4, "holdout": 8, "log_every": 2},
                },
            }
        )
    )
    out, metrics = tmp_path / "vae.pt", tmp_path / "vae.json"
    assert (
        cli.main(
            [
                "train-tokenizer",
                "--config",
                str(config),
                "--data",
                str(tmp_path / "train.npz"),
                "--out",
                str(out),
                "--metrics",
                str(metrics),
            ]
        )
        == 0
    )
    assert load_texture_vae(out).arch == AEArch(**{**TOY, "ch": 16})
    assert set(json.loads(metrics.read_text())) >= {"psnr", "mse", "seconds", "step"}
