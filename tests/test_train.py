"""Training engine: data order and seeds, 2-process gloo DDP, SIGKILL-and-resume bit equality,
budget continuation, SIGTERM suspension (exit 75) and refusal of foreign checkpoints."""

import copy
import json
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from engine_fixtures import (
    ENV,
    hidden_files,
    make_latents,
    plant_leftovers,  # noqa: F401
    tiny_experiment,
)

from sfd.config import ConfigError, validate
from sfd.train import EXIT_SUSPENDED, StepBatches, step_seeds, train

STEPS = 24  # long enough that a killed subprocess is still running when the signal lands


def _tensors_equal(a: dict, b: dict) -> bool:
    """Bitwise equality of the tensors of two (nested) checkpoint dicts."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_tensors_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and torch.equal(a, b)
    return True


def _assert_same_state(path_a, path_b):
    a, b = torch.load(path_a, weights_only=True), torch.load(path_b, weights_only=True)
    assert a["step"] == b["step"]
    for key in ("model", "ema", "opt"):
        assert _tensors_equal(a[key], b[key]), f"{key} differs between {path_a} and {path_b}"


def _train_cli(cfg_path, latents, run_dir, *extra, nproc=1):
    launcher = (
        [sys.executable, "-m", "sfd"]
        if nproc == 1
        else [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            "-m",
            "sfd",
        ]
    )
    return [
        *launcher,
        "train",
        "--config",
        str(cfg_path),
        "--model",
        "tiny",
        "--latents",
        str(latents),
        "--run-dir",
        str(run_dir),
        *extra,
    ]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tiny latents, an experiment file and one uninterrupted reference run of STEPS steps."""
    root = tmp_path_factory.mktemp("train")
    latents = make_latents(root / "latents")
    cfg = tiny_experiment(train={"budgets": [4, STEPS], "ckpt_every": 2, "keep_steps": [3]})
    cfg_path = root / "exp.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    reference = root / "reference"
    assert train(validate(cfg, "experiment"), "tiny", latents, reference) == 0
    return {"root": root, "latents": latents, "cfg": cfg, "cfg_path": cfg_path, "reference": reference}


def test_global_batches_do_not_depend_on_world_size():
    one = list(StepBatches(20, 8, rank=0, world=1, seed=3, start=0, stop=5))
    two = [list(StepBatches(20, 8, rank=r, world=2, seed=3, start=0, stop=5)) for r in range(2)]
    for step in range(5):
        assert one[step] == two[0][step] + two[1][step]
    # drop_last: 2 batches per epoch; epoch 1 is a different permutation, flagged by its epoch number
    assert [b[0][0] for b in one] == [0, 0, 1, 1, 2]
    assert sorted(i for _, i in one[0] + one[1]) == sorted(set(i for _, i in one[0] + one[1]))
    assert [i for _, i in one[0]] != [i for _, i in one[2]]
    # resuming at step 3 yields exactly the tail
    assert list(StepBatches(20, 8, 0, 1, 3, start=3, stop=5)) == one[3:]


def test_step_seeds_differ_per_rank_and_step_and_are_reproducible():
    seeds = {step_seeds(0, r, s) for r in range(3) for s in range(50)}
    assert len(seeds) == 150
    assert step_seeds(7, 1, 9) == step_seeds(7, 1, 9)
    assert step_seeds(7, 1, 9)[0] != step_seeds(7, 1, 9)[1]


