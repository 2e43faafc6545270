"""The rerun promise, checked on the real DAGs: changing a key a command declares marks exactly the
jobs that read it and their descendants in `snakemake -n`; a key no command reads marks nothing;
`dvc status` flags the same stages. Outputs are empty files recorded by `snakemake --touch`, so
nothing trains: only the scheduler's decisions are under test."""

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sfd import reads
from sfd.config import ConfigError
from sfd.workflow import dvc_yaml, matrix

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# Keys whose change reshapes the DAG (which jobs exist), not the values a job reads.
STRUCTURAL = ("step", "budgets", "keep_steps", "model", "source", "kind", "pretrained", "name", "plot", "run")


def _workspace(tmp_path: Path, experiment: str) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(ROOT / "Snakefile", work)
    shutil.copytree(ROOT / "workflow", work / "workflow")
    (work / "config").mkdir()
    shutil.copy(ROOT / experiment, work / experiment)
    (work / "params.yaml").write_text(f"experiment: {experiment}\n")
    return work


def _snakemake(work: Path, experiment: str, *args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", "--config", f"experiment={experiment}", *args]
    out = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


class Dag:
    """Jobs of the experiment (first output, declared keys, inputs), with every output present
    as an empty file and recorded by Snakemake, so `snakemake -n` schedules nothing."""

    def __init__(self, tmp_path: Path, experiment: str):
        self.experiment, self.work = experiment, _workspace(tmp_path, experiment)
        self.jobs = {}
        for job in dvc_yaml.snakemake_jobs(experiment, self.work):
            outputs = list(map(str, job.output))
            self.jobs[outputs[0]] = {
                "rule": job.rule.name,
                "stage": dvc_yaml.stage_name(job),
                "keys": list(job.params.cfg),
                "inputs": set(map(str, job.input)),
                "outputs": outputs,
                "directory": job.output[0].is_directory,
            }
        for job in self.jobs.values():
            for out in job["outputs"]:
                path = self.work / out
                if job["directory"] and out == job["outputs"][0]:
                    path.mkdir(parents=True, exist_ok=True)
                else:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.touch()
        _snakemake(self.work, experiment, "--touch", "--forceall")
        assert self.scheduled() == set(), "a fresh --touch must leave nothing to do"

    def scheduled(self) -> set[str]:
        out = _snakemake(self.work, self.experiment, "-n")
        found = set()
        for block in re.split(r"\n(?=(?:local)?rule \w+:)", out.stdout):
            m = re.search(r"^\s+output: ([^,\s]+)", block, re.M)
            if block.startswith(("rule", "localrule")) and m:
                found.add(m.group(1))
        return found

    def expected(self, key: str) -> set[str]:
        """Jobs declaring `key` (or a key above or below it), and everything downstream of them."""
        related = lambda k: k == key or key.startswith(k + ".") or k.startswith(key + ".")  # noqa: E731
        marked = {name for name, job in self.jobs.items() if any(map(related, job["keys"]))}
        grown = True
        while grown:
            produced = {out for name in marked for out in self.jobs[name]["outputs"]}
            more = {name for name, job in self.jobs.items() if job["inputs"] & produced} - marked
            marked |= more
            grown = bool(more)
        return marked


def _perturbed(raw: dict, key: str, value):
    """The experiment with `key` set to a different valid value, or None if no simple change fits."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value is None:
        return None
    if any(part in STRUCTURAL for part in key.split(".")):
        return None
    data = copy.deepcopy(raw)
    node = data
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value + 1 if isinstance(value, int) else value / 2
    return data


def _leaves(value, prefix):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, f"{prefix}.{k}")
    else:
        yield prefix, value


def _one_key_per_rule(dag: Dag, exp: matrix.Experiment, raw: dict, path: Path) -> dict[str, tuple[str, dict]]:
    """For each rule, the first numeric leaf under its declared keys whose change still validates."""
    chosen = {}
    for name, job in sorted(dag.jobs.items()):
        rule = job["rule"]
        if rule in chosen:
            continue
        for key in job["keys"]:
            for leaf, value in _leaves(reads.get(exp.cfg, key), key):
                data = _perturbed(raw, leaf, value)
                if data is None:
                    continue
                path.write_text(yaml.safe_dump(data, sort_keys=False))
                try:
                    matrix.load(path)
                except ConfigError:
                    continue
                chosen.setdefault(rule, (leaf, data))
                break
            if rule in chosen:
                break
    return chosen


@pytest.mark.parametrize("experiment", ["config/toy.yaml", "config/paper.yaml"])
def test_a_changed_key_reruns_its_readers_and_their_descendants(tmp_path, experiment):
    dag = Dag(tmp_path, experiment)
    config = dag.work / experiment
    raw = yaml.safe_load(config.read_text())
    exp = matrix.load(config)
    probe = tmp_path / "probe.yaml"
    chosen = _one_key_per_rule(dag, exp, raw, probe)
    # drifted before the declarations: image size and texture VAE arch re-extract the latents; the
    # statistics sample size only recomputes the statistics
    chosen["image_size"] = (
        "data.image_size",
        _perturbed(raw, "data.image_size", exp.cfg["data"]["image_size"]),
    )
    stats = _perturbed(raw, "latents.stats_samples", exp.cfg["latents"]["stats_samples"])
    chosen["stats_samples"] = ("latents.stats_samples", stats)
    seen = set()
    for key, data in {leaf: data for leaf, data in chosen.values()}.items():
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        expected, got = dag.expected(key), dag.scheduled()
        assert got == expected, (
            f"{key}: scheduled {sorted(got - expected)} too many, {sorted(expected - got)} missing"
        )
        assert expected, key
        seen |= expected
    latents = next(n for n in dag.jobs if n.endswith("latents/index.json"))
    assert latents not in dag.expected("latents.stats_samples")
    assert latents in dag.expected("data.image_size")
    # every job is marked by some probe, except downloads (their keys are repository names and paths)
    assert {n for n, job in dag.jobs.items() if not job["rule"].startswith("fetch_")} <= seen

    # the same values in another key order: nothing reruns
    config.write_text(yaml.safe_dump(raw, sort_keys=True))
    assert dag.scheduled() == set()
    # keys no command reads for its output: nothing reruns
    for key in ("latents.num_workers", "semantic_encoder.num_workers"):
        data = _perturbed(raw, key, reads.get(exp.cfg, key))
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        assert dag.scheduled() == set(), key


def test_dvc_status_flags_the_stages_that_declare_the_key(tmp_path):
    experiment = "config/toy.yaml"
    dag = Dag(tmp_path, experiment)
    work, config = dag.work, dag.work / experiment
    env = {"DVC_NO_ANALYTICS": "1"}

    def dvc(*args):
        out = subprocess.run(
            [sys.executable, "-m", "dvc", *args],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=300,
            env={**__import__("os").environ, **env},
        )
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    dvc("init", "--no-scm", "-q")
    (work / "dvc.yaml").write_text(dvc_yaml.generate(work)["dvc.yaml"])
    dvc("commit", "-f", "-q")
    assert "up to date" in dvc("status")
    raw = yaml.safe_load(config.read_text())
    for key in ("latents.stats_samples", "data.image_size"):
        value = reads.get(raw, key)
        config.write_text(yaml.safe_dump(_perturbed(raw, key, value), sort_keys=False))
        status = yaml.safe_load(dvc("status", "--json") or "{}")
        flagged = {stage for stage, changes in status.items() if key in str(changes)}  # under "changed deps"
        readers = {job["stage"] for job in dag.jobs.values() if key in job["keys"]}
        assert flagged == readers, key
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
