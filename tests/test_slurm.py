"""The SLURM profile against a real SLURM (`.ci/slurm-up.sh`: a single-node cluster on localhost).

A cut of the toy DAG (the AutoGuidance model's first 150 steps, then sample -> pack -> evaluate of
run ag_p_150) goes through sbatch with profiles/slurm-gpu, its resources scaled down to the CI node
and its device set to the CPU. The training job is sent SIGUSR1 mid-run, as SLURM's
`--signal=USR1@600` does before the walltime: it checkpoints and fails, the profile's retry
resubmits it, and it resumes to the very weights of the uninterrupted local run.
"""

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from workflow_helpers import ci_profile, run, slurm_is_up, tool_env, toy_workspace

pytestmark = pytest.mark.slow


def squeue_jobs(work) -> dict[str, str]:
    """Job ids by comment (the plugin's rule_<name>_wildcards) of the jobs submitted from `work`:
    other tests (the rehearsal) may have jobs queued at the same time."""
    out = subprocess.run(["squeue", "-h", "-o", "%i|%k|%Z"], capture_output=True, text=True).stdout
    jobs = (line.split("|") for line in out.splitlines() if line.count("|") == 2)
    return {comment: job for job, comment, cwd in jobs if Path(cwd).resolve() == work.resolve()}


def steps_done(log_text: str) -> int:
    """The last step count the training bar wrote ("train ag_p:  12%|...| 18/150 [")."""
    counts = re.findall(r"(\d+)/150 \[", log_text)
    return int(counts[-1]) if counts else 0


def state_dict(path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)["ema"]


@pytest.mark.skipif(not slurm_is_up(), reason="no SLURM here (as root: .ci/slurm-up.sh)")
def test_toy_cut_through_sbatch_resumes_after_the_walltime_signal(tmp_path_factory):
    work, _ = toy_workspace(tmp_path_factory, "slurm")
    profile = ci_profile(work.parent / "profile")
    ema = work / "outputs/toy/train/ag_p/0000150/ema/0000150.pt"
    uninterrupted = state_dict(ema)
    shutil.rmtree(work / "outputs/toy/train/ag_p/0000150")  # the forced rerun starts from scratch
    log = work / "logs/toy/train/ag_p_0000150.log"
    log.unlink()  # the local run's log would say "steps 0 -> 150" before this job started
    metrics = work / "outputs/toy/metrics/ag_p_150.json"
    before = metrics.stat().st_mtime_ns

    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "outputs/toy/metrics/ag_p_150.json",
        "--profile",
        str(profile),
        "--forcerun",
        "train",
    ]
    proc = subprocess.Popen(
        cmd, cwd=work, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    signalled = None
    deadline = time.monotonic() + 900
    while proc.poll() is None and time.monotonic() < deadline:
        train_job = next((j for c, j in squeue_jobs(work).items() if c.startswith("rule_train")), None)
        if signalled is None and train_job and log.is_file() and steps_done(log.read_text()) >= 10:
            subprocess.run(["scancel", "--signal=USR1", train_job], check=True)
            signalled = train_job
        time.sleep(1)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, output[-5000:]
    assert signalled, "the training job was never seen running"

    submitted = [
        line.split("SLURM jobid")[1].split()[0] for line in output.splitlines() if "SLURM jobid" in line
    ]
    assert len(submitted) == 5, output[-3000:]  # train, train again, sample, pack, evaluate
    states = run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(submitted)], cwd=work).stdout
    states = dict(line.split("|") for line in states.split())
    assert states.pop(signalled) == "FAILED"
    assert set(states.values()) == {"COMPLETED"}, states

    assert "resumed from" in log.read_text()
    resumed = state_dict(ema)
    assert resumed.keys() == uninterrupted.keys()
    assert all((resumed[k] == uninterrupted[k]).all() for k in resumed)
    assert metrics.stat().st_mtime_ns > before
    assert any((work / ".snakemake" / "slurm_logs").rglob("*.log"))
