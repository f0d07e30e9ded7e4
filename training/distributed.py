"""Process-group set-up for ``torchrun`` and gradient/metric reductions.

Under ``torchrun --nproc_per_node N`` the environment holds ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`setup` then initialises ``gloo`` (CPU) or ``nccl`` (CUDA). Without them
everything is a single process and the helpers are no-ops.

Gradients are summed explicitly with one flat all-reduce after ``backward`` (the loss of each
rank is already normalised by the *global* batch counts, see :mod:`training.loss`). This is what
``DistributedDataParallel`` does, without its hooks, which do not cope with the double backward
of a force loss.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "all_reduce_gradients",
    "all_reduce_sum",
    "barrier",
    "broadcast_module",
    "cleanup",
    "setup",
]


@dataclass(frozen=True)
class DistInfo:
    """Rank of this process, number of processes, local rank on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str) -> tuple[DistInfo, torch.device]:
    """Initialise the process group when launched by torchrun; return the rank info and the
    device this rank uses (``cuda:LOCAL_RANK`` for CUDA runs)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(), torch.device(device)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = torch.device(device).type == "cuda"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        this_device = torch.device("cuda", local_rank)
    else:
        this_device = torch.device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(minutes=30),
        )
    return DistInfo(rank, world_size, local_rank), this_device


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (returns a new tensor on the input's device)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    out = values.clone()
    if dist.get_backend() == "nccl" and out.device.type != "cuda":
        out = out.cuda()
    dist.all_reduce(out)
    return out.to(values.device)


def all_reduce_gradients(parameters: list[torch.nn.Parameter]) -> None:
    """Sum the gradients of all ranks in place (missing gradients count as zero)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for parameter in parameters:
        size = parameter.numel()
        parameter.grad = flat[offset : offset + size].view_as(parameter).clone()
        offset += size


def broadcast_module(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (no-op when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    with torch.no_grad():
        for value in module.state_dict().values():
            dist.broadcast(value, src=0)
