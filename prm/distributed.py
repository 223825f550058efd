"""Processes and ranks: start the process group for ``distributed=zero*``, build DeepSpeed's config.

Launch with ``torchrun --nproc_per_node N train.py distributed=zero2 ...``; a plain ``python
train.py distributed=zero2`` runs as a world of one (the launcher variables are filled in). On CPU
the DeepSpeed accelerator is set to ``cpu`` and the backend to gloo; on CUDA, nccl.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    deepspeed: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    """A TCP port free on this machine now (for a rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def setup(cfg: DictConfig, device: str) -> World:
    """Join (or create) the process group the configuration asks for."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.distributed.name == "none":
        if launched > 1:
            raise ValueError(
                f"started as {launched} processes but distributed=none; add distributed=zero1|zero2|zero3"
            )
        return World()
    if not str(device).startswith("cuda"):
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed is first imported
    if "RANK" not in os.environ:  # no launcher: a world of one
        os.environ.update(
            RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())
        )
    import deepspeed

    backend = cfg.distributed.backend
    if backend == "auto":
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend=backend)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if str(device).startswith("cuda"):
        torch.cuda.set_device(local_rank)
    return World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=local_rank, deepspeed=True)


def deepspeed_config(cfg: DictConfig) -> dict:
    """DeepSpeed's config: ``distributed.deepspeed`` (which interpolates batch size, accumulation and
    clipping from the rest of the config) plus bf16 from ``train.precision``."""
    config = OmegaConf.to_container(cfg.distributed.deepspeed, resolve=True)
    config["bf16"] = {"enabled": cfg.train.precision == "bf16"}
    return config


def average(tensors) -> None:
    """In-place mean over ranks (no-op in a world of one)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        for tensor in tensors:
            dist.all_reduce(tensor)
            tensor.div_(dist.get_world_size())


def broadcast_object(value, src: int = 0):
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def same_on_every_rank(tensors) -> float:
    """Largest difference between this rank's tensors and rank 0's (0.0 in a world of one)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return 0.0
    worst = torch.zeros(())
    for tensor in tensors:
        reference = tensor.detach().clone()
        dist.broadcast(reference, src=0)
        worst = torch.maximum(worst, (tensor.detach() - reference).abs().max().cpu())
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst)
