"""Multi-process training on PyTorch's own engine: ``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK, and the loop
wraps the loss in DistributedDataParallel (gloo on CPU, NCCL on CUDA). One process needs none of it."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistInfo"]


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "DistInfo":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() and os.environ.get("UNIDM_BACKEND") != "gloo" else "gloo"
            dist.init_process_group(backend)
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    def device(self, name: str) -> torch.device:
        if name in ("auto", "cuda") and torch.cuda.is_available() and dist.get_backend() == "nccl":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but CUDA is not available here")
        return torch.device("cpu") if name == "auto" else torch.device(name)

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def no_sync(self, module: nn.Module):
        return module.no_sync() if self.world_size > 1 and hasattr(module, "no_sync") else contextlib.nullcontext()

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def mean(self, value: float) -> float:
        if self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t) / self.world_size
