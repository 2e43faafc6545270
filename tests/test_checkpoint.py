"""Checkpoint loading (docs/method.md §2.7, §7.5): the three released/training layouts, the safe-load
policy, wrapper prefixes, and errors that name the file and the offending key."""

import argparse

import pytest
import torch
from omegaconf import OmegaConf

from sfd.checkpoint import CheckpointError, load_into, load_weights, safe_load
from sfd.io import torch_save
from sfd.models import build_model

CFG = dict(
    model_type="LightningDiT-P/1",
    in_chans=8,
    semantic_chans=4,
    semfirst_delta_t=0.3,
    use_qknorm=True,
    use_swiglu=True,
    use_rope=True,
    use_rmsnorm=True,
    use_repa=True,
    repa_out_dim=24,
    repa_hidden_dim=32,
)


# An official configs/sfd/*/train.yaml, abridged: every value type it holds (str, int, float,
# bool, null, a list), as train.py reads it with OmegaConf.load and pickles it into checkpoints.
OFFICIAL_TRAIN_YAML = """\
ckpt_path: ''
data: {data_path: outputs/dataset/imagenet_train_256, image_size: 256, latent_multiplier: 1.0}
model: {model_type: LightningDiT-P/1, use_qknorm: true, in_chans: 8, semantic_chans: 4, semfirst_delta_t: 0.3}
train: {max_steps: 4000000, global_batch_size: 256, exp_name: sfd_xl, ckpt: null, ckpt_every: 80000}
optimizer: {lr: 0.0001, beta2: 0.999}
transport: {path_type: Linear, loss_weight: null, use_cosine_loss: true}
sample: {atol: 0.000001, rtol: 0.001, betas: [0.9, 0.95]}
"""


def make_model(seed=0, **overrides):
    torch.manual_seed(seed)
    model = build_model({**CFG, **overrides}, num_classes=10, input_size=8)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.normal_(0, 0.05)
    return model.eval()


def velocity(model):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 8, 8, 8, generator=gen)
    t = (torch.rand(2, generator=gen), torch.rand(2, generator=gen))
    return model(x, t, torch.tensor([3, 7]))


def training_dict(model, other):
    """The official train.py layout: raw model, EMA, AdamW state and a pickled OmegaConf config.

    The optimizer entry is written in AdamW's state_dict format by hand: constructing a real
    torch.optim.AdamW costs seconds of imports, and the loader never reads this entry."""
    params = [p for p in other.parameters() if p.requires_grad]
    opt = {
        "state": {
            i: {"step": torch.tensor(1.0), "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
            for i, p in enumerate(params)
        },
        "param_groups": [
            {
                "lr": 1e-4,
                "betas": (0.9, 0.999),
                "eps": 1e-8,
                "weight_decay": 0.0,
                "params": list(range(len(params))),
            }
        ],
    }
    config = OmegaConf.create(OFFICIAL_TRAIN_YAML)  # what OmegaConf.load makes of the file
    config["train"]["resume"] = False  # train.py sets these two keys on the loaded config
    config["train"]["load_ckpt"] = False
    return {"model": other.state_dict(), "ema": model.state_dict(), "opt": opt, "config": config}


@pytest.fixture
def source():
    return make_model(seed=0)


@pytest.mark.parametrize("layout", ["ema", "bare", "training"])
def test_strict_round_trip_through_every_layout(tmp_path, source, layout):
    sd = source.state_dict()
    path = tmp_path / f"{layout}.pt"
    if layout == "ema":
        torch_save({"ema": sd}, path)
    elif layout == "bare":
        torch_save(sd, path)
    else:
        torch_save(training_dict(source, make_model(seed=5)), path)
    target = make_model(seed=1)
    assert not torch.equal(velocity(target), velocity(source))
    load_into(target, path)
    assert torch.equal(velocity(target), velocity(source))
    loaded = load_weights(path)
    assert list(loaded) == list(sd)
    assert "pos_embed" in loaded and "feat_rope.freqs_cos" in loaded


def test_training_dict_loads_safely_with_its_config(tmp_path, source):
    path = tmp_path / "0400000.pt"
    torch_save(training_dict(source, make_model(seed=5)), path)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path)  # not loadable by a bare weights_only
    raw = load_weights(path, key="model")
    assert not torch.equal(raw["blocks.0.attn.qkv.weight"], source.state_dict()["blocks.0.attn.qkv.weight"])
    config = safe_load(path)["config"]
    assert config.model.model_type == "LightningDiT-P/1" and config.sample.betas == [0.9, 0.95]
    assert config.train.ckpt is None and config.train.resume is False


