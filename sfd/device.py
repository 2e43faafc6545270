"""One small device layer for CUDA, Ascend NPU and CPU.

Everything else asks this module for a `torch.device`, an autocast context, the
torch.distributed backend and a synchronize call, so no `torch.cuda.*` is hard-coded elsewhere.
torch_npu is imported only when an NPU is requested (or probed by `auto`), because importing it
patches torch globally.
"""

import contextlib
import importlib.util
import os

import torch

_KINDS = ("auto", "cpu", "cuda", "npu")


def _import_npu():
    try:
        import torch_npu  # noqa: F401  (registers the 'npu' device type)
    except ImportError as err:
        raise RuntimeError(
            "device 'npu' requested but torch_npu is not installed; install the `npu` extra "
            "(pip install 'sfd-repro[npu]') matching your CANN version"
        ) from err


def npu_available() -> bool:
    if importlib.util.find_spec("torch_npu") is None:
        return False
    _import_npu()
    return torch.npu.is_available()


def get_device(kind: str = "auto", local_rank: int | None = None) -> torch.device:
    """The device this process should use; `local_rank` defaults to $LOCAL_RANK (torchrun)."""
    if kind not in _KINDS:
        raise ValueError(f"unknown device {kind!r}; expected one of {_KINDS}")
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "npu" if npu_available() else "cpu"
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but torch.cuda.is_available() is False")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    _import_npu()
    if not torch.npu.is_available():
        raise RuntimeError("device 'npu' requested but no Ascend NPU is visible")
    return torch.device("npu", local_rank % torch.npu.device_count())


def set_current(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif device.type == "npu":
        torch.npu.set_device(device)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where the hardware runs it natively (Ampere+ CUDA, Ascend); None = plain fp32."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device.type == "npu":
        return torch.bfloat16
    return None


def autocast(device: torch.device, enabled: bool = True):
    """Mixed-precision context for the forward pass (a no-op on CPU and on fp32-only GPUs)."""
    dtype = autocast_dtype(device)
    if not enabled or dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def dist_backend(device: torch.device) -> str:
    return {"cuda": "nccl", "npu": "hccl"}.get(device.type, "gloo")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "npu":
        torch.npu.synchronize(device)
