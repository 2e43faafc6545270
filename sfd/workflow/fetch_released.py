"""`sfd fetch-released`: one EMA checkpoint released by the SFD authors, named by the experiment.

Repo, revision and file pattern are read from the experiment's `released` section when the
command runs (not baked into dvc.yaml's command line), then `sfd.hub.download` fetches the file
(resumable, atomic, HF_TOKEN from the environment).
"""

from pathlib import Path

from sfd.config import ConfigError
from sfd.workflow.matrix import load

# Experiment keys this command reads (sfd/reads.py): READS shape its output, ALSO_READS do not.
READS = ("released.repo_id", "released.revision", "released.checkpoints.{model}")


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML (its `released` section)")
    parser.add_argument("--model", required=True, help="a key of released.checkpoints")
    parser.add_argument("--step", required=True, type=int, help="training iteration of the checkpoint")
    parser.add_argument("--out", required=True, type=Path, help="where the file goes")


def main(args) -> int:
    from sfd.hub import download

    released = load(args.config, __name__, model=args.model).cfg["released"]
    if args.model not in released["checkpoints"]:
        raise ConfigError(f"{args.config}: released.checkpoints.{args.model}: not listed")
    filename = released["checkpoints"][args.model].format(step=args.step)
    download(released["repo_id"], filename, args.out, revision=released["revision"])
    return 0
