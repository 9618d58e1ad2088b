"""Communicators: the few collectives a checkpoint written by many processes
needs (all-gather, gather, broadcast, barrier), over the engines users
already run -- MPI through ``mpi4py`` and ``torch.distributed`` -- and never
home-made networking. Every collective is bounded by a timeout: a process
that died or failed to arrive makes the others raise, never hang.

``as_communicator(comm)`` takes an ``mpi4py`` communicator, the
``torch.distributed`` module (its default group) or one of its process
groups, or an object already implementing :class:`Communicator`.
"""

from __future__ import annotations

import time
from typing import Any, List, Optional

from .errors import CheckpointError, InvalidArgumentError

__all__ = ["Communicator", "MPICommunicator", "TorchCommunicator", "as_communicator", "PeerError",
           "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 600.0  # seconds a collective waits for the slowest process


class PeerError(CheckpointError, RuntimeError):
    """Another process failed, died, or did not arrive in time; nothing was
    committed."""


class Communicator:
    """The interface: ``rank``, ``size`` and four collectives over picklable
    objects. ``timeout`` bounds each collective, in seconds."""

    rank: int
    size: int
    timeout: float

    def allgather(self, obj: Any) -> List[Any]:
        """Every process's ``obj``, in rank order, on every process."""
        raise NotImplementedError

    def gather(self, obj: Any) -> Optional[List[Any]]:
        """Every process's ``obj`` on rank 0 (None elsewhere)."""
        raise NotImplementedError

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every process."""
        raise NotImplementedError

    def barrier(self) -> None:
        """Wait for every process."""
        raise NotImplementedError


class MPICommunicator(Communicator):
    """Over an ``mpi4py`` communicator. Each collective first meets the
    others in a non-blocking barrier polled against the timeout, so a
    missing process is a :class:`PeerError` instead of a hang."""

    def __init__(self, comm: Any, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._comm = comm
        self.rank, self.size, self.timeout = int(comm.Get_rank()), int(comm.Get_size()), float(timeout)

    def _meet(self, what: str) -> None:
        request = self._comm.Ibarrier()
        deadline = time.monotonic() + self.timeout
        pause = 1e-5
        while not request.Test():
            if time.monotonic() > deadline:
                raise PeerError(f"rank {self.rank}: the other processes did not reach {what} within "
                                f"{self.timeout:g} s (one failed or died)")
            time.sleep(pause)
            pause = min(pause * 2, 0.01)

    def allgather(self, obj: Any) -> List[Any]:
        self._meet("an all-gather")
        return list(self._comm.allgather(obj))

    def gather(self, obj: Any) -> Optional[List[Any]]:
        self._meet("a gather")
        out = self._comm.gather(obj, root=0)
        return list(out) if out is not None else None

    def broadcast(self, obj: Any) -> Any:
        self._meet("a broadcast")
        return self._comm.bcast(obj, root=0)

    def barrier(self) -> None:
        self._meet("a barrier")


class TorchCommunicator(Communicator):
    """Over ``torch.distributed`` (any backend; object collectives), with the
    group's own timeout (``init_process_group(timeout=...)``) bounding each
    call; errors of the backend become :class:`PeerError`."""

    def __init__(self, group: Any = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        import torch.distributed as dist
        if not dist.is_initialized():
            raise InvalidArgumentError("torch.distributed is not initialised: call init_process_group first")
        self._dist, self._group = dist, group
        self.rank, self.size = dist.get_rank(group), dist.get_world_size(group)
        self.timeout = float(timeout)

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as e:  # a peer died or timed out: the backend's error, whatever its type
            raise PeerError(f"rank {self.rank}: {what} failed (another process failed or died): {e}") from e

    def allgather(self, obj: Any) -> List[Any]:
        out: List[Any] = [None] * self.size
        self._call("an all-gather", self._dist.all_gather_object, out, obj, self._group)
        return out

    def gather(self, obj: Any) -> Optional[List[Any]]:
        got = self.allgather(obj)  # gather_object needs a device for NCCL; all-gather works everywhere
        return got if self.rank == 0 else None

    def broadcast(self, obj: Any) -> Any:
        box = [obj]
        self._call("a broadcast", self._dist.broadcast_object_list, box, self._global_rank0(), self._group)
        return box[0]

    def _global_rank0(self) -> int:
        if self._group is None:
            return 0
        return int(self._dist.get_global_rank(self._group, 0))

    def barrier(self) -> None:
        self.allgather(None)


def as_communicator(comm: Any, timeout: Optional[float] = None) -> Optional[Communicator]:
    """A :class:`Communicator` for ``comm`` (None stays None: one process)."""
    if comm is None:
        return None
    t = DEFAULT_TIMEOUT if timeout is None else timeout
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not t > 0:
        raise InvalidArgumentError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if isinstance(comm, Communicator):
        if timeout is not None:
            comm.timeout = float(t)
        return comm
    module = (type(comm).__module__ or "").split(".", 1)[0]
    if module == "mpi4py":
        return MPICommunicator(comm, t)
    name = getattr(comm, "__name__", "")
    if name == "torch.distributed" or module == "torch":
        return TorchCommunicator(None if name == "torch.distributed" else comm, t)
    raise InvalidArgumentError(f"comm must be an mpi4py communicator, torch.distributed or a process group, "
                               f"or a fastckpt.comm.Communicator; got {type(comm).__name__}")
