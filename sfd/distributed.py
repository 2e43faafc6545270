"""Process-group plumbing shared by training and generation.

One code path serves a laptop and a cluster: under torchrun (single- or multi-node) rank, world
size and the rendezvous come from the environment it sets (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT); without torchrun the process is rank 0 of a world of 1 and no process
group is created. The backend follows the device: NCCL on CUDA, HCCL on Ascend, gloo on CPU.
"""

import contextlib
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from sfd.device import dist_backend, get_device, set_current
from sfd.io import directory_lock


def init(device_kind: str = "auto", timeout_minutes: int = 30) -> torch.device:
    """Join the process group torchrun describes (if any) and return this rank's device."""
    device = get_device(device_kind)
    set_current(device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend=dist_backend(device),
            init_method="env://",
            timeout=timedelta(minutes=timeout_minutes),
            device_id=device if device.type == "cuda" else None,
        )
    return device


@contextlib.contextmanager
def output_lock(directory, sweep: tuple[str, ...] = (".",)):
    """`sfd.io.directory_lock` held by rank 0 (RANK from torchrun's environment, known before the
    process group exists) for the whole job; the other ranks work under it."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield None
        return
    with directory_lock(directory, sweep) as path:
        yield path


def get_rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def print0(*args, **kwargs) -> None:
    """print() on rank 0 only, flushed so that interleaved logs of a cluster job stay readable."""
    if get_rank() == 0:
        print(*args, **kwargs, flush=True)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_(tensor: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """In-place all-reduce that is a no-op in a world of 1."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=op)
    return tensor


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if `flag` is true on at least one (e.g. a signal that reached one rank)."""
    value = torch.tensor([int(flag)], device=device)
    return bool(all_reduce_(value, op=dist.ReduceOp.MAX).item())


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
