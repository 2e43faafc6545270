"""A small experiment for workflow tests: two chained models, an AutoGuidance model, a Δt
variant and three tables, so every rule of the DAG appears without any heavy job."""

from pathlib import Path

import yaml

MINI = {
    "name": "mini",
    "device": "auto",
    "evaluation": {"detector": "toy", "num_samples": 100, "reference_size": 100},
    "sampling": {"num_samples": 100, "batch_size": 50, "shard_size": 100, "method": "euler", "num_steps": 10},
    "models": {
        "big": {
            "model": {
                "model_type": "LightningDiT-T/1",
                "in_chans": 8,
                "semantic_chans": 4,
                "semfirst_delta_t": 0.3,
            },
            "train": {"budgets": [20, 40], "keep_steps": [10], "global_batch_size": 16},
        },
        "small": {
            "model": {
                "model_type": "LightningDiT-P/1",
                "in_chans": 8,
                "semantic_chans": 4,
                "semfirst_delta_t": 0.3,
            },
            "train": {"budgets": [10], "keep_steps": [5], "global_batch_size": 16},
        },
        "big_dt0": {
            "model": {"model_type": "LightningDiT-T/1", "in_chans": 8, "semantic_chans": 4},
            "train": {"budgets": [20], "global_batch_size": 16},
        },
    },
    "runs": {
        "big_20": {"model": "big", "step": 20},
        "big_40": {"model": "big", "step": 40},
        "big_10": {"model": "big", "step": 10},
        "big_dt0_20": {"model": "big_dt0", "step": 20},
        "big_40_ag": {
            "model": "big",
            "step": 40,
            "guidance": {"kind": "autoguidance", "model": "small", "step": 5, "scale": 1.5},
        },
    },
    "tables": {
        "table_fid": {
            "paper": "readme",
            "rows": [
                {"run": "big_20", "paper_row": "readme.xl_80ep"},
                {"run": "big_40_ag", "paper_row": "readme.xl_800ep_ag"},
            ],
        },
        "fig_convergence": {
            "paper": "fig_convergence",
            "metrics": ["fid"],
            "plot": "step",
            "rows": [{"run": "big_10"}, {"run": "big_20"}, {"run": "big_40"}],
        },
        "fig_fid_vs_delta_t": {
            "paper": "fig_delta_t",
            "metrics": ["fid"],
            "plot": "delta_t",
            "rows": [
                {"run": "big_dt0_20", "paper_row": "fig_delta_t.dt_0_0"},
                {"run": "big_20", "paper_row": "fig_delta_t.dt_0_3"},
            ],
        },
    },
}


# A replication section for MINI: two seeds of three conditions, two claims.
REPLICATION = {
    "seeds": [1, 2],
    "conditions": {
        "early": {"model": "big", "step": 20},
        "late": {"model": "big", "step": 40},
        "late_ag": {
            "model": "big",
            "step": 40,
            "guidance": {"kind": "autoguidance", "model": "small", "step": 5, "scale": 1.5},
        },
    },
    "claims": {
        "budget": {
            "title": "Budget",
            "paper": "longer is better",
            "better": "late",
            "than": "early",
            "x": "step",
            "curves": {"SFD": ["early", "late"], "guided": ["late_ag"]},
        },
        "guidance": {
            "title": "Guidance",
            "paper": "AG helps",
            "better": "late_ag",
            "than": "late",
            "curves": {"T": ["late", "late_ag"]},
        },
    },
}


def write_config(tmp_path, data, name="exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ----------------------------------------------------------------------------
# The toy experiment, run once per test session by the slow tests (the e2e, DVC and SLURM ones).

import functools  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def tool_env() -> dict:
    """The environment jobs run in: this interpreter's bin first (sfd, snakemake, dvc)."""
    env = dict(os.environ, DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def run(cmd, cwd, timeout=1800, check=True) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} failed ({out.returncode}):\n"
            f"{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
        )
    return out


def fresh_clone(dest: Path) -> Path:
    """The working tree as a new git repository (tracked and untracked-but-not-ignored files), i.e.
    what `git clone` of this commit gives, including work not yet committed."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=ci", "-c", "user.email=ci@localhost", "commit", "-qm", "clone"],
    ):
        subprocess.run(cmd, cwd=dest, check=True, capture_output=True)
    return dest


@functools.cache
def _toy_run(base: Path) -> tuple[Path, float]:
    work = fresh_clone(base / "toy-run")
    start = time.monotonic()
    run([sys.executable, "-m", "snakemake", "--profile", "profiles/local"], cwd=work, timeout=3600)
    return work, time.monotonic() - start


def ran_stages(dvc_output: str) -> set[str]:
    """The stages a `dvc repro` output says it ran."""
    return set(re.findall(r"Running stage '([^']+)'", dvc_output))


def toy_workspace(tmp_path_factory, name: str) -> tuple[Path, float]:
    """A private copy of a finished `snakemake --profile profiles/local` toy run (the run itself
    happens once per test process; tests/conftest.py keeps every module that calls this on one
    pytest-xdist worker) and the run's wall time in seconds."""
    done, seconds = _toy_run(tmp_path_factory.getbasetemp())
    copy = tmp_path_factory.mktemp(name) / "repo"
    shutil.copytree(done, copy, symlinks=True)
    return copy, seconds


# ----------------------------------------------------------------------------
# The SLURM profile on the CI node (.ci/slurm-up.sh).


def slurm_is_up() -> bool:
    if shutil.which("sbatch") is None:
        return False
    return subprocess.run(["timeout", "5", "sinfo", "-h"], capture_output=True).returncode == 0


def ci_profile(dest, experiment="config/toy.yaml"):
    """profiles/slurm-gpu with the CI node's sizes, the experiment and CPU devices."""
    profile = yaml.safe_load((ROOT / "profiles" / "slurm-gpu" / "config.v8+.yaml").read_text())
    profile.update(
        {
            # more submitted than the node runs: SLURM starts a pending job the moment one ends,
            # while Snakemake notices ends only at its status checks (the plugin backs off to 180 s)
            "jobs": 4,
            "latency-wait": 5,
            "slurm-init-seconds-before-status-checks": 5,
            "config": [f"experiment={experiment}", "device=cpu"],
        }
    )
    profile["default-resources"].update(mem_mb=1500, cpus_per_task=1)
    for resources in profile["set-resources"].values():
        resources.update(mem_mb=3000)
        if "cpus_per_task" in resources:
            resources["cpus_per_task"] = 1
    # one thread per job as in the local run: CPU results are bitwise reproducible per thread count
    profile["set-threads"] = {rule: 1 for rule in profile["set-threads"]}
    dest.mkdir()
    (dest / "config.v8+.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return dest
