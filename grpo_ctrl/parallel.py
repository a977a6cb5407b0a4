"""Process-level parallel context: which prompts this rank owns and how sums cross ranks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import torch
from omegaconf import MISSING
from torch import nn


class Backend(StrEnum):
    auto = "auto"  # gloo for CPU tensors, plus nccl for CUDA tensors on GPU
    gloo = "gloo"
    nccl = "nccl"


@dataclass
class ParallelConfig:
    name: str = MISSING  # the option (`parallel=single|dp|ddp`): set by its schema


@dataclass
class SingleConfig(ParallelConfig):
    """parallel=single: one process."""

    name: str = "single"


@dataclass
class DPConfig(ParallelConfig):
    """parallel=dp: one process, VLM replicas on several devices; rollouts are scattered across them."""

    name: str = "dp"
    devices: list[str] = field(default_factory=list)  # replica devices, e.g. [cuda:0, cuda:1]; []: every CUDA device


@dataclass
class DDPConfig(ParallelConfig):
    """parallel=ddp: one process per device; under torchrun or SLURM the ranks come from the environment."""

    name: str = "ddp"
    nproc: int = 2  # worker processes to start when not under torchrun / SLURM
    backend: Backend = Backend.auto


@dataclass
class ParallelContext:
    """Single process. Subclasses override the collective operations."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, module: nn.Module) -> nn.Module:
        return module

    def shard(self, items: Sequence) -> list:
        """This rank's items, strided, without the padding duplicates of DistributedSampler."""
        return list(items[self.rank::self.world_size])

    def unshard(self, mine: Sequence) -> list:
        """The inverse of `shard`: every rank's share (one value per item of its shard) put back in item order, on
        every rank."""
        parts = self.all_gather_objects(list(mine))
        out: list = [None] * sum(map(len, parts))
        for rank, part in enumerate(parts):
            out[rank::self.world_size] = part
        return out

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        return values

    def all_gather_objects(self, obj) -> list:
        return [obj]

    def broadcast_object(self, obj):
        """Rank 0's value on every rank."""
        return obj

    def barrier(self) -> None:
        pass

    def close(self) -> None:
        pass


def dp_devices(requested: Sequence[str]) -> list[torch.device]:
    """Replica devices for parallel=dp: the listed ones, or every visible CUDA device when none are listed."""
    if requested:
        return [torch.device(d) for d in requested]
    n = torch.cuda.device_count()
    if n < 2:
        raise RuntimeError(f"parallel=dp needs >= 2 CUDA devices, found {n}; use parallel=single or parallel=ddp, "
                           "or parallel.devices=[cpu,cpu] to test with CPU replicas")
    return [torch.device("cuda", i) for i in range(n)]


def make_replicas(vlm, devices: Sequence[torch.device]) -> list:
    """One VLMAdapter per device; the first device gets `vlm` itself."""
    import copy

    vlm.model.to(devices[0])
    return [vlm] + [_replica(copy.deepcopy(vlm), d) for d in devices[1:]]


def _replica(vlm, device: torch.device):
    vlm.model.to(device)
    return vlm


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher_environment() -> str | None:
    """Which launcher started this process: 'torchrun' (rank env vars present), 'slurm' (several tasks), or None."""
    import os

    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return "torchrun"
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        return "slurm"
    return None


def export_slurm_environment() -> None:
    """Ranks from the SLURM environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) via submitit."""
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


class DistributedContext(ParallelContext):
    """One process per device (torch.distributed). Ranks come from the environment (torchrun, SLURM or
    our own launcher). The controller and everything it trains on live on the CPU in every mode (it is tiny and
    decides on the CPU at serving time too), so its gradients and the logged sums travel over gloo; with the
    VLM on GPUs the group is `cpu:gloo,cuda:nccl`, so CUDA tensors go over nccl."""

    def __init__(self, backend: str = "auto", device: str = "cpu"):
        import os

        import torch.distributed as dist

        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        dev = torch.device(device)
        if dev.type == "cuda":
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
            torch.cuda.set_device(dev)
        if dev.type == "cuda" and backend in ("auto", "nccl"):
            backend = "cpu:gloo,cuda:nccl"
        elif backend == "auto":
            backend = "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, rank=rank, world_size=world)
        super().__init__(rank=rank, world_size=world, device=dev)
        self._wrapped: list[nn.Module] = []

    def wrap(self, module: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(module)  # a CPU module: gradients all-reduced over gloo
        self._wrapped.append(ddp)
        return ddp

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = values.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def all_gather_objects(self, obj) -> list:
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj):
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def close(self) -> None:
        """Drop DDP modules and collect garbage before destroying the group: otherwise ~30% of gloo runs
        abort at exit with 'terminate called without an active exception'."""
        import gc

        import torch.distributed as dist

        self._wrapped.clear()
        gc.collect()
        if dist.is_initialized():
            dist.destroy_process_group()
