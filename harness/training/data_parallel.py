"""Data-parallel training across processes launched by ``accelerate launch`` or ``torchrun``.

Every process holds the whole model and trains on its own slice of each optimizer step's episodes: the global
batch is ``train.grad_accum × world size`` episodes, taken in the same order a single process takes them. Each
process tokenizes the whole global group (cheap), so every loss is normalised by the global count of target
tokens, and summing the gradients over processes (``torch.distributed.all_reduce``) gives exactly the gradient a
single process computes on the whole group; every process then makes the same optimizer step. Process 0 alone
writes logs, checkpoints and the trained weights.
"""
from __future__ import annotations

import torch

from harness.sharding import world_position


class DataParallel:
    def __init__(self) -> None:
        self.rank, self.world, self.local_rank = world_position()
        self._dist = None
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():  # torchrun / accelerate export MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE
                dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            self._dist = dist

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> str:
        """One GPU per process under ``backbone.device=auto``."""
        if self.world > 1 and requested == "auto" and torch.cuda.is_available():
            return f"cuda:{self.local_rank % torch.cuda.device_count()}"
        return requested

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        if self._dist is None:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        self._dist.all_reduce(flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n

    def sum(self, values: list[float]) -> list[float]:
        if self._dist is None:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        self._dist.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        """True on every process when it is true on one (a stop decided by one clock must stop them all)."""
        return bool(self.sum([float(flag)])[0]) if self._dist is not None else flag

    def barrier(self) -> None:
        if self._dist is not None:
            self._dist.barrier()

    def close(self) -> None:
        if self._dist is not None and self._dist.is_initialized():
            self._dist.destroy_process_group()
