"""Running a test's action in a forked child, to see whether a signal
(SIGBUS, SIGSEGV) killed it."""

import multiprocessing


def in_child(fn, *args):
    """(the signal that killed it, or None; its result, or 'ErrorType: message')
    of ``fn(*args)`` run in a forked child."""
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()

    def wrapper():
        try:
            q.put(fn(*args))
        except BaseException as e:  # noqa: BLE001
            q.put(f"{type(e).__name__}: {e}")
    p = ctx.Process(target=wrapper)
    p.start()
    p.join(120)
    if p.exitcode is not None and p.exitcode < 0:
        return -p.exitcode, None
    return None, q.get(timeout=5)
