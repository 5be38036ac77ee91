"""Ranks for a sharded eval: join the torchrun group (gloo: a few barriers are all an eval needs).

    ctx = init_distributed()      # DistContext(rank, world_size); world_size 1 without torchrun
    ctx.barrier(); ctx.sum(n)
    shutdown_distributed(ctx)     # then leave with os._exit (gloo can abort in its exit-time destructors)
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # this process initialised the group, so it also tears it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def sum(self, value: int) -> int:
        """``value`` summed over ranks (every rank gets the total)."""
        if self.world_size == 1:
            return value
        total = torch.tensor([value], dtype=torch.long)
        dist.all_reduce(total)
        return int(total.item())


def init_distributed() -> DistContext:
    """Join the torchrun group when ``WORLD_SIZE`` > 1 (gloo: barriers only, so CPU and GPU alike)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
        owns = True
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), owns_group=owns)


def shutdown_distributed(ctx: DistContext) -> None:
    """Barrier, then destroy the group this process created. The caller should then leave with ``os._exit``:
    two-process gloo runs sometimes abort in their exit-time destructors after all work is done, which
    would turn a finished run into a failed exit status."""
    if ctx.world_size > 1 and ctx.owns_group:
        dist.barrier()
        dist.destroy_process_group()
