"""Child processes for the kill and concurrency tests (spawned through a
forkserver, so they must live in an importable module)."""

import os

import numpy as np


def state_for(step: int) -> dict:
    """The deterministic state saved at ``step``."""
    rng = np.random.default_rng(step)
    return {"w": rng.standard_normal((64, 33)).astype(np.float32),
            "b": np.full(17, step, np.int64),
            "big": rng.standard_normal(40_000).astype(np.float32),  # 160 KB: several I/O pieces
            "names": np.array([f"step-{step}".encode()], dtype=object)}


def save_forever(directory: str, first_step: int, log_path: str, durable: bool) -> None:
    """Save steps first_step, first_step+1, ... and append each step to the
    log after its save returned (fsync'd: the log outlives SIGKILL)."""
    import fastckpt

    saver = fastckpt.Saver(max_to_keep=3, durable=durable)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    step = first_step
    while True:
        saver.save(state_for(step), os.path.join(directory, "model"), global_step=step)
        os.write(fd, f"{step}\n".encode())
        step += 1


def save_n(directory: str, name: str, n: int) -> None:
    """Save n checkpoints named name-0..n-1 into a shared directory."""
    import fastckpt

    saver = fastckpt.Saver(max_to_keep=4, durable=False)
    for i in range(n):
        saver.save(state_for(i), os.path.join(directory, name), global_step=i)


def resave_steps(directory: str, steps: int, recycle: bool = False) -> None:
    """Save steps 1..steps, each twice: first contents, then re-saved ones
    (state_for(step + 1000)), as a forced final save at a saved step does."""
    import fastckpt

    saver = fastckpt.Saver(max_to_keep=3, durable=False, recycle=recycle)
    for step in range(1, steps + 1):
        for variant in (0, 1000):
            saver.save(state_for(step + variant), os.path.join(directory, "model"), global_step=step)


def restore_latest_until(directory: str, stop_file: str, result_file: str) -> None:
    """Restore the latest checkpoint in a loop until ``stop_file`` exists;
    every restore must equal a state some save wrote for its step. Writes
    'restores failures' to ``result_file``."""
    import fastckpt

    ok = bad = 0
    errors = []
    started = False  # from the first successful restore on, every restore must succeed
    while not os.path.exists(stop_file):
        try:
            with fastckpt.load_checkpoint(directory) as reader:
                got = reader.read()
                started = True
        except fastckpt.NotFoundError as e:
            if not started:
                continue  # nothing saved yet
            bad += 1
            errors.append(repr(e))
            continue
        except fastckpt.CheckpointError as e:
            bad += 1
            errors.append(repr(e))
            continue
        seed = int(got["b"][0])  # state_for(seed) has b == seed everywhere
        want = state_for(seed)
        if 1 <= seed % 1000 <= 10_000 and all(np.array_equal(got[k], want[k]) for k in want):
            ok += 1
        else:
            bad += 1
            errors.append(f"wrong values (b = {seed})")
    with open(result_file, "w") as f:
        f.write(f"{ok} {bad}\n" + "\n".join(errors))


def hold_oldest_until(directory: str, stop_file: str, result_file: str) -> None:
    """Open the *oldest* listed checkpoint (the next one retention retires,
    the one a recycling save wants), read it through its maps, hold it a
    while and read it again: once opened it must read the same, correct
    values. Writes 'held failures' to ``result_file``."""
    import time

    import fastckpt

    held = bad = 0
    errors = []
    while not os.path.exists(stop_file):
        st = fastckpt.get_checkpoint_state(directory)
        if st is None or not st.all_model_checkpoint_paths:
            continue
        try:
            reader = fastckpt.load_checkpoint(st.all_model_checkpoint_paths[0])
            views = {k: reader.get_tensor(k, copy=False) for k in reader.tensor_names()}
        except fastckpt.NotFoundError:
            continue  # retired between reading the state file and opening it: never held
        except fastckpt.CheckpointError as e:
            bad += 1
            errors.append(repr(e))
            continue
        with reader:
            first = {k: np.array(v) for k, v in views.items()}
            time.sleep(0.02)  # saves run meanwhile
            seed = int(first["b"][0])
            want = state_for(seed)
            same = all(np.array_equal(views[k], first[k]) and np.array_equal(first[k], want[k]) for k in want)
            try:
                again = reader.read()  # checksums checked again, from the files
                same = same and all(np.array_equal(again[k], want[k]) for k in want)
            except fastckpt.CheckpointError as e:
                same = False
                errors.append(repr(e))
            held += same
            bad += not same
        del views
    with open(result_file, "w") as f:
        f.write(f"{held} {bad}\n" + "\n".join(errors[:20]))


