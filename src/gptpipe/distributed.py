"""torchrun / DistributedDataParallel: who am I, and how ranks agree.

Under `torchrun --nproc_per_node=N`, each process trains on its own stream
of windows; DDP averages gradients; rank 0 alone writes files, checkpoints
and MLflow data. Without torchrun, everything here is a no-op (world of 1).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device: torch.device) -> World:
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    # gloo on CPU, nccl on CUDA: each backend's home device.
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    world = World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        torch.cuda.set_device(world.local_rank)
    return world


def local_device(device: torch.device, world: World) -> torch.device:
    if device.type == "cuda" and world.size > 1:
        return torch.device("cuda", world.local_rank)
    return device


def gather(obj, world: World) -> list:
    """Every rank's `obj`, in rank order (a collective: all ranks must call it)."""
    if world.size == 1:
        return [obj]
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def weights_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def shutdown(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def micro_batching(batch_size: int, grad_accum: int, world_size: int) -> tuple[int, int]:
    """(micro batch, accumulation steps) per rank that keep the global batch
    (batch_size x grad_accum sequences per step) the same for any world size."""
    from .errors import UserError

    if grad_accum % world_size == 0:
        return batch_size, grad_accum // world_size
    if batch_size % world_size == 0:
        return batch_size // world_size, grad_accum
    raise UserError(f"train.batch_size ({batch_size}) x train.grad_accum ({grad_accum}) "
                    f"cannot be shared evenly by {world_size} processes; make one of them "
                    f"divisible by {world_size}")
