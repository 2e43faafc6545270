# Semantic side: the encoder (trained here for the toy; DINOv2 Hub weights for the paper), its
# tokens of the training images, and the Semantic VAE trained on them. The download is a local
# rule: compute nodes of a cluster often have no internet access.

if ENCODER_WEIGHTS:

    localrules:
        fetch_encoder,

    rule fetch_encoder:
        """DINOv2-B/14-reg weights as timm publishes them on the Hub (docs/method.md §1.2).
        `sfd fetch-weights` (sfd/hub.py)."""
        output:
            ENCODER,
        log:
            logfile("fetch_encoder"),
        benchmark:
            benchfile("fetch_encoder")
        conda:
            "../envs/sfd.yaml"
        resources:
            mem_mb=1000,
            runtime=60,
        params:
            **reads("fetch-weights", key="semantic_encoder.weights"),
        shell:
            "sfd fetch-weights --config {params.experiment} --key semantic_encoder.weights --out {output}"
            " > {log} 2>&1"

else:

    rule train_semantic_encoder:
        """The toy ViT, trained as a classifier of the toy labels; its tokens are the semantics.
        `sfd train-semantic-encoder` (sfd/semantic/train_encoder.py)."""
        input:
            data_path("train"),
        output:
            ENCODER,
        log:
            logfile("train_semantic_encoder"),
        benchmark:
            benchfile("train_semantic_encoder")
        priority: PREPARE_PRIORITY
        conda:
            "../envs/sfd.yaml"
        resources:
            mem_mb=2000,
            runtime=60,
        params:
            **reads("train-semantic-encoder"),
        shell:
            "sfd train-semantic-encoder --config {params.experiment} --data {input} --out {output}"
            " > {log} 2>&1"


rule extract_features:
    """Encoder patch tokens of the training images: the Semantic VAE's training set (docs/method.md §1.2).
    `sfd extract-features` (sfd/semantic/features.py)."""
    input:
        **encoder_input(),
        data=data_path("train"),
    output:
        FEATURES,
    log:
        logfile("extract_features"),
    benchmark:
        benchfile("extract_features")
    priority: PREPARE_PRIORITY
    conda:
        "../envs/sfd.yaml"
    resources:
        **device_resources(devices=1),
        mem_mb=8000,
        runtime=1440,
    params:
        **reads("extract-features"),
        state=parent("output"),
        encoder=option("--encoder", "encoder"),
    shell:
        launch(devices=1) + "sfd extract-features --config {params.experiment} --data {input.data}"
        " {params.encoder} --out {params.state} > {log} 2>&1"


rule train_semvae:
    """The Semantic VAE (tokens -> semantic latent), resumable from its run directory.
    `sfd train-semvae` (sfd/semantic/train_semvae.py)."""
    input:
        FEATURES,
    output:
        SEMVAE,
    log:
        logfile("train_semvae"),
    benchmark:
        benchfile("train_semvae")
    priority: PREPARE_PRIORITY
    conda:
        "../envs/sfd.yaml"
    resources:
        **device_resources(devices=1),
        mem_mb=16000,
        runtime=2880,
    params:
        **reads("train-semvae"),
        state=f"{E}/semantic/semvae_run",
        features=parent("input"),
    shell:
        launch(devices=1) + "sfd train-semvae --config {params.experiment} --features {params.features}"
        " --out {output} --run-dir {params.state} > {log} 2>&1"
