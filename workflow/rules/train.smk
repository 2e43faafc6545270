# SFD DiT training, one job per (model, export step). Jobs are chained: the job for step s starts
# from the checkpoint of the model's previous budget or keep_step (the 800-epoch budget continues
# the 80-epoch checkpoint; the AutoGuidance model's 60K/70K/120K EMAs end a job each), which
# `sfd train` guarantees equals one uninterrupted run. A job killed at the walltime (SIGUSR1 or
# SIGTERM: checkpoint, exit 75) resumes from its run directory when resubmitted (`retries`).


rule train:
    """Train `model` up to `step`; its EMA at `step` is what sampling uses.
    `sfd train` (sfd/train.py)."""
    input:
        unpack(train_inputs),
    output:
        checkpoint=f"{E}/train/{{model}}/{{step}}/checkpoints/{{step}}.pt",
        ema=f"{E}/train/{{model}}/{{step}}/ema/{{step}}.pt",
    log:
        logfile("train", "{model}_{step}"),
    benchmark:
        benchfile("train", "{model}_{step}")
    priority: train_priority
    conda:
        "../envs/sfd.yaml"
    resources:
        **device_resources(nodes=config["train_nodes"]),
        mem_mb=16000,
        runtime=1440,
    params:
        **reads("train"),
        state=parent("checkpoint", levels=2),
        latents=parent("latents"),
        init=option("--init-from", "init"),
        until=lambda w: int(w.step),
    shell:
        launch() + "sfd train --config {params.experiment} --model {wildcards.model}"
        " --latents {params.latents} --run-dir {params.state} --until-step {params.until}"
        " {params.init} > {log} 2>&1"
