# The composite latent dataset (texture channels first, semantic last; docs/method.md §1.3-1.4) and the
# per-channel statistics that normalise it.


rule extract_latents:
    """Texture VAE and Semantic VAE posterior samples of every image and of its flip, with the
    encoder tokens as REPA targets; sharded, resumable, one shard range per device.
    `sfd extract-latents` (sfd/latents/extract.py)."""
    input:
        **encoder_input(),
        data=data_path("train"),
        texture_vae=TEXTURE_VAE,
        semvae=SEMVAE,
    output:
        LATENTS,
    log:
        logfile("extract_latents"),
    benchmark:
        benchfile("extract_latents")
    priority: PREPARE_PRIORITY
    conda:
        "../envs/sfd.yaml"
    resources:
        **device_resources(),
        mem_mb=16000,
        runtime=2880,
    params:
        **reads("extract-latents"),
        state=parent("output"),
        encoder=option("--encoder", "encoder"),
    shell:
        launch() + "sfd extract-latents --config {params.experiment} --data {input.data}"
        " --texture-vae {input.texture_vae} {params.encoder} --semvae {input.semvae}"
        " --out {params.state} > {log} 2>&1"


rule latent_stats:
    """Mean/std per channel over a seeded sample of un-flipped latents.
    `sfd latent-stats` (sfd/latents/stats.py)."""
    input:
        LATENTS,
    output:
        STATS,
    log:
        logfile("latent_stats"),
    benchmark:
        benchfile("latent_stats")
    priority: PREPARE_PRIORITY
    conda:
        "../envs/sfd.yaml"
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        **reads("latent-stats"),
        latents=parent("input"),
    shell:
        "sfd latent-stats --config {params.experiment} --latents {params.latents} > {log} 2>&1"


if EXP.released_weights:

    localrules:
        fetch_released_stats,

    rule fetch_released_stats:
        """The statistics the released checkpoints were trained with (docs/method.md §1.3: use them).
        `sfd latent-stats` (sfd/latents/stats.py)."""
        output:
            RELEASED_STATS,
        log:
            logfile("fetch_released_stats"),
        benchmark:
            benchfile("fetch_released_stats")
        conda:
            "../envs/sfd.yaml"
        resources:
            mem_mb=1000,
            runtime=60,
        params:
            **reads("latent-stats"),
            stats=parent("output"),
        shell:
            "sfd latent-stats --config {params.experiment} --released --latents {params.stats}"
            " > {log} 2>&1"
