"""One small device layer for CUDA, Ascend NPU and CPU.

Everything else asks this module for a `torch.device`, an autocast context, the
torch.distributed backend and a synchronize call, so no `torch.cuda.*` is hard-coded elsewhere.
torch_npu is imported only when an NPU is requested (or probed by `auto`), because importing it
patches torch globally.
"""

import contextlib
import importlib.util
import logging
import os

import torch

log = logging.getLogger("sfd.device")

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


def set_tf32(enabled: bool) -> None:
    """TF32 matmuls and convolutions on Ampere+ GPUs (fp32 inputs, 10-bit mantissa products).
    The official SFD inference turns it on; EDM2 and our training keep it off."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


# ----------------------------------------------------------------------------
# torch.compile with a fallback to eager.


class Compiled:
    """Calls `module` through torch.compile; if the compiled call fails where the eager one works
    (no C++ compiler, no triton, an unsupported backend), warns once and stays eager.

    Attribute reads (`training`, `eval()`, `y_embedder`, ...) go to the module itself, so the
    wrapper stands in for it wherever it is only called; its state_dict keys are unchanged.
    An error the eager module raises as well (a bad input shape) propagates unchanged.
    """

    def __init__(self, module: torch.nn.Module, what: str):
        self.module, self.what = module, what
        self.compiled = torch.compile(module)

    def __getattr__(self, name):
        if "module" not in self.__dict__:  # half-built (copy, unpickling)
            raise AttributeError(name)
        return getattr(self.__dict__["module"], name)

    def __call__(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as err:
                out = self.module(*args, **kwargs)  # raises here if the input itself is bad
                log.warning("%s: torch.compile failed (%s); running eager", self.what, _root_cause(err))
                self.compiled = None
                return out
        return self.module(*args, **kwargs)


def _root_cause(err: BaseException) -> str:
    """'Type: first line' of the innermost cause (the compiler's own error, not dynamo's wrapper)."""
    while (inner := getattr(err, "inner_exception", None) or err.__cause__) is not None:
        err = inner
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def maybe_compile(module: torch.nn.Module, enabled: bool, what: str):
    """`Compiled(module)` when `enabled`, else the module itself."""
    return Compiled(module, what) if enabled else module


# ----------------------------------------------------------------------------
# Peak throughput, for model-FLOPs utilisation.

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets; the first
# entry whose key is in the device name wins, so PCIe variants come before their SXM names.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H800 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("H800", 989.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("4090", 165.0),
    ("Ascend910B", 320.0),  # Ascend 910B2/B3 fp16/bf16 as commonly quoted; the variants differ by ~15 %
)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "npu":
        return torch.npu.get_device_name(device)
    return "cpu"


def peak_bf16_flops(name: str) -> float | None:
    """Peak dense bf16 FLOP/s of a device called `name` (CUDA/NPU device name), None if unknown."""
    squeezed = name.replace(" ", "").lower()
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.replace(" ", "").lower() in squeezed:
            return tflops * 1e12
    return None
