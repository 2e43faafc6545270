# The ADM-equivalent evaluator (spec §5): Inception assets downloaded (paper) or a detector with
# the same tensor names trained on the toy classes (toy), then metrics per run.

EVAL = EXP.cfg["evaluation"]

if EVAL["detector"] == "inception":
    ASSETS = {name: f"{E}/eval/{os.path.basename(a['url'])}" for name, a in EVAL["assets"].items()}
    DETECTOR, REFERENCE = ASSETS["inception"], ASSETS["reference"]

    localrules:
        fetch_eval_assets,

    rule fetch_eval_assets:
        """ADM's Inception GraphDef and the VIRTUAL_imagenet256_labeled reference batch."""
        output:
            list(ASSETS.values()),
        params:
            **cfg("evaluation.assets"),
            out_dir=f"{E}/eval",
        log:
            logfile("fetch_eval_assets"),
        benchmark:
            benchfile("fetch_eval_assets")
        resources:
            mem_mb=1000,
            runtime=120,
        shell:
            "sfd fetch-eval-assets --config {CONFIG} --out-dir {params.out_dir} > {log} 2>&1"

else:
    DETECTOR, REFERENCE = f"{E}/eval/detector.pb", f"{E}/eval/reference.npz"

    rule train_detector:
        """The toy evaluator's feature network (pool_3, mixed_6/conv and logits as in Inception)."""
        input:
            data=data_path("train"),
            val=data_path("val"),
        output:
            model=DETECTOR,
            metrics=f"{E}/eval/detector.json",
        params:
            **cfg("evaluation.toy_detector"),
        log:
            logfile("train_detector"),
        benchmark:
            benchfile("train_detector")
        resources:
            mem_mb=2000,
            runtime=60,
        shell:
            "sfd train-detector --config {CONFIG} --data {input.data} --val {input.val}"
            " --out {output.model} --metrics {output.metrics} > {log} 2>&1"

    rule make_reference:
        """The toy reference batch: real held-out images, as ADM's VIRTUAL batch."""
        input:
            data_path("val"),
        output:
            REFERENCE,
        params:
            **cfg("evaluation.reference_size"),
        log:
            logfile("make_reference"),
        benchmark:
            benchfile("make_reference")
        resources:
            mem_mb=2000,
            runtime=30,
        shell:
            "sfd make-reference --config {CONFIG} --data {input} --out {output} > {log} 2>&1"


rule evaluate:
    """FID, sFID, Inception Score, precision and recall of one run's samples."""
    input:
        samples=f"{E}/samples/{{run}}.npz",
        reference=REFERENCE,
        detector=DETECTOR,
    output:
        f"{E}/metrics/{{run}}.json",
    params:
        **cfg("evaluation.detector", "evaluation.metric_label", "evaluation.num_samples",
              "evaluation.batch_size", "evaluation.softmax_batch_size"),
        cache=f"{E}/eval/cache",
    log:
        logfile("evaluate", "/{run}"),
    benchmark:
        benchfile("evaluate", "/{run}")
    resources:
        mem_mb=16000,
        runtime=240,
    shell:
        "sfd evaluate {input.samples} --config {CONFIG} --reference {input.reference}"
        " --detector {input.detector} --cache-dir {params.cache} --output {output} > {log} 2>&1"
