"""The Snakemake DAG and its run matrix, checked with dry runs (no job executes here)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from workflow_helpers import MINI, write_config

from sfd.config import ConfigError
from sfd.workflow import launch, matrix

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def dry_run(tmp_path, config: Path, *targets, settings=()):
    """`snakemake -n` with the repo's Snakefile in a scratch working directory."""
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    cmd = [
        *SNAKEMAKE,
        *targets,
        "-s",
        str(ROOT / "Snakefile"),
        "-d",
        str(workdir),
        "-n",
        "--quiet",
        "rules",
        "--config",
        f"experiment={config}",
        *settings,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)


def job_counts(stdout: str) -> dict[str, int]:
    counts = {}
    for line in stdout.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


# ----------------------------------------------------------------------------
# The run matrix.


def test_training_is_chained_through_budgets_and_keep_steps(tmp_path):
    exp = matrix.load(write_config(tmp_path, MINI))
    assert exp.export_steps("big") == [10, 20, 40]
    assert [exp.previous_step("big", s) for s in (10, 20, 40)] == [None, 10, 20]
    assert exp.ema("big", 40) == "outputs/mini/train/big/0000040/ema/0000040.pt"
    assert exp.checkpoint("big", 20) == "outputs/mini/train/big/0000020/checkpoints/0000020.pt"
    with pytest.raises(ConfigError, match=r"models.big.train: step 30 is neither a budget nor a keep_step"):
        exp.previous_step("big", 30)


def test_train_and_sample_keys_cover_what_changes_results(tmp_path):
    exp = matrix.load(write_config(tmp_path, MINI))
    keys = exp.reads("train", model="big")
    assert "models.big.model" in keys and "models.big.train.lr" in keys and "seed" in keys
    assert not any(k.endswith((".budgets", ".keep_steps", ".ckpt_every")) for k in keys)
    sample = exp.reads("sample-run", run="big_40_ag")
    assert {"runs.big_40_ag", "models.big.model", "models.small.model", "sampling.method"} <= set(sample)
    assert "sampling.pack_seed" not in sample
    assert "models.small.model" not in exp.reads("sample-run", run="big_20")
    assert exp.params("runs.big_20")["runs.big_20"]["guidance"]["kind"] == "none"


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda c: c["runs"]["big_20"].update(model="nope"),
            r"runs.big_20.model: 'nope' is not a key of models",
        ),
        (
            lambda c: c["runs"]["big_20"].update(step=30),
            r"runs.big_20.model: step 30 of 'big' is neither a budget",
        ),
        (
            lambda c: c["runs"]["big_40_ag"]["guidance"].update(step=7),
            r"runs.big_40_ag.guidance.model: step 7 of 'small'",
        ),
        (
            lambda c: c["runs"]["big_40_ag"]["guidance"].update(model=None),
            r"runs.big_40_ag.guidance: autoguidance needs",
        ),
        (lambda c: c["runs"]["big_40_ag"]["guidance"].update(scale=1.0), r"runs.big_40_ag.guidance.scale"),
        (
            lambda c: c["runs"]["big_20"].update(guidance={"kind": "none", "model": "small"}),
            r"runs.big_20.guidance: model/step",
        ),
        (
            lambda c: c["runs"]["big_20"].update(source="released"),
            r"latents.released_stats: runs with source released",
        ),
        (
            lambda c: (
                c["runs"]["big_20"].update(source="released"),
                c.update(
                    latents={
                        "released_stats": {
                            "repo_id": "r",
                            "latents_stats": "a.pt",
                            "latents_sv_stats": "b.pt",
                        }
                    }
                ),
            ),
            r"released weights of 'big' are not listed",
        ),
        (
            lambda c: c["tables"]["table_fid"]["rows"].append({"run": "ghost"}),
            r"tables.table_fid.rows.2.run: 'ghost'",
        ),
        (
            lambda c: c["tables"]["table_fid"]["rows"].append({"run": "big_10", "paper_row": "readme.nope"}),
            r"tables.table_fid.rows.2.paper_row: 'readme.nope'",
        ),
        (
            lambda c: c["tables"]["table_fid"].update(paper="table9"),
            r"tables.table_fid.paper: 'table9' is not a paper table",
        ),
        (
            lambda c: c["models"]["big"]["train"].update(keep_steps=[50]),
            r"models.big.train.keep_steps: \[50\] lie beyond",
        ),
        (
            lambda c: c["runs"]["big_20"].update(bogus=1),
            r"runs.big_20: Additional properties are not allowed",
        ),
        (
            lambda c: c["runs"]["big_20"].update(num_samples=50),
            r"runs.big_20.num_samples: 50 samples, fewer than evaluation",
        ),
    ],
)
def test_bad_references_name_the_key(tmp_path, edit, message):
    import copy

    data = copy.deepcopy(MINI)
    edit(data)
    with pytest.raises(ConfigError, match=message):
        matrix.load(write_config(tmp_path, data))


# ----------------------------------------------------------------------------
# The DAG, by dry runs.


