"""The `sfd` command line: one subcommand per pipeline step, each a thin wrapper over the package.

Subcommand modules are imported only when their command runs. This keeps `sfd --help` fast and,
more importantly, keeps TensorFlow (evaluator) and torch/timm/triton (everything else) in
different processes: importing triton after TensorFlow segfaults.

Each module named below defines `add_arguments(parser)` and `main(args) -> int | None`.
"""

import argparse
import importlib
import sys

from sfd.config import ConfigError

# name -> (module, one-line help). Order is pipeline order.
COMMANDS = {
    "validate-config": ("sfd.config", "Validate an experiment YAML and print the resolved config."),
    # -- data and tokenizers (issue 3) --
    # -- semantic encoder and Semantic VAE (issue 3) --
    # -- training and generation engines (issue 4) --
    # -- evaluator (issue 5) --
    # -- workflow (issue 6) --
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sfd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        build_parser().parse_args(argv)  # prints usage / help, exits
        return 2
    name, rest = argv[0], argv[1:]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"sfd {name}", description=help_text)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.main(args) or 0)
    except ConfigError as err:
        print(f"sfd {name}: configuration error: {err}", file=sys.stderr)
        return 2
