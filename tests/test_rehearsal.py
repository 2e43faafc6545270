"""The paper experiment in miniature (config/paper-smoke.yaml) against a stand-in Hub on 127.0.0.1:
every fetch rule downloads its file, under the paper's repo ids and file names and in the released
layouts, on the submitting side; then compute jobs run with the Hub offline and nothing to reach
(the server is gone) and use what was fetched. Where SLURM is up (CI as root: .ci/slurm-up.sh) it
all goes through profiles/slurm-gpu (fake GPUs, CPU devices), whose precommand takes the Hub
offline in every job; elsewhere through local cores.

The compute part builds the two targets a user submits first, `released` and
`results/table_fid.csv` (76 SLURM jobs; 602 s through the CI's 2-CPU SLURM node beside the toy
run). `SFD_REHEARSAL=cut` builds instead a cut that still touches every kind of job (108 s alone):
a released AutoGuidance run is sampled, packed and evaluated with the fetched Inception graph and
reference batch, and the chain features -> Semantic VAE -> latents -> statistics -> training
reaches the AutoGuidance model's first export."""

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from stand_in_hub import FakeHub, publish_experiment
from workflow_helpers import ROOT, ci_profile, slurm_is_up, tool_env

from sfd.workflow import matrix
from sfd.workflow.downloads import planned

pytestmark = pytest.mark.slow


def snakemake(work: Path, config: Path, targets, env: dict) -> float:
    cmd = [sys.executable, "-m", "snakemake", *targets, "-s", str(ROOT / "Snakefile"), "-d", str(work)]
    if slurm_is_up():
        profile = work.parent / "profile"
        if not profile.is_dir():
            ci_profile(profile, experiment=str(config))
        cmd += ["--profile", str(profile)]
    else:
        cmd += ["--cores", "2", "--config", f"experiment={config}", "device=cpu"]
    start = time.monotonic()
    out = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, out.stderr[-6000:]
    return time.monotonic() - start


def test_smoke_fetches_on_the_login_side_then_computes_offline(tmp_path):
    hub = FakeHub()
    raw = yaml.safe_load((ROOT / "config" / "paper-smoke.yaml").read_text())
    for asset in raw["evaluation"]["assets"].values():  # ADM's host -> the stand-in, same paths
        asset["url"] = hub.url + urlparse(asset["url"]).path
    config = tmp_path / "paper-smoke.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    exp = matrix.load(config)
    publish_experiment(hub, exp)
    work = tmp_path / "work"
    work.mkdir()

    online = {k: v for k, v in tool_env().items() if k != "HF_HUB_OFFLINE"}
    fetched = sorted({d.out for d in planned(exp)})
    fetch_time = snakemake(work, config, fetched, {**online, "HF_ENDPOINT": hub.url})
    assert set(hub.files) <= {r["path"] for r in hub.gets()}  # every published file was fetched
    hub.server.shutdown()

    offline = {**tool_env(), "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    root = work / exp.root
    full = os.environ.get("SFD_REHEARSAL", "full") != "cut"
    first_export = exp.export_steps("sfd_b")[0]
    if full:
        targets = ["released", "results/table_fid.csv"]
    else:
        targets = [f"{exp.root}/metrics/rel_xl_400k_ag.json", exp.ema("sfd_b", first_export)]
    compute_time = snakemake(work, config, targets, offline)
    index = json.loads((root / "samples/rel_xl_400k_ag/index.json").read_text())
    assert index["num_samples"] == exp.num_samples("rel_xl_400k_ag")
    assert index["guidance"] == "autoguidance" and index["guide_model"] == "sfd_b"
    metrics = json.loads((root / "metrics/rel_xl_400k_ag.json").read_text())
    assert metrics["detector_kind"] == "inception"
    assert metrics["num_samples"] == exp.cfg["evaluation"]["num_samples"]
    features = json.loads((root / "semantic/features/index.json").read_text())
    assert features["num_samples"] == exp.cfg["data"]["hf"]["expected_images"]["train"]
    assert features["encoder"].endswith("encoder.safetensors")
    assert (work / exp.ema("sfd_b", first_export)).is_file()
    assert sorted(os.listdir(root / "released")) == ["sfd_b", "sfd_xl", "sfd_xxl", "stats"]
    if full:
        for table in ("table_fid", "table_fid_released"):
            with open(work / "results" / f"{table}.csv") as f:
                rows = {row["run"]: row for row in csv.DictReader(f) if row["kind"] == "measured"}
            assert set(rows) == set(exp.table_runs(table)), table
            assert all(float(row["ours_fid"]) > 0 for row in rows.values()), table
        for run in exp.table_runs("table_fid"):  # trained here, not fetched
            assert (work / exp.ema(exp.run(run)["model"], exp.run(run)["step"])).is_file(), run
    what = "released + table_fid" if full else "the cut"
    print(f"\nstand-in Hub fetches: {fetch_time:.0f} s; {what} offline: {compute_time:.0f} s")
