"""Communicators: the few collectives a checkpoint written by many processes
needs (all-gather, gather, broadcast, barrier), over the engines users
already run -- MPI through ``mpi4py`` and ``torch.distributed`` -- and never
home-made networking. Every collective is bounded by a timeout: a process
that died or failed to arrive makes the others raise, never hang, and a
process that arrives after the others gave up raises too. The objects
travel as point-to-point messages (MPI) or through the group's key-value
store (torch.distributed), numbered by operation so that saves after a
failed one work again.

``as_communicator(comm)`` takes an ``mpi4py`` communicator, the
``torch.distributed`` module (its default group) or one of its process
groups, or an object already implementing :class:`Communicator`.
"""

from __future__ import annotations

import pickle
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from fastckpt.errors import CheckpointError, InvalidArgumentError

__all__ = ["Communicator", "MPICommunicator", "TorchCommunicator", "as_communicator", "PeerError",
           "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 600.0  # seconds a collective waits for the slowest process


class PeerError(CheckpointError, RuntimeError):
    """Another process failed, died, or did not arrive in time; nothing was
    committed."""


class Communicator:
    """The interface: ``rank``, ``size`` and four collectives over picklable
    objects. ``timeout`` bounds each collective, in seconds. ``begin`` marks
    the start of one operation (a save or a restore), which every process
    calls at the same point of its program."""

    rank: int
    size: int
    timeout: float

    def begin(self) -> None:
        """Start an operation: the engines below number their messages by
        operation, so a process that gave up on an earlier one (a timeout)
        never mistakes its stale messages for the next one's."""

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
        self.allgather(None)


# Per engine communicator (an MPI handle, a torch group's key): [operation, collective within it]. Shared by
# every Communicator made for it, so that numbering goes on across saves.
_COUNTERS: Dict[Any, List[int]] = {}
_COUNTERS_LOCK = threading.Lock()
_DELETABLE: Dict[Any, List[str]] = {}


class _Numbered(Communicator):
    """Collectives as messages to and from rank 0, each numbered by
    (operation, collective) and bounded by ``timeout``: a process that does
    not arrive makes the others raise :class:`PeerError`, and a process
    that arrives late finds nobody and raises too, instead of hanging or
    pairing its messages with the next operation's."""

    _key: Any

    def begin(self) -> None:
        with _COUNTERS_LOCK:
            c = _COUNTERS.setdefault(self._key, [0, 0])
            c[0], c[1] = c[0] + 1, 0

    def _number(self) -> Tuple[int, int]:
        with _COUNTERS_LOCK:
            c = _COUNTERS.setdefault(self._key, [0, 0])
            c[1] += 1
            return c[0], c[1]

    def _late(self, what: str) -> PeerError:
        return PeerError(f"rank {self.rank}: the other processes did not reach {what} within {self.timeout:g} s "
                         "(one failed, died or is late)")

    def _send(self, obj: Any, dest: int, number: Tuple[int, int], deadline: float, what: str) -> None:
        raise NotImplementedError

    def _recv(self, source: int, number: Tuple[int, int], deadline: float, what: str) -> Any:
        raise NotImplementedError

    def _send_all(self, obj: Any, dests: List[int], number: Tuple[int, int], deadline: float, what: str) -> None:
        for dest in dests:
            self._send(obj, dest, number, deadline, what)

    def _done(self, number: Tuple[int, int]) -> None:
        """Every process has moved past collective ``number``."""

    def gather(self, obj: Any) -> Optional[List[Any]]:
        number, deadline = self._number(), time.monotonic() + self.timeout
        if self.rank != 0:
            self._send(obj, 0, number, deadline, "a gather")
            return None
        out = [obj] + [self._recv(r, number, deadline, "a gather") for r in range(1, self.size)]
        self._done(number)
        return out

    def broadcast(self, obj: Any) -> Any:
        number, deadline = self._number(), time.monotonic() + self.timeout
        if self.rank == 0:
            self._send_all(obj, list(range(1, self.size)), number, deadline, "a broadcast")
            return obj
        return self._recv(0, number, deadline, "a broadcast")

    def allgather(self, obj: Any) -> List[Any]:
        return self.broadcast(self.gather(obj))


class MPICommunicator(_Numbered):
    """Over an ``mpi4py`` communicator: point-to-point messages tagged by
    (operation, collective), polled against the timeout."""

    def __init__(self, comm: Any, timeout: float = DEFAULT_TIMEOUT) -> None:
        from mpi4py import MPI

        self._comm = comm
        self.rank, self.size, self.timeout = int(comm.Get_rank()), int(comm.Get_size()), float(timeout)
        self._key = ("mpi", comm.py2f())
        ub = comm.Get_attr(MPI.TAG_UB)
        self._span = max(16384, int(ub or 32767) // 2)  # the upper half of the tags: user code rarely goes there

    def _tag(self, number: Tuple[int, int]) -> int:
        return self._span + (number[0] * 1024 + number[1]) % self._span

    def _poll(self, ready: Any, deadline: float, what: str) -> None:
        pause = 1e-5
        while not ready():
            if time.monotonic() > deadline:
                raise self._late(what)
            time.sleep(pause)
            pause = min(pause * 2, 0.005)

    def _send(self, obj: Any, dest: int, number: Tuple[int, int], deadline: float, what: str) -> None:
        self._send_all(obj, [dest], number, deadline, what)

    def _send_all(self, obj: Any, dests: List[int], number: Tuple[int, int], deadline: float, what: str) -> None:
        """Posted to every destination at once: the living get it even when one is dead."""
        requests = [self._comm.isend(obj, dest=d, tag=self._tag(number)) for d in dests]
        self._poll(lambda: all(r.Test() for r in requests), deadline, what)

    def _recv(self, source: int, number: Tuple[int, int], deadline: float, what: str) -> Any:
        tag = self._tag(number)
        self._poll(lambda: self._comm.iprobe(source=source, tag=tag), deadline, what)
        return self._comm.recv(source=source, tag=tag)


class TorchCommunicator(_Numbered):
    """Over ``torch.distributed``: the objects go through the group's
    key-value store (any backend, no device needed), under keys numbered
    by (operation, collective), each wait bounded by the timeout."""

    def __init__(self, group: Any = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        import torch.distributed as dist
        from torch.distributed import distributed_c10d as c10d
        if not dist.is_initialized():
            raise InvalidArgumentError("torch.distributed is not initialised: call init_process_group first")
        self.rank, self.size = dist.get_rank(group), dist.get_world_size(group)
        self.timeout = float(timeout)
        ranks = tuple(dist.get_process_group_ranks(group)) if group is not None else ("world",)
        self._key = ("torch", ranks)
        self._root = f"fastckpt/{'-'.join(map(str, ranks))}"
        self._store = c10d._get_default_store()
        self._deletable = _DELETABLE.setdefault(self._key, [])  # rank 0's messages, until all have read them

    def _name(self, number: Tuple[int, int], source: int, dest: int) -> str:
        return f"{self._root}/{number[0]}/{number[1]}/{source}-{dest}"

    def _send(self, obj: Any, dest: int, number: Tuple[int, int], deadline: float, what: str) -> None:
        key = self._name(number, self.rank, dest)
        self._store.set(key, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))  # type: ignore[arg-type]
        if self.rank == 0:
            self._deletable.append(key)

    def _recv(self, source: int, number: Tuple[int, int], deadline: float, what: str) -> Any:
        import datetime

        key = self._name(number, source, self.rank)
        try:
            self._store.wait([key], datetime.timedelta(seconds=max(0.001, deadline - time.monotonic())))
            raw = self._store.get(key)
        except Exception as e:  # the store's timeout, or a peer's store gone: whatever its type
            raise self._late(what) from e
        if self.rank == 0:
            self._store.delete_key(key)
        return pickle.loads(raw)

    def _done(self, number: Tuple[int, int]) -> None:
        for key in self._deletable:  # every process has read rank 0's earlier messages
            self._store.delete_key(key)
        self._deletable.clear()


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
