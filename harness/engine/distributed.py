"""The process group a run trains in: torchrun's environment, rank 0's decisions, errors, timeouts.

A plain ``python -m harness run`` is the world-size-1 group: every method below is then a
no-op or an identity, so the runner and the training loop have one code path. Under
``torchrun`` the group is initialised from its environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``), NCCL on CUDA and gloo on CPU. Control
traffic (rank 0's decisions, the stop flag on preemption) goes over a separate gloo group
on the CPU, so it never forces a GPU sync.

Every collective has a timeout (``MIXBENCH_DIST_TIMEOUT_S``, default 600 s): a rank that is
alive but stuck ends the run instead of hanging it. A failure does not wait for it: a rank
that fails posts its error in the rendezvous key-value store, and the first rank to post
records the failure itself (the one write a rank other than 0 makes) and exits at once. Its
exit closes its connections, so peers blocked in a gloo collective fail within moments, and
torchrun, seeing a rank exit non-zero, stops the others (an NCCL collective, which would not
notice a dead peer, is ended that way).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

TIMEOUT_ENV = "MIXBENCH_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600.0
ERROR_KEY = "error"
DECISION_TIMEOUT_ENV = "MIXBENCH_DECISION_TIMEOUT_S"
DEFAULT_DECISION_TIMEOUT_S = 24 * 3600.0


def _seconds_from_env(name: str, default: float) -> timedelta:
    raw = os.environ.get(name, "")
    try:
        seconds = float(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number of seconds") from None
    return timedelta(seconds=seconds)


def timeout_from_env() -> timedelta:
    return _seconds_from_env(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)


@dataclass
class Group:
    """This process's place in the run: rank, world size, and the collectives the harness uses."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    timeout: timedelta = field(default_factory=timeout_from_env)
    _control: Any = None  # the gloo group for CPU control traffic
    _kv: Any = None  # the rendezvous key-value store, for posted errors

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def device(self, requested: torch.device) -> torch.device:
        """Under torchrun each rank takes the GPU of its local rank; on CPU nothing changes."""
        if self.distributed and requested.type == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return requested

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (any picklable object)."""
        if not self.distributed:
            return value
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0, group=self._control)
        return box[0]

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank (e.g. a preemption signal seen by one)."""
        if not self.distributed:
            return flag
        t = torch.tensor([int(flag)], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self._control)
        return bool(t.item())

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of ``tensor`` over ranks (on its own device, NCCL or gloo)."""
        if not self.distributed:
            return tensor
        out = tensor.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out / self.world_size

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(group=self._control)

    def post_failure(self, message: str) -> tuple[str, bool]:
        """(the cell's error, whether this rank records it): the first rank to post its error wins.

        Posted through the rendezvous store, which outlives every rank, so a rank that fails only
        because a peer died (its collective broke) finds the real cause already there and leaves
        it alone. World size 1, or no store reachable: this rank's own error, recorded here.
        """
        if not self.distributed:
            return message, True
        mine = f"rank {self.rank}: {message}"
        try:
            first = self._kv.compare_set(ERROR_KEY, "", mine).decode()
        except Exception:
            return mine, True
        return first, first == mine

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def init_from_env() -> Group:
    """The group torchrun describes in the environment; world size 1 (no init) without it."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Group()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    timeout = timeout_from_env()
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, timeout=timeout)
    # rank 0's decisions can wait on its evaluation and writes, hence a longer timeout
    control = dist.new_group(
        backend="gloo", timeout=_seconds_from_env(DECISION_TIMEOUT_ENV, DEFAULT_DECISION_TIMEOUT_S)
    )
    kv = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False, timeout=timeout
    )
    kv = dist.PrefixStore("mixbench", kv)
    return Group(rank=rank, world_size=world_size, local_rank=local_rank, timeout=timeout, _control=control, _kv=kv)
