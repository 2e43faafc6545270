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
    log:
        logfile("table", "{table}"),
    benchmark:
        benchfile("table", "{table}")
    conda:
        "../envs/sfd.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        **reads("table"),
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
    log:
        logfile("plot", "{table}"),
    benchmark:
        benchfile("plot", "{table}")
    conda:
        "../envs/sfd.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        **reads("plot"),
    shell:
        "sfd plot --config {params.experiment} --table {wildcards.table} --csv {input}"
        " --out {output} > {log} 2>&1"


if EXP.cfg["replication"]["conditions"]:

    rule replication_report:
        """Every replication condition once per seed: toy-FID and class accuracy with their interval
        over seeds, a figure and a verdict per claim. `sfd replication-report`
        (sfd/workflow/replication.py)."""
        input:
            replication_metrics,
        output:
            csv=report("results/replication.csv", category="Replication"),
            report=report("results/replication.md", category="Replication"),
            figures=[
                report(f"results/replication_{claim}.png", category="Replication")
                for claim in EXP.cfg["replication"]["claims"]
            ],
        log:
            logfile("replication_report"),
        benchmark:
            benchfile("replication_report")
        conda:
            "../envs/sfd.yaml"
        resources:
            mem_mb=1000,
            runtime=10,
        params:
            **reads("replication-report"),
        shell:
            "sfd replication-report --config {params.experiment} --csv {output.csv}"
            " --report {output.report} --figures results {input} > {log} 2>&1"

    rule replication:
        """The miniature replication: the report, its CSV and its figures."""
        input:
            rules.replication_report.output,


rule released:
    """The tables filled only by the authors' released checkpoints: evaluation without training."""
    input:
        released_targets,
