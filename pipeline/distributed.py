"""One process, or one of N under torchrun (DDP): the process group, this rank's device, its share of a batch.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them everything here is a no-op for a single process.
Backend: NCCL on CUDA, gloo on the CPU (how the tests run two processes on one machine).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from pipeline.batches import pick_device


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Only the main process writes outputs and logs per-epoch results."""
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's rows of a global batch of `n` (every rank sees the same global batch)."""
        per_rank = -(-n // self.size)
        return slice(self.rank * per_rank, min(n, (self.rank + 1) * per_rank))

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def gather_rows(self, array: np.ndarray) -> np.ndarray | None:
        """Every rank's `array` (its `shard` of some rows) stacked in rank order, on rank 0; None on the others."""
        if self.size == 1:
            return array
        parts = [None] * self.size if self.is_main else None
        dist.gather_object(array, parts, dst=0)
        return np.concatenate(parts) if self.is_main else None

    def broadcast_object(self, obj):
        """Rank 0's `obj` on every rank (what the others pass is ignored): one decision, the same everywhere."""
        if self.size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def torchrun_command(nproc_per_node: int, module: str, argv: list[str]) -> list[str] | None:
    """The argument list that re-runs `python -m module argv` as `nproc_per_node` DDP processes on this machine.

    None when this process should do the work itself: one process asked for, or already started by torchrun.
    An argument list, never a shell string: no setting reaches a shell.
    """
    if nproc_per_node == 1 or "WORLD_SIZE" in os.environ:
        return None
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}",
            "-m", module, *argv]  # fmt: skip


def join_world() -> World:
    """Join torchrun's process group if launched by it; pick CUDA (this rank's GPU) when present, else the CPU."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(device=pick_device())
    cuda = pick_device().type == "cuda"
    local_rank = int(os.environ["LOCAL_RANK"])
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return World(rank=dist.get_rank(), size=dist.get_world_size(), device=device)


def leave_world() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
