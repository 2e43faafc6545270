"""Read DiT weights from any of the released / training checkpoint layouts (docs/method.md §2.7, §7.5).

Three layouts exist: `{'ema': state_dict}` (our EMA exports and, probably, the released files),
a full training dict `{'model', 'ema', 'opt', 'config', ...}`, and a bare state dict. Only the EMA
is ever sampled, so `ema` is the default entry.

Every checkpoint, ours or released, is read by `safe_load`: `torch.load(weights_only=True)` with an
allowlist of exactly the classes the official training code pickles besides tensors (the OmegaConf
`config` of its training dicts). Nothing is ever unpickled with `weights_only=False`, so a file from
anywhere cannot run code; a file needing another class is refused with that class named.
"""

import collections
import os
import pickle
import re
import typing
from pathlib import Path

import torch
from torch import nn

from sfd.errors import UserError, first_line

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read, or that does not fit the model it is loaded into."""


def first_mismatch(expected: dict, found: dict) -> str | None:
    """The first key (module order, then file order) where `found` does not fit `expected`.

    One disagreeing key in the module's own order says more about a wrong architecture than
    torch's unordered lists of every missing and unexpected key.
    """
    for key, tensor in expected.items():
        if key not in found:
            return f"missing key '{key}'"
        if tuple(found[key].shape) != tuple(tensor.shape):
            return (
                f"key '{key}' has shape {list(found[key].shape)} in the checkpoint, "
                f"expected {list(tensor.shape)}"
            )
    for key in found:
        if key not in expected:
            return f"unexpected key '{key}'"
    return None


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], source) -> None:
    """`module.load_state_dict(state)`, raising CheckpointError naming `source` and the first misfit key."""
    mismatch = first_mismatch(module.state_dict(), state)
    if mismatch is not None:
        raise CheckpointError(f"{source}: architecture mismatch: {mismatch}")
    module.load_state_dict(state)


def pickled_globals() -> list:
    """The classes besides tensors that the official checkpoints pickle, and nothing else.

    The official `train.py` saves its OmegaConf `config` (a DictConfig read by `OmegaConf.load`:
    DictConfig/ListConfig of AnyNode values, their metadata, and the types the metadata names).
    The Semantic VAE trainer stores its config as a YAML string and the LDM/Lightning texture VAE
    file plain dicts, so they need nothing here.
    """
    from omegaconf import DictConfig, ListConfig
    from omegaconf.base import ContainerMetadata, Metadata
    from omegaconf.nodes import AnyNode

    return [
        DictConfig,
        ListConfig,
        ContainerMetadata,
        Metadata,
        AnyNode,
        typing.Any,
        collections.defaultdict,
        dict,
        list,
        int,
    ]


def safe_load(path) -> object:
    """`torch.load(path, weights_only=True)` on the CPU with `pickled_globals()` allowed.

    Raises CheckpointError naming the file: for a damaged file, and for one that pickles any other
    class (named in the message), which is never loaded unsafely.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with torch.serialization.safe_globals(pickled_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        pickled = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if pickled is None:
            raise CheckpointError(
                f"{path}: not a readable torch checkpoint (unpickling failed: corrupt, or "
                "another kind of file)"
            ) from None
        raise CheckpointError(
            f"{path}: pickles {pickled[1]}, which is not among the classes the released checkpoints need "
            "(sfd.checkpoint.pickled_globals); it is not loaded, since unpickling it could run code. "
            "Re-save the tensors only, or add that class to pickled_globals if the file is trusted."
        ) from None
    except Exception as err:
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint (truncated or corrupt?): {type(err).__name__}: "
            f"{first_line(err)}"
        ) from None


def _strip_wrappers(name: str) -> str:
    """Drop DDP (`module.`) and torch.compile (`_orig_mod.`) prefixes, in any nesting."""
    while name.startswith(_WRAPPER_PREFIXES):
        name = name.split(".", 1)[1]
    return name


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def load_weights(path, *, key: str = "ema") -> dict[str, torch.Tensor]:
    """The state dict stored in `path` (entry `key` of a wrapping dict, or the bare state dict),
    on the CPU, with wrapper prefixes stripped. Raises CheckpointError naming the file."""
    path = Path(path)
    obj = safe_load(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(obj).__name__}")
    if key in obj:
        obj = obj[key]
        where = f"{path}[{key!r}]"
        if not _is_state_dict(obj):
            raise CheckpointError(f"{where}: is not a non-empty state dict of tensors")
    elif not _is_state_dict(obj):
        raise CheckpointError(
            f"{path}: has no {key!r} entry and is not a bare state dict; "
            f"top-level keys: {', '.join(map(str, obj)) or '(none)'}"
        )
    state = {}
    for name, tensor in obj.items():
        stripped = _strip_wrappers(name)
        if stripped in state:
            raise CheckpointError(
                f"{path}: key {name!r} collides with another after removing wrapper prefixes"
            )
        state[stripped] = tensor
    return state


def load_into(
    model: nn.Module,
    path_or_state,
    *,
    strict: bool = True,
    key: str = "ema",
):
    """Load a checkpoint file (or an in-memory state dict) into `model`.

    Before touching the model, compares names and shapes and raises CheckpointError naming the
    source, the first missing and first unexpected key (when `strict`) and the first shape
    mismatch as expected-vs-got. Returns load_state_dict's (missing, unexpected) result.
    """
    if isinstance(path_or_state, (str, os.PathLike)):
        source = str(path_or_state)
        state = load_weights(path_or_state, key=key)
    else:
        source = "<state dict>"
        state = {_strip_wrappers(k): v for k, v in path_or_state.items()}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = []
    if strict and missing:
        problems.append(f"{len(missing)} missing keys (first: {missing[0]!r})")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (first: {unexpected[0]!r})")
    if mismatched:
        k = mismatched[0]
        problems.append(
            f"{len(mismatched)} shape mismatches (first: {k!r} expected {list(expected[k].shape)}, "
            f"got {list(state[k].shape)})"
        )
    if problems:
        raise CheckpointError(f"{source}: does not fit {type(model).__name__}: " + "; ".join(problems))
    return model.load_state_dict(state, strict=strict)
