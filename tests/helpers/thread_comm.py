"""A communicator whose 'processes' are threads of one process: the
collective save and restore paths run in-process, fast enough for property
tests (the real engines are tested in tests/robustness)."""

import threading
from typing import Any, Callable, List, Optional

from fastckpt.comm import Communicator


class ThreadGroup:
    """``n`` ranks meeting at a barrier (a timeout turns a bug into a failure)."""

    def __init__(self, n: int, timeout: float = 60.0) -> None:
        self.n = n
        self.barrier = threading.Barrier(n, timeout=timeout)
        self.slots: List[Any] = [None] * n


class ThreadCommunicator(Communicator):
    def __init__(self, group: ThreadGroup, rank: int) -> None:
        self.group, self.rank, self.size, self.timeout = group, rank, group.n, 60.0

    def allgather(self, obj: Any) -> List[Any]:
        g = self.group
        g.barrier.wait()
        g.slots[self.rank] = obj
        g.barrier.wait()
        out = list(g.slots)
        g.barrier.wait()
        return out

    def gather(self, obj: Any) -> Optional[List[Any]]:
        out = self.allgather(obj)
        return out if self.rank == 0 else None

    def broadcast(self, obj: Any) -> Any:
        return self.allgather(obj)[0]

    def barrier(self) -> None:
        self.allgather(None)


def run_ranks(n: int, fn: Callable[[ThreadCommunicator], Any]) -> List[Any]:
    """``fn(comm)`` on ``n`` threads, one per rank; each one's result or exception."""
    group = ThreadGroup(n)
    out: List[Any] = [None] * n

    def one(rank: int) -> None:
        try:
            out[rank] = fn(ThreadCommunicator(group, rank))
        except BaseException as e:  # reported to the test, which decides
            out[rank] = e
    threads = [threading.Thread(target=one, args=(r,)) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out
