# Generation: N balanced samples per run (model, checkpoint, guidance), then the ADM npz.


def sample_inputs(wildcards):
    """EMA weights (trained here or released), the AutoGuidance model's, and what decodes them."""
    spec = EXP.run(wildcards.run)
    source = spec["source"]
    inputs = {
        "ckpt": EXP.ema(spec["model"], spec["step"], source),
        "texture_vae": TEXTURE_VAE,
        "stats": RELEASED_STATS if source == "released" else STATS,
    }
    if spec["guidance"]["kind"] == "autoguidance":
        inputs["guide"] = EXP.ema(spec["guidance"]["model"], spec["guidance"]["step"], source)
    return inputs


def guide_arg(wildcards, input):
    return f"--guide-ckpt {input.guide}" if "guide" in input.keys() else ""


def stats_dir(wildcards, input):
    return os.path.dirname(input.stats[0])


rule sample:
    """Balanced labels, per-sample seeds (independent of the device count), uint8 shards."""
    input:
        unpack(sample_inputs),
    output:
        f"{E}/samples/{{run}}/index.json",
    params:
        **cfg(lambda w: EXP.sample_keys(w.run)),
        state=f"{E}/samples/{{run}}",
        args=lambda w: EXP.sample_args(w.run),
        guide=guide_arg,
        stats=stats_dir,
    log:
        logfile("sample", "/{run}"),
    benchmark:
        benchfile("sample", "/{run}")
    resources:
        mem_mb=16000,
        runtime=1440,
        **device_resources(),
    shell:
        launch() + "sfd sample --config {CONFIG} {params.args} --ckpt {input.ckpt} {params.guide}"
        " --latents {params.stats} --texture-vae {input.texture_vae} --out {params.state} > {log} 2>&1"


rule pack:
    """The ADM evaluator's npz (class-mixed by a seeded permutation) and a sample grid."""
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
    params:
        **cfg("sampling.pack_seed", "sampling.grid_classes", "sampling.grid_per_class"),
        samples=f"{E}/samples/{{run}}",
    log:
        logfile("pack", "/{run}"),
    benchmark:
        benchfile("pack", "/{run}")
    resources:
        mem_mb=16000,
        runtime=60,
    shell:
        "sfd pack --config {CONFIG} --samples {params.samples} --out {output.npz} --grid {output.grid}"
        " > {log} 2>&1"
