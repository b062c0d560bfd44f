"""Devices and DDP for fine-tuning: where a process runs, its process group, its shard.

* :func:`init_distributed` joins the process group ``torchrun`` describes (gloo on CPU,
  nccl on CUDA) and :func:`destroy_distributed` leaves it;
* :func:`resolve_device`;
* :class:`ShardSampler`: evaluation shards without padding, so metrics summed over
  processes equal a single-process run.

(The model inside DDP, EMA and ``torch.compile`` wrappers: ``timm.utils.unwrap_model``.)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = [
    "DistributedContext",
    "init_distributed",
    "destroy_distributed",
    "resolve_device",
    "ShardSampler",
]

@dataclass(frozen=True)
class DistributedContext:
    """Where this process runs: ``rank`` of ``world_size`` processes on ``device``.

    ``is_main`` is True on rank 0, the one process that prints and writes files.
    ``distributed`` is True when a process group is initialised (``torchrun``).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    distributed: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: Optional[str] = None, local_rank: int = 0) -> torch.device:
    """``"auto"``/``None`` -> CUDA when available else CPU; ``"cuda"`` -> this rank's GPU.

    Raises:
        ValueError: when CUDA is asked for but not available.
    """
    name = (device or "auto").lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} was asked for but CUDA is not available here; use --device cpu.")
        if name == "cuda":
            name = f"cuda:{local_rank}"
    return torch.device(name)


def init_distributed(device: Optional[str] = None, backend: Optional[str] = None) -> DistributedContext:
    """Join the process group ``torchrun`` describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).

    Without those variables (a plain ``python``/``hcast`` call) this returns a
    single-process context and starts nothing. The backend is ``nccl`` on CUDA and
    ``gloo`` on CPU unless ``backend`` says otherwise. Rendezvous uses torchrun's
    ``MASTER_ADDR``/``MASTER_PORT`` (localhost by default).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size <= 1:
        return DistributedContext(device=dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend or ("nccl" if dev.type == "cuda" else "gloo"))
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, distributed=True)


def destroy_distributed() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class ShardSampler(Sampler[int]):
    """Evaluation sampler: rank ``r`` of ``w`` reads indices ``r, r+w, r+2w, ...``.

    Unlike ``DistributedSampler`` it never pads with repeated samples, so metrics
    gathered over all ranks count every image exactly once and equal a
    single-process evaluation (shards may differ in length by one).
    """

    def __init__(self, dataset_len: int, rank: int = 0, world_size: int = 1) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank/world_size: expected 0 <= rank < world_size, got rank={rank}, world_size={world_size}.")
        self.dataset_len, self.rank, self.world_size = dataset_len, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.dataset_len, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.dataset_len, self.world_size))
