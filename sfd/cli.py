"""The `sfd` command line: one subcommand per pipeline step, each a thin wrapper over the package.

Subcommand modules are imported only when their command runs. This keeps `sfd --help` fast and,
more importantly, keeps TensorFlow (evaluator) and torch/timm/triton (everything else) in
different processes: importing triton after TensorFlow segfaults.

Each module named below defines `add_arguments(parser)` and `main(args) -> int | None`.
"""

import argparse
import importlib
import logging
import sys

from sfd.errors import UserError

# name -> (module, one-line help). Order is pipeline order.
COMMANDS = {
    "validate-config": ("sfd.config", "Validate an experiment YAML and print the resolved config."),
    # -- data and tokenizers (issue 3) --
    "make-toy-data": (
        "sfd.data.toy",
        "Write one split of the procedural toy dataset as an npz (images, labels, class_names).",
    ),
    "fetch-imagenet": (
        "sfd.data.imagenet",
        "Download ImageNet-1k archives from the Hub and unpack them as <wnid>/*.JPEG (resumable).",
    ),
    "train-tokenizer": (
        "sfd.tokenizers.train",
        "Train the toy texture VAE (the LDM KL autoencoder, configured small) on a toy npz.",
    ),
    "fetch-weights": (
        "sfd.hub",
        "Download one Hugging Face Hub file (resumable, atomic, sha256-checked; token from HF_TOKEN).",
    ),
    "extract-latents": (
        "sfd.latents.extract",
        "Encode images into composite latent shards (texture + semantic, flips, REPA tokens); resumable.",
    ),
    "latent-stats": (
        "sfd.latents.stats",
        "Per-channel latent statistics from a seeded sample (or the released files) into the latent dir.",
    ),
    # -- semantic encoder and Semantic VAE (issue 3) --
    "train-semantic-encoder": (
        "sfd.semantic.train_encoder",
        "Train the toy ViT semantic encoder as a classifier of the toy labels.",
    ),
    "extract-features": (
        "sfd.semantic.features",
        "Encoder patch tokens of raw images (Semantic VAE training data), resumable shards.",
    ),
    "train-semvae": (
        "sfd.semantic.train_semvae",
        "Train the Semantic VAE on extracted features; rerun the same command to resume.",
    ),
    "eval-semvae": (
        "sfd.semantic.eval_semvae",
        "Reconstruction metrics of a Semantic VAE checkpoint (ours or released) on features.",
    ),
    # -- training and generation engines (issue 4) --
    "train": ("sfd.train", "Train an SFD DiT (torchrun for DDP); rerun the same command to resume."),
    "export-ema": ("sfd.export_ema", "Write the EMA of a training checkpoint as {'ema': state_dict}."),
    "sample": ("sfd.generate", "Generate N balanced samples (none / CFG / AutoGuidance) as uint8 shards."),
    "pack": ("sfd.pack", "Pack sample shards into the ADM evaluator npz plus a sample grid PNG."),
    # -- evaluator (issue 5) --
    "fetch-eval-assets": (
        "sfd.evaluation.assets",
        "Download ADM's Inception GraphDef and reference batch (sha256-checked, resumable).",
    ),
    "train-detector": (
        "sfd.evaluation.toy_detector",
        "Train the toy detector CNN and export it as an Inception-named frozen GraphDef.",
    ),
    "make-reference": (
        "sfd.evaluation.reference",
        "Write a toy reference batch (arr_0 real images, arr_1 labels).",
    ),
    "evaluate": (
        "sfd.evaluation.evaluate",
        "ADM-equivalent FID, sFID, IS, precision and recall of a sample npz.",
    ),
    # -- workflow (issue 6) --
    "sample-run": (
        "sfd.workflow.sample_run",
        "`sfd sample` for one run of the experiment (settings read from runs.<run>).",
    ),
    "fetch-released": (
        "sfd.workflow.fetch_released",
        "Download one released SFD checkpoint named by the experiment's `released` section.",
    ),
    "launch": (
        "sfd.workflow.launch",
        "Run a resumable command on all devices of the job (torchrun/srun), guarding its state dir.",
    ),
    "table": (
        "sfd.workflow.table",
        "Build results/<table>.csv: measured metrics beside the paper's numbers.",
    ),
    "plot": (
        "sfd.workflow.plot",
        "Draw a paper figure (FID vs delta_t or vs iterations) from its results CSV.",
    ),
    "replication-report": (
        "sfd.workflow.replication",
        "Replication CSV, figures and report: toy-FID and class accuracy over seeds, verdicts.",
    ),
    "dvc-yaml": (
        "sfd.workflow.dvc_yaml",
        "Generate dvc.yaml (--replication: replication/dvc.yaml too) from the Snakemake DAG.",
    ),
    "downloads": (
        "sfd.workflow.downloads",
        "List every file the experiment downloads: source, destination, size.",
    ),
    "plan": (
        "sfd.workflow.plan",
        "Per rule: jobs, FLOPs and device-hours of a target from scratch, and its downloads.",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sfd", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show the traceback of a user error too")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text, add_help=False)
    return parser


def setup_logging() -> None:
    """The one logging setup of every command: time, logger name, message, on stderr."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", force=True)


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. A UserError (bad file, key or setting) is one line and exit 2;
    `sfd --debug COMMAND ...` shows its traceback; any other exception is a bug and keeps its own."""
    argv = sys.argv[1:] if argv is None else argv
    debug = bool(argv) and argv[0] == "--debug"
    argv = argv[1:] if debug else argv
    if not argv or argv[0] not in COMMANDS:
        build_parser().parse_args(argv)  # prints usage / help, exits
        return 2
    name, rest = argv[0], argv[1:]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"sfd {name}", description=help_text)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    setup_logging()
    try:
        return int(module.main(args) or 0)
    except UserError as err:
        if debug:
            raise
        print(f"sfd {name}: error: {err}", file=sys.stderr)
        return 2
