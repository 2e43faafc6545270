"""Semantic-First Diffusion (SFD, arXiv 2512.04926): the whole reproduction as one DAG.

    snakemake --profile profiles/local                     # toy experiment, end to end, CPU
    snakemake --profile profiles/slurm-gpu results/table_fid.csv    # paper experiment on SLURM

Every rule is one `sfd` subcommand. Which experiment runs is `--config experiment=PATH`
(default config/toy.yaml); every parameter lives in that file, is schema-validated before the DAG
is built, and reaches each rule as `params.cfg` (only the keys the rule reads), so Snakemake's
params rerun-trigger reruns exactly the jobs whose parameters changed and their descendants.
`sfd dvc-yaml` converts this DAG into dvc.yaml (default target; `--replication`: replication/dvc.yaml).
"""

from snakemake.utils import min_version, validate

min_version("9.0")


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"


report: "workflow/report/workflow.rst"
# fmt: off
# (snakefmt 2.1 moves default_target above the docstring, then cannot parse its own output)
rule all:
    """Every table and figure of the experiment, and the sample grids behind them."""
    input:
        all_targets,
    default_target: True
# fmt: on
include: "workflow/rules/data.smk"
include: "workflow/rules/semantic.smk"
include: "workflow/rules/latents.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/results.smk"
