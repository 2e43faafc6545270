"""The miniature replication: seeds expanded into models and runs, the interval and verdict maths,
`sfd replication-report`, and (slow) a reduced `snakemake replication` on the toy run."""

import copy
import csv
import json
import math
import re
import subprocess
import sys

import pytest
import yaml
from workflow_helpers import MINI, REPLICATION, run, toy_workspace, write_config

from sfd.config import ConfigError
from sfd.workflow import matrix, replication


def mini(tmp_path, **changes):
    data = copy.deepcopy(MINI)
    data["replication"] = {**copy.deepcopy(REPLICATION), **changes}
    return write_config(tmp_path, data)


def test_seeds_become_models_and_runs(tmp_path):
    exp = matrix.load(mini(tmp_path))
    assert exp.replication_runs() == [
        "early_s1",
        "early_s2",
        "late_s1",
        "late_s2",
        "late_ag_s1",
        "late_ag_s2",
    ]
    big, small = exp.cfg["models"]["big"], exp.cfg["models"]["small"]
    for seed in (1, 2):
        replica = exp.cfg["models"][f"big_s{seed}"]
        assert replica["model"] == big["model"] and replica["train"]["seed_offset"] == seed
        assert {k: v for k, v in replica["train"].items() if k != "seed_offset"} == {
            k: v for k, v in big["train"].items() if k != "seed_offset"
        }
        assert exp.cfg["models"][f"small_s{seed}"]["model"] == small["model"]
        run = exp.cfg["runs"][f"late_ag_s{seed}"]
        assert (run["model"], run["step"], run["seed"]) == (
            f"big_s{seed}",
            40,
            seed,
        )  # sampling.seed 0 + seed
        assert run["guidance"]["model"] == f"small_s{seed}" and run["guidance"]["scale"] == 1.5
    assert "seed" not in exp.cfg["runs"]["big_20"]  # runs of the file keep sampling.seed
    assert exp.export_steps("big_s1") == [10, 20, 40]  # budgets and keep_steps of big


