"""sfd-repro: Semantic-First Diffusion (arXiv 2512.04926) as a reproducible pipeline.

Submodules are imported lazily by the command line so that, e.g., the TensorFlow evaluator
never shares a process with torch's compiler stack (see README, "Environments").
"""

__version__ = "0.1.0"
