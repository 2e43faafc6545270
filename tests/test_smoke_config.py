"""config/paper-smoke.yaml is config/paper.yaml in miniature: only sizes, steps (/10,000), sample
and image counts differ, and its DAG has the paper's rules, wildcards, tables, released runs and
job kinds (dry DAGs, no job runs)."""

from fnmatch import fnmatch
from pathlib import Path

import pytest

from sfd.workflow import matrix
from sfd.workflow.dvc_yaml import snakemake_jobs

ROOT = Path(__file__).resolve().parents[1]
PAPER, SMOKE = "config/paper.yaml", "config/paper-smoke.yaml"
STEP_SCALE = 10_000
# The only keys the smoke experiment may set differently (dotted, fnmatch patterns).
SHRUNK = [
    "name",
    "download_sizes*",
    "data.image_size",
    "data.hf.expected_images.*",
    "texture_vae.arch.ch",
    "texture_vae.arch.norm_groups",
    "texture_vae.arch.attn_resolutions",
    "texture_vae.arch.resolution",
    "latents.shard_size",
    "latents.batch_size",
    "latents.stats_samples",
    "latents.num_workers",
    "semantic_encoder.timm_kwargs*",
    "semantic_encoder.img_size",
    "semantic_encoder.feature_resize",
    "semantic_encoder.shard_size",
    "semantic_encoder.num_workers",
    "semvae.hidden_dim",
    "semvae.transformer_heads",
    "semvae.transformer_blocks",
    "semvae.train.iterations",
    "semvae.train.batch_size",
    "semvae.train.warmup_steps",
    "semvae.train.constant_steps",
    "semvae.train.eval_*",
    "semvae.train.save_every",
    "semvae.train.log_every",
    "evaluation.num_samples",
    "evaluation.reference_size",
    "evaluation.batch_size",
    "evaluation.softmax_batch_size",
    "sampling.num_steps",
    "sampling.num_samples",
    "sampling.batch_size",
    "sampling.shard_size",
    "models.*.model.model_type",
    "models.*.model.repa_out_dim",
    "models.*.model.repa_hidden_dim",
    "models.*.train.global_batch_size",
    "models.*.train.budgets",
    "models.*.train.keep_steps",
    "models.*.train.ckpt_every",
    "models.*.train.log_every",
    "models.*.train.num_workers",
    "runs.*.step",
    "runs.*.guidance.step",
]
STEP_KEYS = [
    "models.*.train.budgets",
    "models.*.train.keep_steps",
    "models.*.train.ckpt_every",
    "runs.*.step",
    "runs.*.guidance.step",
]


def leaves(node, prefix=""):
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, node


def scaled(value):
    if isinstance(value, list):
        return [v * STEP_SCALE for v in value]
    return None if value is None else value * STEP_SCALE


def test_only_sizes_steps_and_counts_differ():
    paper, smoke = dict(leaves(matrix.load(PAPER).cfg)), dict(leaves(matrix.load(SMOKE).cfg))
    differ = sorted(k for k in set(paper) | set(smoke) if paper.get(k, KeyError) != smoke.get(k, KeyError))
    assert differ and all(any(fnmatch(k, p) for p in SHRUNK) for k in differ), [
        k for k in differ if not any(fnmatch(k, p) for p in SHRUNK)
    ]
    steps = [k for k in smoke if any(fnmatch(k, p) for p in STEP_KEYS)]
    assert [k for k in steps if scaled(smoke[k]) != paper[k]] == []


def job_shape(job) -> tuple:
    """What must be equal between the two DAGs: rule, wildcards (steps scaled), local or not, devices."""
    wildcards = dict(job.wildcards_dict)
    if "step" in wildcards and job.rule.workflow.config["experiment"] == SMOKE:
        wildcards["step"] = f"{int(wildcards['step']) * STEP_SCALE:07d}"
    resources = dict(job.resources)
    devices = resources.get("gpu"), resources.get("nodes")
    return job.rule.name, tuple(sorted(wildcards.items())), job.is_local, devices


@pytest.mark.parametrize("targets", [(), ("released",)])
def test_smoke_dag_is_the_paper_dag(targets):
    profile = {"device": "cuda", "devices_per_node": 8}
    paper = sorted(map(job_shape, snakemake_jobs(PAPER, ROOT, targets, profile)))
    smoke = sorted(map(job_shape, snakemake_jobs(SMOKE, ROOT, targets, profile)))
    assert len(paper) > 100 if not targets else len(paper) > 10
    assert smoke == paper


def test_same_tables_runs_and_released_files():
    paper, smoke = matrix.load(PAPER), matrix.load(SMOKE)
    assert smoke.cfg["tables"] == paper.cfg["tables"] and smoke.cfg["released"] == paper.cfg["released"]
    assert [(m, s * STEP_SCALE) for m, s in smoke.released_weights] == paper.released_weights
    assert smoke.cfg["latents"]["released_stats"] == paper.cfg["latents"]["released_stats"]