def test_replicate_keys_map_back_to_the_file(tmp_path):
    cfg = matrix.load(mini(tmp_path)).cfg
    assert matrix.origin_keys(cfg, "models.big_s2.model") == ["models.big.model", "replication.seeds"]
    assert matrix.origin_keys(cfg, "runs.late_ag_s1") == [
        "replication.conditions.late_ag",
        "replication.seeds",
        "sampling.seed",
    ]
    assert matrix.origin_keys(cfg, "models.big.train.lr") == ["models.big.train.lr"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"seeds": [1]}, "replication.seeds: an interval over seeds needs at least 2 seeds"),
        (
            {"conditions": {"x": {"model": "nope", "step": 20}}},
            "replication.conditions.x.model: 'nope' is not a key",
        ),
        (
            {"conditions": {"x": {"model": "big", "step": 30}}},
            "replication.conditions.x.model: step 30 of 'big'",
        ),
        (
            {
                "claims": {
                    "c": {
                        "title": "t",
                        "paper": "p",
                        "better": "late",
                        "than": "gone",
                        "curves": {"a": ["late"]},
                    }
                }
            },
            "replication.claims.c.than: 'gone' is not a key of replication.conditions",
        ),
    ],
)
def test_bad_replication_sections_name_the_key(tmp_path, change, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        matrix.load(mini(tmp_path, **change))


def test_replicate_names_never_overwrite(tmp_path):
    data = copy.deepcopy(MINI)
    data["replication"] = copy.deepcopy(REPLICATION)
    data["runs"]["early_s1"] = {"model": "big", "step": 20}
    with pytest.raises(ConfigError, match="runs.early_s1: the replication section names a replicate so"):
        matrix.load(write_config(tmp_path, data))


def test_interval_and_verdict():
    mean, low, high = replication.interval([1.0, 2.0, 3.0], 0.95)
    assert mean == 2.0 and high - mean == pytest.approx(4.302653 / math.sqrt(3))  # t(0.975, 2) * sd / sqrt(n)
    assert math.isnan(replication.interval([1.0], 0.95)[1])
    assert replication.verdict(0.1, 2.0) == "replicates"
    assert replication.verdict(-2.0, -0.1).startswith("does not replicate")
    assert replication.verdict(-1.0, 1.0) == "inconclusive"


def write_metrics(tmp_path, exp, fid):
    """Metrics JSONs as `sfd evaluate` writes them, toy-FID from `fid(condition, seed)`."""
    paths = []
    for name in exp.cfg["replication"]["conditions"]:
        for seed in exp.cfg["replication"]["seeds"]:
            path = tmp_path / "metrics" / f"{matrix.replicate(name, seed)}.json"
            path.parent.mkdir(exist_ok=True)
            path.write_text(
                json.dumps(
                    {
                        "fid": fid(name, seed),
                        "class_acc": 0.1 * seed,
                        "detector_kind": "toy",
                        "metric_label": "toy-FID",
                    }
                )
            )
            paths.append(str(path))
    return paths


def test_report_command_writes_csv_figures_and_verdicts(tmp_path):
    config = mini(tmp_path)
    exp = matrix.load(config)
    base = {"early": 100.0, "late": 80.0, "late_ag": 81.0}
    paths = write_metrics(tmp_path, exp, lambda name, seed: base[name] + seed)
    out = tmp_path / "results"
    cmd = [
        sys.executable,
        "-m",
        "sfd",
        "replication-report",
        "--config",
        str(config),
        "--csv",
        str(out / "r.csv"),
        "--report",
        str(out / "r.md"),
        "--figures",
        str(out),
        *paths,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out / "r.csv") as f:
        rows = {r["condition"]: r for r in csv.DictReader(f)}
    assert list(rows["early"]) == list(replication.FIELDS)
    assert float(rows["early"]["fid_mean"]) == 101.5 and rows["early"]["fid_values"] == "101.0 102.0"
    assert (
        float(rows["late"]["class_acc_mean"]) == pytest.approx(0.15)
        and rows["late_ag"]["guidance"] == "autoguidance"
    )
    text = (out / "r.md").read_text()
    # the same +seed on both sides: every paired difference is exact, its interval has no width
    assert "## Budget" in text and "Verdict: **replicates**" in text
    assert "## Guidance" in text and "Verdict: **does not replicate (the opposite holds)**" in text
    assert "speed-up 1.00x" in text and "Seeds 1, 2" in text and "](replication_budget.png)" in text
    for claim in ("budget", "guidance"):
        assert (out / f"replication_{claim}.png").stat().st_size > 5000
    fail = subprocess.run(cmd[:-1], capture_output=True, text=True)
    assert fail.returncode == 2 and "no metrics given for runs ['late_ag_s2']" in fail.stderr


# ----------------------------------------------------------------------------
# Slow: a reduced replication (2 seeds, 2 conditions, the smallest model, 200 samples) on the
# finished toy run, so only the replicates train, sample and evaluate.

REDUCED = {
    "seeds": [1, 2],
    "conditions": {
        "ag_150": {"model": "ag_p", "step": 150, "num_samples": 200},
        "ag_300": {"model": "ag_p", "step": 300, "num_samples": 200},
    },
    "claims": {
        "budget": {
            "title": "Budget",
            "paper": "longer is better",
            "better": "ag_300",
            "than": "ag_150",
            "x": "step",
            "curves": {"P": ["ag_150", "ag_300"]},
        }
    },
}


@pytest.mark.slow
def test_reduced_replication_builds_with_every_field(tmp_path_factory):
    work, _ = toy_workspace(tmp_path_factory, "replication")
    config = work / "config" / "toy.yaml"
    data = yaml.safe_load(config.read_text())
    data["replication"] = REDUCED
    data["evaluation"]["num_samples"] = 200  # evaluate jobs of the replicates only
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    snakemake = [sys.executable, "-m", "snakemake", "--profile", "profiles/local"]
    plan = run([*snakemake, "-n", "replication"], cwd=work).stdout
    for job, count in (("train", 4), ("sample_run", 4), ("evaluate", 4), ("replication_report", 1)):
        assert any(line.split() == [job, str(count)] for line in plan.splitlines()), plan[-3000:]
    assert "train_detector" not in plan and "extract_latents" not in plan  # shared with the toy run
    run([*snakemake, "replication"], cwd=work)

    with open(work / "results" / "replication.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["condition"] for r in rows] == ["ag_150", "ag_300"]
    for row in rows:
        assert list(row) == list(replication.FIELDS) and row["seeds"] == "1 2" and row["n"] == "2"
        for metric in replication.METRICS:
            values = [float(v) for v in row[f"{metric}_values"].split()]
            assert len(values) == 2, (metric, values)
            low, mean, high = (float(row[f"{metric}_{k}"]) for k in ("ci_low", "mean", "ci_high"))
            assert low <= mean <= high
        assert len(set(row["fid_values"].split())) == 2  # the seeds differ (class accuracy may tie)
        assert all(0 <= float(v) <= 1 for v in row["class_acc_values"].split())
    text = (work / "results" / "replication.md").read_text()
    assert (
        "## Budget" in text and "- Paper: longer is better" in text and "- Measured: ag_300 toy-FID" in text
    )
    assert "- Difference d (toy-FID, > 0 favours ag_300):" in text and "## All conditions" in text
    assert any(f"Verdict: **{v}**" in text for v in replication.VERDICTS)
    assert (work / "results" / "replication_budget.png").stat().st_size > 5000
    assert "Nothing to be done" in run([*snakemake, "-n", "replication"], cwd=work).stdout
