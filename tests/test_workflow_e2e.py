"""The toy experiment end to end with the local profile, as a user runs it on a fresh clone."""

import csv
import math
import re
import sys

import pytest
from workflow_helpers import run, toy_workspace

pytestmark = pytest.mark.slow
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--profile", "profiles/local"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toy_workspace(tmp_path_factory, "e2e")


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def planned_jobs(work, *targets) -> dict[str, int]:
    """Jobs a dry run would start, by rule."""
    out = run([*SNAKEMAKE, *targets, "-n", "--quiet", "rules"], cwd=work).stdout
    counts = {}
    for line in out.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) not in ("total", "all"):
            counts[m.group(1)] = int(m.group(2))
    return counts


def test_toy_experiment_end_to_end(toy):
    work, seconds = toy
    print(f"toy DAG wall time: {seconds:.0f} s")
    from sfd.workflow.matrix import load

    exp = load(work / "config" / "toy.yaml")
    for name, table in exp.cfg["tables"].items():
        got = rows(work / "results" / f"{name}.csv")
        measured = [r for r in got if r["kind"] == "measured"]
        assert [r["run"] for r in measured] == [row["run"] for row in table["rows"]], name
        for r in measured:
            for metric in table["metrics"]:
                assert math.isfinite(float(r[f"toy_{metric}"])), (name, r["run"], metric)
            assert 0 <= float(r["toy_class_acc"]) <= 1, (name, r["run"])
            assert "ours_fid" not in r and r["metric_label"].startswith("toy-")
        if table["plot"] != "none":
            assert (work / "results" / f"{name}.png").stat().st_size > 5000
    fid = {r["run"]: float(r["toy_fid"]) for r in rows(work / "results" / "table_fid.csv")}
    assert len(set(fid.values())) == len(fid), "every run has its own samples"
    # the default target's runs (replication runs belong to the `replication` target)
    for run_name in {row["run"] for table in exp.cfg["tables"].values() for row in table["rows"]}:
        assert (work / "outputs" / "toy" / "samples" / f"{run_name}.png").is_file()


def test_report_builds(toy):
    work, _ = toy
    run([*SNAKEMAKE, "--report", "report.html"], cwd=work)
    html = (work / "report.html").read_text(errors="replace")
    assert "table_fid" in html and len(html) > 50_000


def test_second_run_is_a_no_op(toy):
    work, _ = toy
    out = run([*SNAKEMAKE, "-n"], cwd=work)
    assert "Nothing to be done" in out.stdout + out.stderr


def test_one_sampling_parameter_reruns_only_its_run(toy):
    work, _ = toy
    config = work / "config" / "toy.yaml"
    text = config.read_text()
    line = (
        "t_800_ag: {model: sfd_t, step: 800, "
        "guidance: {kind: autoguidance, model: ag_p, step: 300, scale: 2.0}}"
    )
    assert line in text
    config.write_text(text.replace(line, line.replace("scale: 2.0", "scale: 2.5")))
    # t_800_ag fills table_fid, table2_system and readme_guidance; nothing trains, no other run samples
    assert planned_jobs(work) == {"sample_run": 1, "pack": 1, "evaluate": 1, "table": 3}
    before = {p.name: p.stat().st_mtime_ns for p in (work / "outputs" / "toy" / "metrics").glob("*.json")}
    run(SNAKEMAKE, cwd=work)
    after = {p.name: p.stat().st_mtime_ns for p in (work / "outputs" / "toy" / "metrics").glob("*.json")}
    assert {name for name in after if after[name] != before[name]} == {"t_800_ag.json"}
    guided = {r["run"]: r for r in rows(work / "results" / "table_fid.csv")}["t_800_ag"]
    assert guided["guidance_scale"] == "2.5"
    assert "Nothing to be done" in run([*SNAKEMAKE, "-n"], cwd=work).stdout


def test_one_training_parameter_retrains_that_model_and_what_uses_it(toy):
    work, _ = toy
    config = work / "config" / "toy.yaml"
    text = config.read_text()
    line = "train: {<<: *toy_train, budgets: [300], keep_steps: [150]}"
    assert line in text
    config.write_text(
        text.replace(line, "train: {<<: *toy_train, budgets: [300], keep_steps: [150], lr: 4.0e-3}")
    )
    jobs = planned_jobs(work)
    # ag_p trains 0->150->300; the runs it guides (4) and its own two runs sample again
    assert jobs["train"] == 2
    assert jobs["sample_run"] == jobs["pack"] == jobs["evaluate"] == 6
    assert not {"make_toy_data", "train_tokenizer", "extract_latents", "latent_stats"} & set(jobs)
