# SFD DiT training, one job per (model, export step). Jobs are chained: the job for step s starts
# from the checkpoint of the model's previous budget or keep_step (the 800-epoch budget continues
# the 80-epoch checkpoint; the AutoGuidance model's 60K/70K/120K EMAs end a job each), which `sfd
# train` guarantees equals one uninterrupted run. A job killed at the walltime (SIGUSR1/SIGTERM:
# checkpoint, exit 75) resumes from its run directory when resubmitted (profile `retries`).


def train_inputs(wildcards):
    inputs = {"latents": f"{LATENTS}/index.json", "stats": STATS}
    prev = EXP.previous_step(wildcards.model, int(wildcards.step))
    if prev is not None:
        inputs["init"] = EXP.checkpoint(wildcards.model, prev)
    return inputs


def init_arg(wildcards, input):
    return f"--init-from {input.init}" if "init" in input.keys() else ""


rule train:
    """Train `model` up to `step` (its EMA at `step` is what sampling uses)."""
    input:
        unpack(train_inputs),
    output:
        checkpoint=f"{E}/train/{{model}}/{{step}}/checkpoints/{{step}}.pt",
        ema=f"{E}/train/{{model}}/{{step}}/ema/{{step}}.pt",
    params:
        **cfg(lambda w: EXP.train_keys(w.model)),
        state=f"{E}/train/{{model}}/{{step}}",
        init=init_arg,
        until=lambda w: int(w.step),
    log:
        logfile("train", "/{model}_{step}"),
    benchmark:
        benchfile("train", "/{model}_{step}")
    threads: 2
    resources:
        mem_mb=16000,
        runtime=1440,
        **device_resources(nodes=config["train_nodes"]),
    shell:
        launch() + "sfd train --config {CONFIG} --model {wildcards.model} --latents {LATENTS}"
        " --run-dir {params.state} --until-step {params.until} {params.init} > {log} 2>&1"
