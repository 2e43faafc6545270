# The ADM-equivalent evaluator (docs/method.md §5): ADM's Inception assets downloaded (paper), or a
# detector with the same tensor names trained on the toy classes (toy); then metrics per run.

if EVAL["detector"] == "inception":

    localrules:
        fetch_eval_assets,

    rule fetch_eval_assets:
        """ADM's Inception GraphDef, the VIRTUAL_imagenet256_labeled reference batch and ADM's
        own sample batch (the evaluator's validation target).
        `sfd fetch-eval-assets` (sfd/evaluation/assets.py)."""
        output:
            **ASSETS,
        log:
            logfile("fetch_eval_assets"),
        benchmark:
            benchfile("fetch_eval_assets")
        conda:
            "../envs/sfd.yaml"
        resources:
            mem_mb=1000,
            runtime=120,
        params:
            **reads("fetch-eval-assets"),
            out_dir=parent("inception"),
        shell:
            "sfd fetch-eval-assets --config {params.experiment} --out-dir {params.out_dir} > {log} 2>&1"

else:

    rule train_detector:
        """The toy evaluator's network, with Inception's tensor names (pool_3, mixed_6/conv, logits).
        `sfd train-detector` (sfd/evaluation/toy_detector.py)."""
        input:
            data=data_path("train"),
            val=data_path("val"),
        output:
            model=DETECTOR,
            metrics=f"{E}/eval/detector.json",
        log:
            logfile("train_detector"),
        benchmark:
            benchfile("train_detector")
        conda:
            "../envs/sfd.yaml"
        resources:
            mem_mb=2000,
            runtime=60,
        params:
            **reads("train-detector"),
        shell:
            "sfd train-detector --config {params.experiment} --data {input.data} --val {input.val}"
            " --out {output.model} --metrics {output.metrics} > {log} 2>&1"

    rule make_reference:
        """The toy reference batch: held-out real images, as ADM's VIRTUAL batch.
        `sfd make-reference` (sfd/evaluation/reference.py)."""
        input:
            data_path("val"),
        output:
            REFERENCE,
        log:
            logfile("make_reference"),
        benchmark:
            benchfile("make_reference")
        conda:
            "../envs/sfd.yaml"
        resources:
            mem_mb=2000,
            runtime=30,
        params:
            **reads("make-reference"),
        shell:
            "sfd make-reference --config {params.experiment} --data {input} --out {output} > {log} 2>&1"


rule evaluate:
    """FID, sFID, Inception Score, precision and recall of one run's samples.
    `sfd evaluate` (sfd/evaluation/evaluate.py)."""
    input:
        samples=f"{E}/samples/{{run}}.npz",
        reference=REFERENCE,
        detector=DETECTOR,
    output:
        f"{E}/metrics/{{run}}.json",
    log:
        logfile("evaluate", "{run}"),
    benchmark:
        benchfile("evaluate", "{run}")
    conda:
        "../envs/sfd.yaml"
    resources:
        mem_mb=16000,
        runtime=240,
    params:
        **reads("evaluate"),
        cache=f"{E}/eval/cache",
    shell:
        "sfd evaluate {input.samples} --config {params.experiment} --reference {input.reference}"
        " --detector {input.detector} --cache-dir {params.cache} --out {output} > {log} 2>&1"
