"""Distributed bootstrap that works with torchrun, with no launcher at all, on CUDA (nccl) and on CPU (gloo)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from infra.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job.

    Attributes:
        rank: global rank (0 without a launcher).
        world_size: number of processes (1 without a launcher).
        local_rank: rank on this node, used to pick the CUDA device.
        device: the device this process computes on.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(
    local_rank: int = 0, device: str | None = None, cpu_fallback: bool = False, log: Callable[[str], None] | None = None
) -> torch.device:
    """The device of this process: `device` when given, else CUDA `local_rank` when available, else CPU.

    Args:
        local_rank: this process's rank on its machine (which GPU it takes by default).
        device: an explicit device ("cpu", "cuda:1"), or None.
        cpu_fallback: a CUDA `device` on a machine without CUDA runs on the CPU instead (evaluate.py's
            --device_list, as the reference); otherwise it is an error naming the device.
        log: where the fallback is reported.

    Raises:
        UserError: a CUDA `device` without CUDA, unless `cpu_fallback`.
    """
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    chosen = torch.device(device)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        if not cpu_fallback:
            raise UserError(f"device {device} requested but CUDA is not available on this machine")
        if log is not None:
            log(f"device {device} requested but CUDA is not available; running on cpu")
        chosen = torch.device("cpu")
    return chosen


def setup_distributed(device: str | None = None) -> DistInfo:
    """Initialise torch.distributed when launched by torchrun; a single process otherwise.

    The backend is nccl on CUDA and gloo on CPU, so `torchrun --nproc_per_node 2` also works on a machine
    without a GPU.

    Args:
        device: optional explicit device ("cpu", "cuda:1"); by default CUDA when available.

    Returns:
        The rank, world size, local rank and device of this process.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(local_rank, device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """Wait for every rank; a no-op in a single process."""
    if is_distributed():
        dist.barrier()


def cleanup_distributed() -> None:
    """Tear down the process group if one was created."""
    if is_distributed():
        dist.destroy_process_group()


def all_gather_objects(obj: object) -> list[object]:
    """Gather one picklable object from every rank, in rank order (a one-element list without a launcher)."""
    if not is_distributed():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare network inside DDP, accelerate or torch.compile wrappers.

    The one place that reaches through wrappers; nothing else touches `.module` or `._orig_mod`.
    """
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model