def test_run_directory_layout(setup):
    ref = setup["reference"]
    assert sorted(int(p.stem) for p in (ref / "checkpoints").iterdir()) == sorted(
        [3, *range(2, STEPS + 1, 2)]
    )
    assert sorted(p.name for p in (ref / "ema").iterdir()) == ["0000003.pt", "0000004.pt", f"{STEPS:07d}.pt"]
    ema = torch.load(ref / "ema" / f"{STEPS:07d}.pt", weights_only=True)
    full = torch.load(ref / "checkpoints" / f"{STEPS:07d}.pt", weights_only=True)
    assert list(ema) == ["ema"] and _tensors_equal(ema["ema"], full["ema"])
    assert "pos_embed" in ema["ema"] and "feat_rope.freqs_cos" in ema["ema"]
    assert full["data"] == {"epoch": STEPS // 2, "batch_in_epoch": 0, "steps_per_epoch": 2, "num_items": 40}
    assert full["config"]["models"]["tiny"]["train"]["budgets"] == [4, STEPS]
    lines = (ref / "log.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert all(
        r["loss"] > 0 and r["images_per_s"] > 0 and {"mse", "cos", "repa"} <= r.keys() for r in records
    )
    assert all(r["data_wait_s"] >= 0 and "mfu" not in r for r in records)  # no bf16 peak for a CPU
    # EMA tracked the model, which moved away from its init
    assert not torch.equal(
        full["model"]["final_layer.linear.weight"],
        torch.zeros_like(full["model"]["final_layer.linear.weight"]),
    )
    assert not torch.equal(
        full["ema"]["final_layer.linear.weight"], full["model"]["final_layer.linear.weight"]
    )


def test_budget_continuation_equals_one_longer_run(setup, tmp_path):
    cfg = validate(setup["cfg"], "experiment")
    run = tmp_path / "run"
    assert train(cfg, "tiny", setup["latents"], run, until_step=4) == 0
    assert not (run / "checkpoints" / "0000006.pt").exists()
    assert train(cfg, "tiny", setup["latents"], run, until_step=STEPS) == 0
    _assert_same_state(
        run / "checkpoints" / f"{STEPS:07d}.pt", setup["reference"] / "checkpoints" / f"{STEPS:07d}.pt"
    )
    # a new run directory continuing from the 4-step budget's checkpoint
    other = tmp_path / "other"
    assert train(cfg, "tiny", setup["latents"], other, init_from=run / "checkpoints" / "0000004.pt") == 0
    _assert_same_state(
        other / "checkpoints" / f"{STEPS:07d}.pt", setup["reference"] / "checkpoints" / f"{STEPS:07d}.pt"
    )
    # running again is a no-op
    assert train(cfg, "tiny", setup["latents"], other) == 0
    # --init-from the target itself still leaves the target's outputs in the new run directory
    same = tmp_path / "same"
    assert (
        train(cfg, "tiny", setup["latents"], same, until_step=4, init_from=run / "checkpoints" / "0000004.pt")
        == 0
    )
    _assert_same_state(same / "checkpoints" / "0000004.pt", run / "checkpoints" / "0000004.pt")
    assert (same / "ema" / "0000004.pt").exists()


def _wait_for(path, proc, timeout=120):
    start = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() - start < timeout, f"{path} did not appear"
        time.sleep(0.01)


def test_sigkill_and_resume_is_bit_exact(setup, tmp_path):
    run = tmp_path / "run"
    cmd = _train_cli(setup["cfg_path"], setup["latents"], run)
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for(run / "checkpoints" / "0000004.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    newest = max((run / "checkpoints").glob("*.pt"))
    assert newest.stem < f"{STEPS:07d}", "the run finished before it was killed"
    # A torn newest checkpoint (not produced by sfd.io, but a disk can do it) is skipped.
    torn = run / "checkpoints" / f"{int(newest.stem) + 1:07d}.pt"
    torn.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    plant_leftovers(run / "checkpoints", f"{int(newest.stem) + 2:07d}.pt")  # killed inside a save
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"skipping {torn}" in done.stdout + done.stderr
    assert hidden_files(run) == []  # temporary files swept, the (stale) lock removed
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))  # the killed run's lines past its checkpoint are gone
    _assert_same_state(
        run / "checkpoints" / f"{STEPS:07d}.pt", setup["reference"] / "checkpoints" / f"{STEPS:07d}.pt"
    )


