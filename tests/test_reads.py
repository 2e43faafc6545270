"""Each command declares the experiment keys it reads (sfd/reads.py); rules derive from it."""

import copy
import re
from pathlib import Path

import pytest
from workflow_helpers import MINI, write_config

from sfd import reads
from sfd.cli import COMMANDS
from sfd.config import ConfigError, load_experiment, schema
from sfd.workflow import matrix

ROOT = Path(__file__).resolve().parents[1]
# Commands that take no experiment, or report on all of it (no rule runs them).
NO_DECLARATION = {"validate-config", "export-ema", "launch", "dvc-yaml", "downloads", "plan"}


def test_view_allows_declared_keys_only(tmp_path):
    cfg = load_experiment(write_config(tmp_path, MINI))
    view = reads.ConfigView(cfg, ["seed", "models.big.model", "sampling.method"], "demo", "exp.yaml")
    assert view["seed"] == cfg["seed"] and view["sampling"]["method"] == "euler"
    assert view["models"]["big"]["model"]["model_type"] == "LightningDiT-T/1"
    assert list(view["models"]) == ["big"] and "small" not in view["models"] and "big" in view["models"]
    with pytest.raises(ConfigError, match=r"exp.yaml: sampling.num_steps: `sfd demo` reads this key without"):
        view["sampling"]["num_steps"]
    with pytest.raises(ConfigError, match=r"models.small: `sfd demo`"):
        view["models"]["small"]
    view["models"]["big"]["model"]["model_type"] = "changed"  # a private copy
    assert cfg["models"]["big"]["model"]["model_type"] == "LightningDiT-T/1"
    assert view.replace("seed", 7)["seed"] == 7 and view["seed"] == cfg["seed"]
    assert reads.plain(view) == {
        "seed": cfg["seed"],
        "models": {"big": {"model": cfg["models"]["big"]["model"]}},
        "sampling": {"method": "euler"},
    }


def test_placeholders_follow_runs_and_tables(tmp_path):
    exp = matrix.load(write_config(tmp_path, MINI))
    assert "models.small.model" in exp.reads("sample-run", run="big_40_ag")
    assert "models.small.model" not in exp.reads("sample-run", run="big_20")  # no guide model: dropped
    table = exp.reads("table", table="fig_convergence")
    assert {"runs.big_10", "runs.big_20", "runs.big_40", "models.big.model"} <= set(table)
    assert "runs.big_40_ag" not in table
    assert exp.reads("make-toy-data", split="val")[-1] == "data.val_size"


@pytest.mark.parametrize("command", sorted(set(COMMANDS) - NO_DECLARATION))
def test_every_declared_key_exists(tmp_path, command):
    """A declaration names real keys (a typo there would silently track nothing)."""
    data = copy.deepcopy(MINI)
    data["released"] = {"repo_id": "r", "checkpoints": {"big": "b/{step:07d}.pt"}}
    cfg = load_experiment(write_config(tmp_path, data))
    names = {
        "model": "big",
        "guide": "small",
        "run": "big_40_ag",
        "table": "table_fid",
        "split": "train",
        "key": "texture_vae.arch",
    }
    templates = sum(reads.declared(COMMANDS[command][0]), ())
    assert templates, f"sfd {command} declares no keys"
    for key in reads.resolve(templates, cfg, names):
        reads.get(cfg, key)


def test_train_declares_every_train_key():
    """sfd train's run identity is its READS under models.<m>.train: a new schema key must be
    declared as shaping the trajectory or not."""
    declared = sum(reads.declared("sfd.train"), ())
    for key in schema("train")["properties"]:
        assert f"models.{{model}}.train.{key}" in declared, key


def test_undeclared_read_fails_the_command(tmp_path, monkeypatch, capsys):
    from sfd import cli

    monkeypatch.setattr(reads, "declared", lambda module: (("seed", "latents.released_stats"), ()))
    config = write_config(tmp_path, MINI)
    assert cli.main(["latent-stats", "--config", str(config), "--latents", str(tmp_path)]) == 2
    assert (
        "latents.stats_samples: `sfd latent-stats` reads this key without declaring it"
        in capsys.readouterr().err
    )


# Rules whose name is not their command's (one command, two roles).
RULE_COMMAND_EXCEPTIONS = {
    "fetch_released_stats": "latent-stats",
    "fetch_tokenizer": "fetch-weights",
    "fetch_encoder": "fetch-weights",
}


@pytest.mark.parametrize("experiment", ["config/toy.yaml", "config/paper.yaml"])
def test_rule_params_are_the_command_declaration(experiment):
    """Every job's params are exactly the declared READS of the command it runs, and a rule is
    named as its command."""
    from sfd.workflow import dvc_yaml

    exp = matrix.load(ROOT / experiment)
    jobs = dvc_yaml.snakemake_jobs(
        experiment, ROOT, ("all", "replication") if exp.cfg["replication"]["conditions"] else ()
    )
    assert jobs
    for job in jobs:
        command = re.findall(r"\bsfd ([a-z-]+)", job.shellcmd)[-1]
        assert RULE_COMMAND_EXCEPTIONS.get(job.rule.name, job.rule.name.replace("_", "-")) == command
        names = dict(job.wildcards_dict, **dict(re.findall(r"--(key) (\S+)", job.shellcmd)))
        assert list(job.params.cfg) == exp.reads(command, **names), job
        assert job.params.cfg_keys.split() == list(job.params.cfg)


def test_docs_list_the_current_declarations():
    text = (ROOT / "docs" / "workflow.md").read_text()
    section = text.split("<!-- reads:begin -->\n", 1)[1].split("<!-- reads:end -->", 1)[0]
    assert section == reads.markdown_table(), "docs/workflow.md is stale: paste `python -m sfd.reads` there"


def test_sample_run_reads_what_sample_reads():
    """sample-run is `sfd sample` for one run: the same keys, but the run's guidance in place of
    the sampling defaults, and the experiment name to locate the run's checkpoints."""
    sample = set(sum(reads.declared("sfd.generate"), ()))
    run = set(sum(reads.declared("sfd.workflow.sample_run"), ()))
    assert run - sample == {"runs.{run}", "name"}
    assert sample - run == {"sampling.guidance", "sampling.cfg_scale"}
