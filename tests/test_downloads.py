"""Downloads happen only in local rules, compute jobs run with the Hub offline, and `sfd downloads`
names exactly the files the paper DAG's fetch rules write (dry DAG, no job runs)."""

from pathlib import Path

import pytest
import yaml

from sfd.workflow import matrix
from sfd.workflow.downloads import planned
from sfd.workflow.dvc_yaml import snakemake_jobs

ROOT = Path(__file__).resolve().parents[1]
DOWNLOADERS = ("sfd fetch-", "sfd latent-stats --config config/paper.yaml --released")


@pytest.fixture(scope="module")
def paper_jobs():
    return snakemake_jobs("config/paper.yaml", ROOT)


def test_only_local_rules_download(paper_jobs):
    fetching = {job.rule.name for job in paper_jobs if any(d in job.shellcmd for d in DOWNLOADERS)}
    assert fetching == {
        "fetch_imagenet",
        "fetch_tokenizer",
        "fetch_encoder",
        "fetch_eval_assets",
        "fetch_released_stats",
        "fetch_released",
    }
    assert all(job.is_local for job in paper_jobs if job.rule.name in fetching)


def test_encoder_weights_are_an_input_file_of_the_compute_jobs(paper_jobs):
    weights = "outputs/paper/semantic/encoder.safetensors"
    (fetch,) = [job for job in paper_jobs if job.rule.name == "fetch_encoder"]
    assert list(fetch.output) == [weights]
    assert "--key semantic_encoder.weights" in fetch.shellcmd
    for rule in ("extract_features", "extract_latents"):
        (job,) = [job for job in paper_jobs if job.rule.name == rule]
        assert weights in job.input and f"--encoder {weights}" in job.shellcmd


def test_listed_downloads_are_the_fetch_jobs_outputs(paper_jobs):
    exp = matrix.load("config/paper.yaml")
    listed = {(d.rule, d.out) for d in planned(exp)}
    in_dag = {
        (job.rule.name, out) for job in paper_jobs if job.rule.name.startswith("fetch_") for out in job.output
    }
    assert in_dag <= listed
    assert listed - in_dag == {("fetch_imagenet", "outputs/paper/data/val")}  # read only by the toy detector
    configured = exp.cfg["download_sizes"]
    assert set(configured) == {d.source for d in planned(exp)}  # every file sized offline, no stale keys


@pytest.mark.parametrize("profile", ["slurm-gpu", "slurm-npu"])
def test_cluster_jobs_run_with_the_hub_offline(profile):
    settings = yaml.safe_load((ROOT / "profiles" / profile / "config.v8+.yaml").read_text())
    assert settings["precommand"] == "export HF_HUB_OFFLINE=1"


def test_pretrained_encoder_without_weights_fails_before_the_dag(tmp_path):
    import subprocess
    import sys

    config = tmp_path / "exp.yaml"
    raw = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    raw["semantic_encoder"]["weights"] = None
    config.write_text(yaml.safe_dump(raw))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(ROOT / "Snakefile"),
            "-d",
            str(tmp_path),
            "-n",
            "--config",
            f"experiment={config}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        out.returncode != 0
        and "semantic_encoder.weights: null, but pretrained is true" in out.stderr + out.stdout
    )