def save_new_steps(directory: str, steps: int, mode: str) -> None:
    """A CheckpointManager saving steps 1..steps, each a new name: every
    other save in the background (``mode`` "plain"), with recycling
    ("recycle"), or from two ranks of a thread communicator ("ranks")."""
    import fastckpt

    if mode == "ranks":
        from tests.helpers.thread_comm import run_ranks

        def ranks(comm):
            mgr = fastckpt.CheckpointManager(directory, max_to_keep=3, durable=False, comm=comm)
            for step in range(1, steps + 1):
                mgr.save(state_for(step), step)  # replicated: each tensor written once, by one of the ranks
        errors = [e for e in run_ranks(2, ranks) if isinstance(e, BaseException)]
        if errors:
            raise errors[0]
        return
    mgr = fastckpt.CheckpointManager(directory, max_to_keep=3, durable=False, recycle=mode == "recycle")
    for step in range(1, steps + 1):
        mgr.save(state_for(step), step, blocking=step % 2 == 0)
    mgr.wait()


def watch_commits_until(directory: str, stop_file: str, result_file: str) -> None:
    """What readers see while saves commit, in a loop until ``stop_file``:
    fastckpt's ``latest_checkpoint`` and ``get_checkpoint_state`` (never a
    staged name; never None once a checkpoint was committed), a restore of
    the directory and of the prefix ``latest_checkpoint`` named (the values
    a save wrote; no error -- a prefix retention deleted meanwhile is
    named so, and not counted as seen), and what TensorFlow's parser of
    the state file sees (counted). Writes 'good bad foreign_staged' and
    the errors to ``result_file``."""
    import fastckpt
    from fastckpt.directory.state import parse_checkpoint_state

    good = bad = foreign = 0
    errors = []
    seen = False

    def check(got, what):
        seed = int(got["b"][0])
        want = state_for(seed)
        if not all(np.array_equal(got[k], want[k]) for k in want):
            errors.append(f"{what}: wrong values (b = {seed})")
            return False
        return True

    while not os.path.exists(stop_file):
        try:
            raw = open(os.path.join(directory, "checkpoint")).read()
            foreign += os.path.basename(parse_checkpoint_state(raw).model_checkpoint_path).startswith(".fcsave-")
        except (OSError, ValueError):
            pass
        try:
            latest = fastckpt.latest_checkpoint(directory)
            st = fastckpt.get_checkpoint_state(directory)
            listed = [] if st is None else [st.model_checkpoint_path] + st.all_model_checkpoint_paths
            names = [os.path.basename(p) for p in listed + [latest or ""]]
            if any(n.startswith(".fcsave-") for n in names):
                bad += 1
                errors.append(f"a staged name: {names}")
                continue
            if latest is None or st is None:
                if seen:
                    bad += 1
                    errors.append("None after a checkpoint was committed")
                continue
            seen = True
            ok = check(fastckpt.restore(directory), "restore(directory)")
            try:
                ok = check(fastckpt.restore(latest), f"restore({os.path.basename(latest)})") and ok
            except fastckpt.NotFoundError:
                now = fastckpt.get_checkpoint_state(directory)
                if now is not None and latest in now.all_model_checkpoint_paths:
                    raise
            good += ok
            bad += not ok
        except fastckpt.CheckpointError as e:
            bad += 1
            errors.append(repr(e))
    with open(result_file, "w") as f:
        f.write(f"{good} {bad} {foreign}\n" + "\n".join(errors[:20]))
