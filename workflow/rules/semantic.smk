# Semantic side: the encoder (trained here for the toy, DINOv2 Hub weights for the paper), its
# features for Semantic VAE training, and the Semantic VAE itself.

ENCODER = None if EXP.cfg["semantic_encoder"]["pretrained"] else f"{E}/semantic/encoder.pt"
SEMVAE = f"{E}/semantic/semvae.pt"


def encoder_arg(wildcards, input):
    """`--encoder PATH` for an encoder trained here; timm's Hub weights otherwise."""
    return f"--encoder {input.encoder}" if ENCODER else ""


def encoder_input():
    return {"encoder": ENCODER} if ENCODER else {}


if ENCODER:

    rule train_semantic_encoder:
        """The toy ViT, trained as a classifier of the toy labels; its tokens are the semantics."""
        input:
            data_path("train"),
        output:
            model=ENCODER,
            metrics=f"{E}/semantic/encoder.json",
        params:
            **cfg("seed", "semantic_encoder"),
        log:
            logfile("train_semantic_encoder"),
        benchmark:
            benchfile("train_semantic_encoder")
        resources:
            mem_mb=2000,
            runtime=60,
        shell:
            "sfd train-semantic-encoder --config {CONFIG} --data {input} --out {output.model}"
            " > {log} 2>&1"


rule extract_features:
    """Encoder patch tokens of the training images: the Semantic VAE's training set (spec §1.2)."""
    input:
        data=data_path("train"),
        **encoder_input(),
    output:
        f"{E}/semantic/features/index.json",
    params:
        **cfg("semantic_encoder"),
        state=f"{E}/semantic/features",
        encoder=encoder_arg,
    log:
        logfile("extract_features"),
    benchmark:
        benchfile("extract_features")
    resources:
        mem_mb=8000,
        runtime=1440,
        **device_resources(devices=1),
    shell:
        launch(devices=1) + "sfd extract-features --config {CONFIG} --data {input.data} {params.encoder}"
        " --out {params.state} > {log} 2>&1"


rule train_semvae:
    """The Semantic VAE (tokens -> 16x16xC semantic latent), resumable from its run directory."""
    input:
        f"{E}/semantic/features/index.json",
    output:
        SEMVAE,
    params:
        **cfg("seed", "semvae"),
        state=f"{E}/semantic/semvae_run",
        features=f"{E}/semantic/features",
    log:
        logfile("train_semvae"),
    benchmark:
        benchfile("train_semvae")
    resources:
        mem_mb=16000,
        runtime=2880,
        **device_resources(devices=1),
    shell:
        launch(devices=1) + "sfd train-semvae --config {CONFIG} --features {params.features} --out {output}"
        " --run-dir {params.state} > {log} 2>&1"
