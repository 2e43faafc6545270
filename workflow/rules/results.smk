# Tables and figures: our measured values beside the paper's (results/*.csv, results/*.png).


rule table:
    """One paper table or figure as CSV: run identity, measured metrics, the paper's, differences.
    `sfd table` (sfd/workflow/table.py)."""
    input:
        table_metrics,
    output:
        report(
            "results/{table}.csv",
            caption="../report/table.rst",
            category="Tables",
            labels={"table": "{table}"},
        ),
    params:
        **reads("table"),
    conda:
        "../envs/sfd.yaml"
    log:
        logfile("table", "{table}"),
    benchmark:
        benchfile("table", "{table}")
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "sfd table --config {params.experiment} --table {wildcards.table} --out {output} {input}"
        " > {log} 2>&1"


rule plot:
    """FID against the semantic lead delta_t or against training iterations, with the paper's.
    `sfd plot` (sfd/workflow/plot.py)."""
    input:
        "results/{table}.csv",
    output:
        report(
            "results/{table}.png",
            caption="../report/plot.rst",
            category="Figures",
            labels={"figure": "{table}"},
        ),
    params:
        **reads("plot"),
    conda:
        "../envs/sfd.yaml"
    log:
        logfile("plot", "{table}"),
    benchmark:
        benchfile("plot", "{table}")
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "sfd plot --config {params.experiment} --table {wildcards.table} --csv {input}"
        " --out {output} > {log} 2>&1"


rule released:
    """The tables filled only by the authors' released checkpoints: evaluation without training."""
    input:
        released_targets,
