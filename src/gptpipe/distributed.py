"""torchrun / DistributedDataParallel: who am I, and how ranks agree.

Under `torchrun --nproc_per_node=N` (one machine) or `torchrun --nnodes=M ...`
(several), each process trains on its own stream of windows; DDP averages
gradients; rank 0 alone writes files, checkpoints and MLflow data, so it alone
has the checkpoint, and sends it to the others on a resume. A collective waits
at most GPTPIPE_DIST_TIMEOUT seconds for the others; a process that died or
stopped answering is a one-line error (`lost_contact`), not a hang. Without
torchrun, everything here is a no-op (world of 1).
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import re
import socket
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.distributed as dist

from .errors import UserError

TIMEOUT_ENV = "GPTPIPE_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0  # what a rank waits for the others in one collective


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    hosts: tuple = ()  # every rank's host name, in rank order (for messages)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def who(self, rank: int) -> str:
        host = self.hosts[rank] if rank < len(self.hosts) else ""
        return f"rank {rank}{f' on {host}' if host else ''}"


def timeout_s() -> float:
    """GPTPIPE_DIST_TIMEOUT: seconds a collective waits for the other ranks."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise UserError(f"{TIMEOUT_ENV} must be a number of seconds > 0, got {raw!r}")
    return value


def init(device: torch.device) -> World:
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    # gloo on CPU, nccl on CUDA: each backend's home device.
    backend = "nccl" if device.type == "cuda" else "gloo"
    wait = timeout_s()
    try:
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=wait))
    except Exception as exc:
        raise UserError(f"could not join the other training processes within "
                        f"{wait:g} s ({_reason(exc)}); start torchrun on every node "
                        "with the same --nnodes and rendezvous address") from exc
    world = World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        torch.cuda.set_device(world.local_rank)
    with lost_contact(world):
        hosts = tuple(gather(socket.gethostname(), world))
    return World(world.rank, world.size, world.local_rank, hosts)


def agree(identity: dict, world: World) -> None:
    """Every rank trains on the same params and data, and rank 0 (which writes the
    outputs) runs where `dvc` runs, if any rank does (a collective)."""
    if world.size == 1:
        return
    mine = {"identity": identity, "dvc": bool(os.environ.get("DVC_STAGE"))}
    with lost_contact(world):
        every = gather(mine, world)
    for rank, theirs in enumerate(every[1:], start=1):
        differ = sorted(k for k in set(every[0]["identity"]) | set(theirs["identity"])
                        if every[0]["identity"].get(k) != theirs["identity"].get(k))
        if differ:
            shown = ", ".join(f"{k} ({every[0]['identity'].get(k)!r} on rank 0, "
                              f"{theirs['identity'].get(k)!r})" for k in differ[:3])
            raise UserError(f"{world.who(rank)} trains on other params or data than "
                            f"{world.who(0)}: {shown}; every node needs the same commit "
                            "and data (git pull; dvc pull)")
    if not every[0]["dvc"] and any(r["dvc"] for r in every):
        dvc_rank = next(i for i, r in enumerate(every) if r["dvc"])
        raise UserError(f"rank 0 (which writes models/ and reports/) is on "
                        f"{world.hosts[0] if world.hosts else 'another node'}, not where "
                        f"`dvc` runs ({world.who(dvc_rank)}); start torchrun there with "
                        "--node_rank=0 (static rendezvous: --master_addr=HOST "
                        "--master_port=PORT); c10d numbers the nodes by host name")


def broadcast(obj, world: World):
    """Rank 0's `obj` on every rank (a collective: all ranks must call it)."""
    if world.size == 1:
        return obj
    box = [obj if world.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# What torch.distributed raises when a peer is gone: gloo's closed or reset
# connections, a collective's timeout, NCCL's errors, the store's.
_LOST = re.compile(r"connection (closed|reset|refused)|broken pipe|timed? ?out|gloo|nccl",
                   re.IGNORECASE)


def is_lost_contact(exc: BaseException) -> bool:
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    return isinstance(exc, RuntimeError) and bool(_LOST.search(str(exc)))


def _reason(exc: BaseException) -> str:
    """torch's message, shortened: its first line, without gloo's source location."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", text)
    text = text.split(". ")[0].rstrip(".")  # gloo adds advice on the logs of the others
    return text[:160]


@contextlib.contextmanager
def lost_contact(world: World, resume_hint: Callable[[], str] | None = None
                 ) -> Iterator[None]:
    """Turn torch.distributed's error for a dead or silent peer into one line, which
    ends with `resume_hint()` (asked when the error comes: where to resume from)."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        if world.size == 1 or not is_lost_contact(exc):
            raise
        others = [r for r in range(world.size) if r != world.rank]
        who = world.who(others[0]) if len(others) == 1 else \
            f"one of ranks {', '.join(map(str, others))}"
        hint = resume_hint() if resume_hint else "rerun the same command on every node to resume from " \
                              "rank 0's last checkpoint"
        raise UserError(f"lost contact with another training process ({who}) after "
                        f"waiting at most {timeout_s():g} s ({TIMEOUT_ENV}): "
                        f"{_reason(exc)}; {hint}") from exc


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
    if grad_accum % world_size == 0:
        return batch_size, grad_accum // world_size
    if batch_size % world_size == 0:
        return batch_size // world_size, grad_accum
    raise UserError(f"train.batch_size ({batch_size}) x train.grad_accum ({grad_accum}) "
                    f"cannot be shared evenly by {world_size} processes; make one of them "
                    f"divisible by {world_size}")