class Planted:
    """A class whose unpickling would leave a mark: the loader must refuse it, not run it."""

    def __init__(self, mark):
        self.mark = mark

    def __reduce__(self):
        return (open, (str(self.mark), "w"))


@pytest.mark.parametrize("extra", ["namespace", "planted"])
def test_other_pickled_classes_are_refused_by_name_and_never_run(tmp_path, source, extra):
    mark = tmp_path / "ran"
    obj = argparse.Namespace(lr=1e-4) if extra == "namespace" else Planted(mark)
    path = tmp_path / "0400000.pt"
    torch.save({"ema": source.state_dict(), "args": obj}, path)
    name = "argparse.Namespace" if extra == "namespace" else "io.open"
    with pytest.raises(CheckpointError, match=rf"0400000\.pt: pickles {name}.*not loaded.*pickled_globals"):
        load_weights(path)
    assert not mark.exists()


def test_missing_entry_lists_top_level_keys(tmp_path, source):
    path = tmp_path / "model_only.pt"
    torch_save({"model": source.state_dict(), "steps": torch.tensor(3), "note": "x"}, path)
    with pytest.raises(CheckpointError, match=r"model_only\.pt: has no 'ema' entry.*model, steps, note"):
        load_weights(path)
    assert set(load_weights(path, key="model")) == set(source.state_dict())


def test_wrapper_prefixes_are_stripped(tmp_path, source):
    sd = source.state_dict()
    wrapped = {("module._orig_mod." if i % 2 else "module.") + k: v for i, (k, v) in enumerate(sd.items())}
    torch_save({"ema": wrapped}, tmp_path / "ddp.pt")
    assert list(load_weights(tmp_path / "ddp.pt")) == list(sd)
    target = make_model(seed=2)
    load_into(target, {"_orig_mod." + k: v for k, v in sd.items()})
    assert torch.equal(velocity(target), velocity(source))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_file_is_named(tmp_path, source, damage):
    good = tmp_path / "good.pt"
    torch_save({"ema": source.state_dict()}, good)
    data = good.read_bytes()
    bad = tmp_path / f"{damage}.pt"
    bad.write_bytes(
        {"truncated": data[: len(data) // 2], "garbage": b"not a checkpoint" * 8, "empty": b""}[damage]
    )
    with pytest.raises(CheckpointError, match=rf"{damage}\.pt: not a readable torch checkpoint"):
        load_weights(bad)


def test_missing_file_and_non_state_dict(tmp_path):
    with pytest.raises(CheckpointError, match=r"nowhere\.pt: no such checkpoint file"):
        load_weights(tmp_path / "nowhere.pt")
    torch_save({"ema": {"w": torch.ones(1), "step": 3}}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match=r"odd\.pt\['ema'\]: is not a non-empty state dict"):
        load_weights(tmp_path / "odd.pt")
    torch_save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"list\.pt: expected a dict, found list"):
        load_weights(tmp_path / "list.pt")


def test_mismatch_names_file_first_keys_and_shapes(tmp_path, source):
    sd = source.state_dict()
    path = tmp_path / "wide.pt"
    torch_save({"ema": make_model(model_type="LightningDiT-T/1").state_dict()}, path)
    with pytest.raises(CheckpointError) as err:
        load_into(make_model(), path)
    message = str(err.value)
    assert "wide.pt: does not fit LightningDiT" in message
    assert "unexpected keys (first: 'blocks.2.norm1.weight')" in message
    assert "first: 'pos_embed' expected [1, 64, 64], got [1, 64, 96]" in message

    partial = dict(sd)
    del partial["blocks.1.attn.q_norm.weight"]
    partial["extra.weight"] = torch.ones(1)
    with pytest.raises(
        CheckpointError,
        match=r"<state dict>.*1 missing keys \(first: 'blocks.1.attn.q_norm.weight'\)"
        r".*1 unexpected keys \(first: 'extra.weight'\)",
    ):
        load_into(make_model(), partial)
    result = load_into(make_model(), partial, strict=False)
    assert result.missing_keys == ["blocks.1.attn.q_norm.weight"] and result.unexpected_keys == [
        "extra.weight"
    ]


def test_synchronous_checkpoint_does_not_fit_sfd_model(source):
    sync = make_model(semfirst_delta_t=0.0)
    with pytest.raises(CheckpointError, match=r"missing keys \(first: 't_embedder_sem.mlp.0.weight'\)"):
        load_into(source, sync.state_dict())