def test_sigterm_checkpoints_and_exits_75(setup, tmp_path):
    run = tmp_path / "run"
    cmd = _train_cli(setup["cfg_path"], setup["latents"], run)
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for(run / "checkpoints" / "0000002.pt", proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_SUSPENDED, out[-3000:]
    assert "SIGTERM: checkpointed step" in out
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same_state(
        run / "checkpoints" / f"{STEPS:07d}.pt", setup["reference"] / "checkpoints" / f"{STEPS:07d}.pt"
    )


def test_two_process_gloo_ddp_averages_gradients(setup, tmp_path):
    """One DDP step over 2 gloo ranks equals one step on the mean of both ranks' losses."""
    from sfd.flow import sample_logit_normal, training_losses
    from sfd.latents import LatentDataset
    from sfd.models import build_model

    cfg = copy.deepcopy(setup["cfg"])
    cfg["models"]["tiny"]["train"].update(budgets=[1], num_workers=1)
    cfg_path = tmp_path / "exp.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    done = subprocess.run(
        _train_cli(cfg_path, setup["latents"], run, nproc=2),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    state = torch.load(run / "checkpoints" / "0000001.pt", weights_only=True)
    assert state["world_size"] == 2

    cfg = validate(cfg, "experiment")
    mcfg, tcfg = cfg["models"]["tiny"]["model"], cfg["models"]["tiny"]["train"]
    dataset = LatentDataset(setup["latents"], multiplier=1.0, seed=cfg["seed"])
    dataset.set_epoch(0)
    torch.manual_seed(cfg["seed"])
    model = build_model(mcfg, num_classes=cfg["data"]["num_classes"], input_size=4)
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg["lr"], betas=(0.9, tcfg["beta2"]), weight_decay=0)
    total = 0
    for rank in range(2):
        batch = next(iter(StepBatches(len(dataset), tcfg["global_batch_size"], rank, 2, cfg["seed"], 0, 1)))
        x1, y, feats = torch.utils.data.default_collate([dataset[i] for _, i in batch])
        loss_seed, global_seed = step_seeds(cfg["seed"], rank, 0)
        torch.manual_seed(global_seed)
        gen = torch.Generator().manual_seed(loss_seed)
        noise = torch.randn(x1.shape, generator=gen)
        losses = training_losses(
            model,
            x1,
            y,
            delta_t=0.3,
            semantic_chans=4,
            semantic_weight=2.0,
            repa_target=feats,
            t=sample_logit_normal(len(x1), gen),
            noise=noise,
        )
        total = total + losses["total"] / 2
    total.backward()
    opt.step()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(state["model"][name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_foreign_checkpoints_are_refused(setup, tmp_path):
    cfg = copy.deepcopy(setup["cfg"])
    cfg["models"]["tiny"]["model"]["model_type"] = "LightningDiT-T/1"
    reference_ckpt = setup["reference"] / "checkpoints" / "0000004.pt"
    with pytest.raises(
        ConfigError, match=r"0000004.pt was trained as 'tiny' \(LightningDiT-P/1\).*LightningDiT-T/1"
    ):
        train(validate(cfg, "experiment"), "tiny", setup["latents"], tmp_path / "a", init_from=reference_ckpt)
    cfg = copy.deepcopy(setup["cfg"])
    cfg["models"]["tiny"]["train"]["lr"] = 1e-3
    with pytest.raises(ConfigError, match=r"recipe.lr is 0.0005 in the checkpoint, 0.001 in the config"):
        train(validate(cfg, "experiment"), "tiny", setup["latents"], tmp_path / "b", init_from=reference_ckpt)

    state = torch.load(reference_ckpt, weights_only=True)
    del state["ema"]
    torch.save(state, tmp_path / "no_ema.pt")
    with pytest.raises(ConfigError, match=r"no_ema.pt: training checkpoint has no 'ema' entry"):
        train(
            validate(setup["cfg"], "experiment"),
            "tiny",
            setup["latents"],
            tmp_path / "c",
            init_from=tmp_path / "no_ema.pt",
        )
    bad = copy.deepcopy(setup["cfg"])
    bad["models"]["tiny"]["train"]["global_batch_size"] = 64
    with pytest.raises(ConfigError, match="40 latents, fewer than one global batch"):
        train(validate(bad, "experiment"), "tiny", setup["latents"], tmp_path / "d")
