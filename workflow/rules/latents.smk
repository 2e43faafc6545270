# The composite latent dataset (texture channels first, semantic last; spec §1.3-1.4) and the
# per-channel statistics that normalise it.

LATENTS = f"{E}/latents"
STATS = [f"{LATENTS}/latents_stats.pt", f"{LATENTS}/latents_sv_stats.pt"]
RELEASED_STATS = [f"{E}/released/stats/latents_stats.pt", f"{E}/released/stats/latents_sv_stats.pt"]


rule extract_latents:
    """Texture VAE posterior samples + Semantic VAE samples of every image and of its flip, with
    the encoder tokens as REPA targets; sharded, resumable, one shard range per device."""
    input:
        data=data_path("train"),
        texture_vae=TEXTURE_VAE,
        semvae=SEMVAE,
        **encoder_input(),
    output:
        f"{LATENTS}/index.json",
    params:
        **cfg("seed", "latents", "semantic_encoder"),
        state=LATENTS,
        encoder=encoder_arg,
    log:
        logfile("extract_latents"),
    benchmark:
        benchfile("extract_latents")
    resources:
        mem_mb=16000,
        runtime=2880,
        **device_resources(),
    shell:
        launch() + "sfd extract-latents --config {CONFIG} --data {input.data}"
        " --texture-vae {input.texture_vae} {params.encoder} --semvae {input.semvae}"
        " --out {params.state} > {log} 2>&1"


rule latent_stats:
    """Mean/std per channel over a seeded sample of un-flipped latents."""
    input:
        f"{LATENTS}/index.json",
    output:
        STATS,
    params:
        **cfg("seed", "latents.stats_samples"),
    log:
        logfile("latent_stats"),
    benchmark:
        benchfile("latent_stats")
    resources:
        mem_mb=8000,
        runtime=120,
    shell:
        "sfd latent-stats --config {CONFIG} --latents {LATENTS} > {log} 2>&1"


if EXP.released_weights:

    localrules:
        fetch_released_stats,

    rule fetch_released_stats:
        """The statistics the released checkpoints were trained with (spec §1.3: use them)."""
        output:
            RELEASED_STATS,
        params:
            **cfg("latents.released_stats"),
            dir=f"{E}/released/stats",
        log:
            logfile("fetch_released_stats"),
        benchmark:
            benchfile("fetch_released_stats")
        resources:
            mem_mb=1000,
            runtime=60,
        shell:
            "sfd latent-stats --config {CONFIG} --released --latents {params.dir} > {log} 2>&1"
