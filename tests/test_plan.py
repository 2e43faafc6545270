"""`sfd plan`: job counts from the DAG, device-hours from model FLOPs and the profile's assumptions."""

from pathlib import Path

import pytest
from workflow_helpers import MINI, write_config

from sfd import cli
from sfd.workflow import matrix, plan
from sfd.workflow.dvc_yaml import snakemake_jobs

ROOT = Path(__file__).resolve().parents[1]
ASSUMED = {
    "device": "cuda",
    "devices_per_node": 2,
    "peak_tflops_bf16": 100,
    "peak_tflops_fp32": 10,
    "mfu": 0.5,
}


def test_device_hours_follow_the_flops_of_each_job(tmp_path):
    config = write_config(tmp_path, MINI)
    exp = matrix.load(config)
    jobs = snakemake_jobs(str(config), ROOT, ["results/table_fid.csv"], ASSUMED)
    rows = {r.rule: r for r in plan.plan(exp, jobs, jobs[0].rule.workflow.config)}
    assert {rule: r.jobs for rule, r in rows.items() if rule in ("train", "sample_run", "evaluate")} == {
        "train": 4,
        "sample_run": 2,
        "evaluate": 2,
    }  # big 0-10-20-40, small 0-5; big_20 and big_40_ag
    costs = plan.Costs(exp)
    big, small = costs.dit("big", True), costs.dit("small", True)
    assert rows["train"].flops == 40 * 16 * big + 5 * 16 * small
    assert rows["train"].hours == pytest.approx(rows["train"].flops / (100e12 * 0.5) / 3600)
    assert rows["train"].devices == 2
    nfe = 9  # euler on a 10-point grid
    forwards = nfe * (
        2 * costs.dit("big", False) + costs.dit("small", False)
    )  # big_20; big_40 + AutoGuidance
    assert rows["sample_run"].flops == 100 * (forwards + 2 * costs.texture_decode)
    assert rows["sample_run"].hours == pytest.approx(rows["sample_run"].flops / (10e12 * 0.5) / 3600)
    assert not rows["evaluate"].costed and rows["evaluate"].hours == 0.0
    assert costs.texture_decode > 0 and costs.semvae_train > 3 * costs.semvae_encode > 0


def test_unknown_peak_or_nfe_is_reported_not_guessed(tmp_path):
    config = write_config(tmp_path, {**MINI, "sampling": {**MINI["sampling"], "method": "dopri5"}})
    exp = matrix.load(config)
    assert plan.sampler_nfe(exp.cfg["sampling"]) is None
    jobs = snakemake_jobs(str(config), ROOT, ["results/table_fid.csv"], {**ASSUMED, "peak_tflops_bf16": None})
    settings = jobs[0].rule.workflow.config
    rows = plan.plan(exp, jobs, settings)
    assert {r.rule: r.hours for r in rows if r.rule in ("train", "sample_run")} == {
        "train": None,
        "sample_run": None,
    }
    text = plan.report(rows)
    assert text.splitlines()[-1].split()[-1] == "?"
    assert "unset (peak_tflops_bf16)" in plan.assumptions(exp, settings)
    assert "set sampling.expected_nfe" in plan.assumptions(exp, settings)


def test_plan_of_the_paper_headline_through_the_slurm_profile(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert plan.profile_config(ROOT / "profiles" / "slurm-gpu")["peak_tflops_bf16"] == 989
    assert (
        cli.main(
            [
                "plan",
                "--config",
                "config/paper.yaml",
                "--profile",
                "profiles/slurm-gpu",
                "--offline",
                "results/table_fid.csv",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert lines["train"][1:3] == ["16", "8"] and lines["sample_run"][1] == "10"
    assert float(lines["total"][-1].replace(",", "")) > float(lines["train"][-1].replace(",", "")) > 0
    assert "fetch_released" not in lines  # the headline trains everything itself
    assert "hf://timm/vit_base_patch14_reg4_dinov2.lvd142m/model.safetensors" in out
