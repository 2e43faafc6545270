# Generation: N balanced samples per run (model, checkpoint, guidance), then the ADM npz.

if EXP.released_weights:

    localrules:
        fetch_released,

    rule fetch_released:
        """An EMA checkpoint released by the SFD authors (Hub repo `released.repo_id`).
        `sfd fetch-released` (sfd/workflow/fetch_released.py)."""
        output:
            f"{E}/released/{{model}}/{{step}}.pt",
        log:
            logfile("fetch_released", "{model}_{step}"),
        benchmark:
            benchfile("fetch_released", "{model}_{step}")
        conda:
            "../envs/sfd.yaml"
        resources:
            mem_mb=2000,
            runtime=240,
        params:
            **reads("fetch-released"),
            step=lambda w: int(w.step),
        shell:
            "sfd fetch-released --config {params.experiment} --model {wildcards.model} --step {params.step}"
            " --out {output} > {log} 2>&1"


rule sample_run:
    """Balanced labels, per-sample seeds (independent of the device count), uint8 shards.
    `sfd sample-run` (sfd/workflow/sample_run.py)."""
    input:
        unpack(sample_inputs),
    output:
        f"{E}/samples/{{run}}/index.json",
    log:
        logfile("sample_run", "{run}"),
    benchmark:
        benchfile("sample_run", "{run}")
    priority: sample_priority
    conda:
        "../envs/sfd.yaml"
    resources:
        **device_resources(),
        mem_mb=16000,
        runtime=1440,
    params:
        **reads("sample-run"),
        state=parent("output"),
        guide=option("--guide-ckpt", "guide"),
        stats=parent("stats"),
    shell:
        launch() + "sfd sample-run --config {params.experiment} --run {wildcards.run} --ckpt {input.ckpt}"
        " {params.guide} --latents {params.stats} --texture-vae {input.texture_vae}"
        " --out {params.state} > {log} 2>&1"


rule pack:
    """The ADM evaluator's npz (class-mixed by a seeded permutation) and a sample grid.
    `sfd pack` (sfd/pack.py)."""
    input:
        f"{E}/samples/{{run}}/index.json",
    output:
        npz=f"{E}/samples/{{run}}.npz",
        grid=report(
            f"{E}/samples/{{run}}.png",
            caption="../report/grid.rst",
            category="Sample grids",
            labels={"run": "{run}"},
        ),
    log:
        logfile("pack", "{run}"),
    benchmark:
        benchfile("pack", "{run}")
    conda:
        "../envs/sfd.yaml"
    resources:
        mem_mb=16000,
        runtime=60,
    params:
        **reads("pack"),
        samples=parent("input"),
    shell:
        "sfd pack --config {params.experiment} --samples {params.samples} --out {output.npz}"
        " --grid {output.grid} > {log} 2>&1"
