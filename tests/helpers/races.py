"""Parent-side helpers of the race tests: re-saving processes run beside
watcher processes that report what they saw."""

from typing import Callable, List, Sequence, Tuple

from tests.helpers import crash_child


def resave_beside(ctx, directory: str, stop: str, watchers: Sequence[Tuple[Callable, tuple]], *,
                  savers: int = 2, steps: int = 25, recycle: bool = False) -> None:
    """Start the watchers, run ``savers`` processes re-saving steps 1..steps
    into ``directory`` (crash_child.resave_steps), then create ``stop`` and
    wait for the watchers; every process must exit 0."""
    watching = [ctx.Process(target=target, args=args) for target, args in watchers]
    for p in watching:
        p.start()
    saving = [ctx.Process(target=crash_child.resave_steps, args=(directory, steps, recycle)) for _ in range(savers)]
    for p in saving:
        p.start()
    for p in saving:
        p.join()
        assert p.exitcode == 0
    open(stop, "w").close()
    for p in watching:
        p.join()
        assert p.exitcode == 0


def result_of(path) -> Tuple[int, int, List[str]]:
    """(good, bad, errors) as a watcher wrote them."""
    head, *errors = open(path).read().split("\n")
    good, bad = map(int, head.split())
    return good, bad, errors
