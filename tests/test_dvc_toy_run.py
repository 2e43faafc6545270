"""DVC on the finished toy run: the same DAG, the same commands, the same reruns as Snakemake's.
(Its own module: tests/conftest.py runs every module that copies the toy run on one worker.)"""

import sys

import pytest
from workflow_helpers import ran_stages, run, toy_workspace

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    work, _ = toy_workspace(tmp_path_factory, "dvc")
    run(["dvc", "commit", "-f", "-q", "dvc.yaml"], cwd=work)  # Snakemake's outputs, no rerun
    return work


def test_dvc_repro_after_snakemake_has_nothing_to_do(toy):
    assert "up to date" in run(["dvc", "status", "dvc.yaml"], cwd=toy).stdout
    assert ran_stages(run(["dvc", "repro"], cwd=toy).stdout) == set()


def test_dvc_reruns_exactly_the_stages_below_a_changed_parameter(toy):
    config = toy / "config" / "toy.yaml"
    line = (
        "p_500_ag: {model: sfd_p, step: 500, "
        "guidance: {kind: autoguidance, model: ag_p, step: 150, scale: 2.0}}"
    )
    text = config.read_text()
    assert line in text
    config.write_text(text.replace(line, line.replace("scale: 2.0", "scale: 2.5")))
    out = run(["dvc", "repro"], cwd=toy).stdout
    assert ran_stages(out) == {
        "sample_run-p_500_ag",
        "pack-p_500_ag",
        "evaluate-p_500_ag",
        "table-table_fid",
        "table-table2_system",
        "table-readme_guidance",
    }
    # one stage by name: a deleted output comes back from DVC's cache; --force reruns just that stage
    figure = toy / "results" / "fig_convergence.png"
    figure.unlink()
    out = run(["dvc", "repro", "plot-fig_convergence"], cwd=toy).stdout
    assert ran_stages(out) <= {"plot-fig_convergence"}
    assert figure.stat().st_size > 5000
    forced = run(["dvc", "repro", "--force", "--single-item", "plot-fig_convergence"], cwd=toy).stdout
    assert ran_stages(forced) == {"plot-fig_convergence"}
    # Snakemake takes DVC's outputs as they are once it has touched them
    run([sys.executable, "-m", "snakemake", "--profile", "profiles/local", "--touch"], cwd=toy)
    out = run([sys.executable, "-m", "snakemake", "--profile", "profiles/local", "-n"], cwd=toy)
    assert "Nothing to be done" in out.stdout


def test_push_then_pull_into_a_fresh_clone_needs_no_training_or_sampling(toy, tmp_path):
    run(["git", "add", "dvc.lock", "config/toy.yaml"], cwd=toy)
    run(["git", "-c", "user.name=ci", "-c", "user.email=ci@localhost", "commit", "-qm", "results"], cwd=toy)
    run(["dvc", "push", "-q"], cwd=toy)
    clone = toy.parent / "clone"  # beside the repo: the default remote ../sfd-dvc-remote is shared
    run(["git", "clone", "-q", str(toy), str(clone)], cwd=toy.parent)
    assert not (clone / "results" / "table_fid.csv").exists()
    run(["dvc", "pull", "-q", "dvc.yaml"], cwd=clone)  # the replication never ran
    assert (clone / "results" / "table_fid.csv").read_bytes() == (
        toy / "results" / "table_fid.csv"
    ).read_bytes()
    snakemake = [sys.executable, "-m", "snakemake", "--profile", "profiles/local"]
    run([*snakemake, "--touch"], cwd=clone)
    out = run([*snakemake, "results/table_fid.csv", "-n"], cwd=clone)
    assert "Nothing to be done" in out.stdout, out.stdout[-3000:]
