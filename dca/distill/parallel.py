"""Data parallelism for dca's own training loop: several processes under ``accelerate launch`` (or ``torchrun``).

Each process holds the whole model and trains on its share of each step's rows (rows ``rank::world`` of the step);
after the backward passes the gradients are summed across the processes (``torch.distributed.all_reduce``: gloo on
the CPU, NCCL on CUDA), so that every process takes the same optimizer step as one process training the whole
global batch would: the loss of each row is divided by the labeled tokens of the whole step, as in one process.
This is DDP's arithmetic (Li et al. 2020, "PyTorch Distributed"); the wrapper itself is not used because the loop
runs the decoder and the LM head separately (:func:`dca.distill.loop.loss_sum`), outside a wrapped ``forward``.
Only the main process (rank 0) writes the run directory; the others read the same checkpoint when continuing, so
several nodes need a shared file system for ``-o``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["DataParallel", "setup"]


@dataclass(frozen=True)
class DataParallel:
    """This process's place: ``rank`` of ``world`` processes, ``local_rank`` on its node (its CUDA device)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """True for the process that writes the run directory and reports progress."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def sum_gradients(self, params) -> None:
        """Sum each parameter's gradient over the processes (a zero gradient for a process that had no rows)."""
        if self.world == 1:
            return
        import torch
        import torch.distributed as dist

        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)

    def sum(self, value: float, device=None) -> float:
        """``value`` summed over the processes (``device``: where the process group reduces, e.g. the CUDA
        device for NCCL, which cannot reduce CPU tensors; None: the CPU)."""
        if self.world == 1:
            return value
        import torch
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return float(t.item())

    def decide(self, fn, device=None):
        """``fn()`` run by the main process only, its result (or the exception it raised) given to every process,
        so that all go on, or all raise, alike (a check of the run directory, which only the main one may clear).
        """
        if self.world == 1:
            return fn()
        import torch.distributed as dist

        box = [None]
        if self.main:
            try:
                box[0] = ("ok", fn())
            except Exception as e:  # every process raises it, not the main one alone
                box[0] = ("error", e)
        dist.broadcast_object_list(box, src=0, device=device)
        kind, value = box[0]
        if kind == "error":
            raise value
        return value


def setup() -> DataParallel:
    """The process group of a multi-process launch (``WORLD_SIZE`` > 1), initialized through accelerate's
    ``PartialState`` (gloo on the CPU, NCCL on CUDA); a single process otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DataParallel()
    import torch.distributed as dist

    if not dist.is_initialized():
        from accelerate import PartialState

        PartialState()
    return DataParallel(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
