"""Multi-process training on PyTorch's own engine.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address; :meth:`DistInfo.from_env`
joins the process group (NCCL when this rank trains on CUDA, gloo on CPU; ``UNIDM_BACKEND`` overrides) and the loop
wraps the loss in DistributedDataParallel. One process (no ``WORLD_SIZE``, or 1) touches none of it, so the same
``unidm train`` runs either way. The few collectives the loop needs beyond DDP's gradient all-reduce live here,
each written so that one process costs nothing.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistInfo", "resolve_device"]


def resolve_device(name: str, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """``auto`` is CUDA when present; with several processes, CUDA means this process's GPU ``cuda:LOCAL_RANK``."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here; use --device cpu")
    wants_cuda = name == "cuda" or name.startswith("cuda:") or (name == "auto" and torch.cuda.is_available())
    if not wants_cuda:
        return torch.device("cpu" if name == "auto" else name)
    if world_size == 1:
        return torch.device(name if name.startswith("cuda") else "cuda")
    if name.startswith("cuda:"):
        raise ValueError(f"device {name!r}: under torchrun each process takes GPU LOCAL_RANK; pass --device cuda "
                         "and choose GPUs with CUDA_VISIBLE_DEVICES")
    return torch.device("cuda", local_rank)


@dataclass
class DistInfo:
    """This process's place in the job: ``rank`` of ``world_size``, and its ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # we initialised the process group, so we tear it down
    comm_device: torch.device = torch.device("cpu")  # where collectives' tensors live (CUDA for NCCL)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device_name: str = "auto") -> "DistInfo":
        """Join the process group that ``torchrun`` describes in the environment (or stay a single process)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = resolve_device(device_name, local, world)
        owns = False
        if not dist.is_initialized():
            backend = os.environ.get("UNIDM_BACKEND") or ("nccl" if device.type == "cuda" else "gloo")
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group(backend)
            owns = True
        comm = device if dist.get_backend() == "nccl" else torch.device("cpu")
        return cls(dist.get_rank(), dist.get_world_size(), local, owns, comm)

    def device(self, name: str) -> torch.device:
        return resolve_device(name, self.local_rank, self.world_size)

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """DistributedDataParallel around ``module``; it broadcasts rank 0's parameters and buffers on entry."""
        if self.world_size == 1:
            return module
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def no_sync(self, module: nn.Module):
        """Skip DDP's gradient all-reduce (for all but the last micro-batch of an accumulated step)."""
        return module.no_sync() if self.world_size > 1 and hasattr(module, "no_sync") else contextlib.nullcontext()

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def all_sum(self, values: list[float] | torch.Tensor) -> list[float]:
        """Sum a few numbers over ranks (float64); one collective, one host sync."""
        t = torch.as_tensor(values, dtype=torch.float64)
        if self.world_size > 1:
            t = t.to(self.comm_device)
            dist.all_reduce(t)
        return t.cpu().tolist()

    def broadcast_int(self, value: int) -> int:
        """Rank 0's ``value`` on every rank."""
        if self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self.comm_device)
        dist.broadcast(t, src=0)
        return int(t.item())

    def gather_strings(self, text: str, length: int = 64) -> list[str]:
        """Every rank's ``text`` (ASCII, at most ``length`` characters), in rank order."""
        if self.world_size == 1:
            return [text]
        codes = list(text.encode("ascii")[:length].ljust(length, b" "))
        t = torch.tensor(codes, dtype=torch.int64, device=self.comm_device)
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(out, t)
        return [bytes(o.cpu().tolist()).decode("ascii").rstrip() for o in out]

    def close(self) -> None:
        """Leave the process group if :meth:`from_env` created it."""
        if self.owns_group and dist.is_initialized():
            # Free the DistributedDataParallel wrapper (it sits in reference cycles) and with it the last references
            # to gloo's work objects now, while the interpreter is whole: left to interpreter shutdown, gloo's
            # threads release tensors after Python is gone and the process aborts ("terminate called without an
            # active exception", SIGABRT) after a finished run. Then every rank leaves together.
            import gc

            gc.collect()
            dist.barrier()
            dist.destroy_process_group()
            gc.collect()
            self.owns_group = False
