"""Strict state-dict loading whose error names the file and the first key that does not fit.

A checkpoint built for another architecture fails loudly at its first disagreeing key, in the
module's own key order, instead of torch's unordered list of every missing and unexpected key.
"""

import torch
from torch import nn


def first_mismatch(expected: dict, found: dict) -> str | None:
    """Describe the first key (module order, then file order) where `found` differs from `expected`."""
    for key, tensor in expected.items():
        if key not in found:
            return f"missing key '{key}'"
        if tuple(found[key].shape) != tuple(tensor.shape):
            return f"key '{key}' has shape {tuple(found[key].shape)}, expected {tuple(tensor.shape)}"
    for key in found:
        if key not in expected:
            return f"unexpected key '{key}'"
    return None


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], source) -> None:
    """`module.load_state_dict(state)`, raising ValueError('{source}: ... key ...') on any mismatch."""
    mismatch = first_mismatch(module.state_dict(), state)
    if mismatch is not None:
        raise ValueError(f"{source}: architecture mismatch: {mismatch}")
    module.load_state_dict(state)