def test_dag_has_every_stage_and_only_the_needed_training(tmp_path):
    result = dry_run(tmp_path, write_config(tmp_path, MINI))
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    # big: 10 -> 20 -> 40 chained; small only up to the AutoGuidance step 5 (its budget 10 is unused)
    assert counts["train"] == 5
    assert counts["sample_run"] == counts["pack"] == counts["evaluate"] == 5
    assert counts["table"] == 3 and counts["plot"] == 2
    for rule in (
        "make_toy_data",
        "train_tokenizer",
        "extract_features",
        "train_semvae",
        "extract_latents",
        "latent_stats",
        "train_detector",
        "make_reference",
    ):
        assert counts[rule] >= 1, rule


def test_chained_budget_starts_from_the_previous_checkpoint(tmp_path):
    config = write_config(tmp_path, MINI)
    target = "outputs/mini/train/big/0000040/ema/0000040.pt"
    workdir = tmp_path / "work"
    workdir.mkdir()
    out = subprocess.run(
        [
            *SNAKEMAKE,
            target,
            "-s",
            str(ROOT / "Snakefile"),
            "-d",
            str(workdir),
            "-n",
            "-p",
            "--config",
            f"experiment={config}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    commands = [line for line in out.stdout.splitlines() if "sfd train " in line]
    assert len(commands) == 3
    last = next(c for c in commands if "--until-step 40" in c)
    assert "--init-from outputs/mini/train/big/0000020/checkpoints/0000020.pt" in last
    first = next(c for c in commands if "--until-step 10" in c)
    assert "--init-from" not in first


@pytest.mark.parametrize(
    "target, message",
    [
        ("outputs/mini/metrics/nope.json", r"runs.nope: no such run \(known: big_20"),
        ("results/table_x.csv", r"tables.table_x: no such table"),
        ("outputs/mini/train/big/0000030/ema/0000030.pt", r"step 30 is neither a budget nor a keep_step"),
    ],
)
def test_a_target_outside_the_config_fails_before_any_job(tmp_path, target, message):
    result = dry_run(tmp_path, write_config(tmp_path, MINI), target)
    assert result.returncode != 0
    assert re.search(message, result.stderr + result.stdout)


def test_unknown_experiment_key_and_foreign_device_fail_before_the_dag(tmp_path):
    bad = write_config(tmp_path, {**MINI, "bogus": 1}, "bad.yaml")
    result = dry_run(tmp_path, bad)
    assert result.returncode != 0 and "('bogus' was unexpected)" in result.stdout + result.stderr
    cpu_only = write_config(tmp_path, {**MINI, "device": "cpu"}, "cpu.yaml")
    result = dry_run(tmp_path, cpu_only, settings=("device=npu",))
    assert result.returncode != 0
    assert (
        "device: the profile runs jobs on 'npu', the experiment allows only 'cpu'"
        in result.stdout + result.stderr
    )


def test_profiles_ask_for_devices_and_slurm_resources(tmp_path):
    config = write_config(tmp_path, MINI)
    for profile, device, marker in (("slurm-gpu", "cuda", "gpu=8"), ("slurm-npu", "npu", "gres=npu:8")):
        workdir = tmp_path / profile
        workdir.mkdir()
        out = subprocess.run(
            [
                *SNAKEMAKE,
                "-s",
                str(ROOT / "Snakefile"),
                "-d",
                str(workdir),
                "--profile",
                str(ROOT / "profiles" / profile),
                "-n",
                "--config",
                f"experiment={config}",
                f"device={device}",
                "devices_per_node=8",
            ],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        train = out.stdout[out.stdout.index("rule train:") :]
        train = train[: train.index("Shell command")]
        assert marker in train and "slurm_partition=" in train and "runtime=" in train
        if device == "npu":
            assert "sfd launch --npus 8" in out.stdout


def test_lint_is_clean():
    out = subprocess.run(
        [*SNAKEMAKE, "--lint", "--config", "experiment=config/toy.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


# ----------------------------------------------------------------------------
# sfd launch.


def test_state_directory_is_kept_for_the_same_job_and_wiped_for_another(tmp_path):
    state = tmp_path / "run"
    assert launch.prepare_state(state, "a" * 64) is False
    (state / "checkpoint.pt").write_text("partial")
    assert launch.prepare_state(state, "a" * 64) is True
    assert (state / "checkpoint.pt").exists()
    assert launch.prepare_state(state, "b" * 64) is False
    assert not (state / "checkpoint.pt").exists()
    (state / launch.STAMP).unlink()
    (state / "x").write_text("no stamp: not ours to resume")
    assert launch.prepare_state(state, "b" * 64) is False and not (state / "x").exists()


def test_fingerprint_follows_values_and_input_files(tmp_path):
    f = tmp_path / "input.bin"
    f.write_bytes(b"1")
    base = launch.fingerprint({"a": 1}, [str(f)])
    assert launch.fingerprint({"a": 1}, [str(f)]) == base
    assert launch.fingerprint({"a": 2}, [str(f)]) != base
    os.utime(f, ns=(1, 1))
    assert launch.fingerprint({"a": 1}, [str(f)]) != base


def test_command_line_fans_out_over_visible_devices(monkeypatch):
    cmd = ["sfd", "train", "--x"]
    assert launch.command_line(cmd, env={}) == cmd
    assert launch.command_line(cmd, env={"CUDA_VISIBLE_DEVICES": "0"}) == cmd
    local = launch.command_line(cmd, env={"CUDA_VISIBLE_DEVICES": "0,1,2,3"})
    assert local == ["torchrun", "--standalone", "--nproc-per-node=4", "--no-python", *cmd]
    npu = launch.command_line(cmd, env={"ASCEND_RT_VISIBLE_DEVICES": "0,1"})
    assert npu[:3] == ["torchrun", "--standalone", "--nproc-per-node=2"]
    monkeypatch.setattr(launch, "_hostnames", lambda nodelist: ["n17", "n18"])
    env = {
        "SLURM_JOB_ID": "42",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_JOB_NODELIST": "n[17-18]",
        "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7",
    }
    multi = launch.command_line(cmd, env=env)
    assert multi[:4] == ["srun", "--nodes=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    assert "--nnodes=2" in multi and "--nproc-per-node=8" in multi
    assert "--rdzv-endpoint=n17:29500" in multi and "--rdzv-id=42" in multi and multi[-3:] == cmd


def test_launch_runs_the_command_and_sets_npu_visibility(tmp_path):
    config = write_config(tmp_path, MINI)
    state = tmp_path / "state"
    probe = "import os; print('VISIBLE=' + os.environ['ASCEND_RT_VISIBLE_DEVICES'])"
    env = {
        k: v for k, v in os.environ.items() if k not in ("ASCEND_RT_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES")
    }
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "sfd",
            "launch",
            "--npus",
            "1",
            "--state",
            str(state),
            "--config",
            str(config),
            "--keys",
            "sampling",
            "runs.big_20",
            "--",
            sys.executable,
            "-c",
            probe,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "VISIBLE=0" in out.stdout
    assert (state / launch.STAMP).is_file()


# ----------------------------------------------------------------------------
# Commands whose settings come from the experiment when they run (not from dvc.yaml's text).


def test_sample_run_reads_the_run_and_rejects_other_checkpoints(tmp_path, monkeypatch):
    import argparse

    generate = pytest.importorskip("sfd.generate")
    from sfd.workflow import sample_run

    config = write_config(tmp_path, MINI)
    exp = matrix.load(config)
    calls = []
    monkeypatch.setattr(generate, "sample", lambda *a, **k: calls.append((a, k)) or 0)

    def run(name, ckpt, guide_ckpt):
        return sample_run.main(
            argparse.Namespace(
                config=str(config),
                run=name,
                ckpt=Path(ckpt),
                guide_ckpt=guide_ckpt and Path(guide_ckpt),
                latents=tmp_path,
                texture_vae=tmp_path / "vae.pt",
                out=tmp_path / "s",
            )
        )

    assert run("big_40_ag", exp.ema("big", 40), exp.ema("small", 5)) == 0
    (cfg, model, *_), kwargs = calls[0]
    assert model == "big" and kwargs["guidance"] == "autoguidance" and kwargs["cfg_scale"] == 1.5
    assert kwargs["guide_model"] == "small" and kwargs["num_samples"] == 100
    assert cfg["sampling"]["method"] == MINI["sampling"]["method"]
    with pytest.raises(
        ConfigError, match="sampling.pack_seed: `sfd sample-run` reads this key without declaring"
    ):
        cfg["sampling"]["pack_seed"]
    with pytest.raises(
        ConfigError, match=r"runs.big_20 samples outputs/mini/train/big/0000020/ema/0000020.pt"
    ):
        run("big_20", exp.ema("big", 40), None)
    with pytest.raises(ConfigError, match=r"runs.big_40_ag.guidance uses"):
        run("big_40_ag", exp.ema("big", 40), None)


def test_fetch_released_names_the_file_from_the_released_section(tmp_path, monkeypatch):
    import argparse

    import sfd.hub
    from sfd.workflow import fetch_released

    data = {
        **MINI,
        "released": {
            "repo_id": "SFD-Project/SFD",
            "revision": "abc123",
            "checkpoints": {"big": "model_weights/sfd_xl/checkpoints/{step:07d}.pt"},
        },
    }
    config = write_config(tmp_path, data)
    calls = []
    monkeypatch.setattr(sfd.hub, "download", lambda *a, **k: calls.append((a, k)))
    args = argparse.Namespace(config=str(config), model="big", step=400000, out=tmp_path / "x.pt")
    assert fetch_released.main(args) == 0
    assert calls == [
        (
            ("SFD-Project/SFD", "model_weights/sfd_xl/checkpoints/0400000.pt", tmp_path / "x.pt"),
            {"revision": "abc123"},
        )
    ]
    with pytest.raises(ConfigError, match="released.checkpoints.small: not listed"):
        fetch_released.main(
            argparse.Namespace(config=str(config), model="small", step=5, out=tmp_path / "y.pt")
        )
