# Images and the texture tokenizer: generated and trained here (toy) or downloaded (paper).
# Downloads are local rules: compute nodes of a cluster often have no internet access.

if DATA["source"] == "toy":

    rule make_toy_data:
        """The procedural class-conditional toy images (sfd/data/toy.py)."""
        output:
            f"{E}/data/{{split}}.npz",
        log:
            logfile("make_toy_data", "{split}"),
        benchmark:
            benchfile("make_toy_data", "{split}")
        priority: PREPARE_PRIORITY
        conda:
            "../envs/sfd.yaml"
        resources:
            mem_mb=1000,
            runtime=10,
        params:
            **reads("make-toy-data"),
        shell:
            "sfd make-toy-data --config {params.experiment} --split {wildcards.split} --out {output}"
            " > {log} 2>&1"


if DATA["source"] == "hf":

    localrules:
        fetch_imagenet,

    rule fetch_imagenet:
        """ImageNet from the Hugging Face Hub into the standard class-folder layout.
        `sfd fetch-imagenet` (sfd/data/imagenet.py)."""
        output:
            directory(f"{E}/data/{{split}}"),
        log:
            logfile("fetch_imagenet", "{split}"),
        benchmark:
            benchfile("fetch_imagenet", "{split}")
        conda:
            "../envs/sfd.yaml"
        resources:
            mem_mb=4000,
            runtime=1440,
        params:
            **reads("fetch-imagenet"),
        shell:
            "sfd fetch-imagenet --config {params.experiment} --split {wildcards.split} --out {output}"
            " > {log} 2>&1"


if EXP.cfg["texture_vae"]["pretrained"] is None:

    rule train_tokenizer:
        """The small LDM KL autoencoder of the toy experiment (texture latents).
        `sfd train-tokenizer` (sfd/tokenizers/train.py)."""
        input:
            data_path("train"),
        output:
            model=TEXTURE_VAE,
            metrics=f"{E}/tokenizer/texture_vae.json",
        log:
            logfile("train_tokenizer"),
        benchmark:
            benchfile("train_tokenizer")
        priority: PREPARE_PRIORITY
        conda:
            "../envs/sfd.yaml"
        resources:
            mem_mb=2000,
            runtime=60,
        params:
            **reads("train-tokenizer"),
        shell:
            "sfd train-tokenizer --config {params.experiment} --data {input} --out {output.model}"
            " --metrics {output.metrics} > {log} 2>&1"

else:

    localrules:
        fetch_tokenizer,

    rule fetch_tokenizer:
        """The released SD-VAE f16d32 texture autoencoder (docs/method.md §1.1).
        `sfd fetch-weights` (sfd/hub.py)."""
        output:
            TEXTURE_VAE,
        log:
            logfile("fetch_tokenizer"),
        benchmark:
            benchfile("fetch_tokenizer")
        conda:
            "../envs/sfd.yaml"
        resources:
            mem_mb=2000,
            runtime=120,
        params:
            **reads("fetch-weights", key="texture_vae.pretrained"),
        shell:
            "sfd fetch-weights --config {params.experiment} --key texture_vae.pretrained --out {output}"
            " > {log} 2>&1"
