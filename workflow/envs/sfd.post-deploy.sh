#!/usr/bin/env bash
# Install the repository's `sfd` package (no dependencies: sfd.yaml has them) into the new conda
# environment. Snakemake runs this from its working directory, the repository root.
set -euo pipefail
pip install --no-deps --no-build-isolation -e .
