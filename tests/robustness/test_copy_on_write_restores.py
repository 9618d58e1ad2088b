"""Restores into new arrays are copy-on-write maps of the data files, under a
read lease (csrc/cowmap.c): nothing copied, still CRC-checked, and the
arrays never change and never fault when another process truncates the file,
rewrites it in place, or recycles it -- the process moves their bytes into
its own memory first, keeping writes that race the move. Where the file
cannot be guarded, new arrays are copies as before.

Each attack runs in a child process, so a SIGBUS (the failure this guards
against) fails the test instead of killing the test run."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastckpt
from fastckpt import _core

def _state(seed=0):
    rng = np.random.default_rng(seed)
    return {"big": rng.standard_normal((512, 1024)).astype(np.float32),
            "small": np.arange(7, dtype=np.int64),
            "half": rng.standard_normal(999).astype(np.float16)}


def _child(code, timeout=120, env=None):
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         timeout=timeout, env=None if env is None else {**os.environ, **env}, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert out.returncode == 0, (out.returncode, out.stdout[-2000:], out.stderr[-3000:])
    return out.stdout


def test_new_arrays_are_copy_on_write_maps_checked_and_writeable(tmp_path):
    state = _state()
    prefix = str(tmp_path / "m")
    fastckpt.save(state, prefix)
    got = fastckpt.read_bundle(prefix)
    for k in state:
        assert isinstance(got[k].base, _core.CowMap), k
        assert got[k].flags.writeable and got[k].flags.aligned and got[k].flags.c_contiguous
        np.testing.assert_array_equal(got[k], state[k])
    got["big"][:] = 7  # a write copies the page, never touches the file
    again = fastckpt.read_bundle(prefix)
    np.testing.assert_array_equal(again["big"], state["big"])
    assert fastckpt.verify_checkpoint(prefix).ok
    with fastckpt.CheckpointReader(prefix, copy_on_write=False) as r:
        copied = r.read()
    assert all(copied[k].base is None or not isinstance(copied[k].base, _core.CowMap) for k in copied)


def test_readers_map_and_training_restores_copy_unless_asked(tmp_path, monkeypatch):
    """read_bundle / CheckpointReader map by default; restore() (training
    state, which training writes) copies unless copy_on_write=True; the
    environment variable decides for both."""
    prefix = str(tmp_path / "m")
    state = {"w": np.arange(50_000, dtype=np.float32), "step": 3}
    fastckpt.save(state, prefix)
    monkeypatch.delenv("FASTCKPT_COPY_ON_WRITE", raising=False)

    def kinds():
        return (isinstance(fastckpt.read_bundle(prefix)["w"].base, _core.CowMap),
                isinstance(fastckpt.restore(prefix)["w"].base, _core.CowMap),
                isinstance(fastckpt.restore(prefix, copy_on_write=True)["w"].base, _core.CowMap),
                isinstance(fastckpt.load_checkpoint(prefix).get_tensor("w").base, _core.CowMap))
    assert kinds() == (True, False, True, True)
    monkeypatch.setenv("FASTCKPT_COPY_ON_WRITE", "1")
    assert kinds() == (True, True, True, True)
    monkeypatch.setenv("FASTCKPT_COPY_ON_WRITE", "0")
    assert kinds() == (False, False, True, False)
    got = fastckpt.restore(prefix, copy_on_write=True)
    assert got["step"] == 3 and np.array_equal(got["w"], state["w"])


def test_a_damaged_file_is_refused_before_any_array_is_made(tmp_path):
    prefix = str(tmp_path / "m")
    fastckpt.save(_state(), prefix)
    data = prefix + ".data-00000-of-00001"
    with open(data, "r+b") as f:
        f.seek(100_000)
        b = f.read(1)
        f.seek(100_000)
        f.write(bytes([b[0] ^ 0x10]))
    with pytest.raises(fastckpt.DataLossError, match="checksum"):
        fastckpt.read_bundle(prefix)


@pytest.mark.parametrize("attack", ["truncate to zero", "truncate by name, half", "rewrite in place",
                                    "open for writing in this process", "replace and unlink"])
def test_arrays_outlive_any_change_to_their_file(tmp_path, attack):
    prefix = str(tmp_path / "m")
    fastckpt.save(_state(), prefix)
    print(_child(f"""
        import os, subprocess, sys, numpy as np, fastckpt
        from fastckpt import _core
        from tests.robustness.test_copy_on_write_restores import _state
        prefix, attack = {prefix!r}, {attack!r}
        data = prefix + ".data-00000-of-00001"
        want = _state()
        got = fastckpt.read_bundle(prefix)
        assert isinstance(got["big"].base, _core.CowMap)
        got["big"][0, :4] = 5  # a page written before the attack: copied already
        before = _core.cow_copies()
        size = os.path.getsize(data)
        if attack == "truncate to zero":
            subprocess.run([sys.executable, "-c", f"import os; os.truncate({{data!r}}, 0)"], check=True)
        elif attack == "truncate by name, half":
            subprocess.run([sys.executable, "-c", f"import os; os.truncate({{data!r}}, {{size // 2}})"], check=True)
        elif attack == "rewrite in place":
            subprocess.run([sys.executable, "-c",
                            f"f = open({{data!r}}, 'r+b'); f.write(b'x' * {{size}}); f.close()"], check=True)
        elif attack == "open for writing in this process":
            with open(data, "r+b") as f:
                f.truncate(0)
        else:  # a new file under the name: the map keeps the old inode, no copy needed
            os.replace(data, data + ".old")
            open(data, "wb").close()
            os.unlink(data + ".old")
        moved = _core.cow_copies() - before
        assert moved == (0 if attack == "replace and unlink" else 1), moved
        assert got["big"].base.copied == (attack != "replace and unlink")
        want["big"][0, :4] = 5
        for k in want:
            assert np.array_equal(got[k], want[k]), k
        got["big"] += 1  # still writeable, and every page readable
        assert float(got["big"][0, 0]) == 6.0
        print("ok", attack, moved)
    """))


def test_writes_racing_the_move_are_kept(tmp_path):
    """Threads add to the arrays without pause while another process
    truncates the file: every addition is there afterwards."""
    prefix = str(tmp_path / "m")
    fastckpt.save({"w": np.zeros((2048, 1024), np.float32), "v": np.zeros(300_000, np.float64)}, prefix)
    print(_child(f"""
        import subprocess, sys, threading, numpy as np, fastckpt
        from fastckpt import _core
        prefix = {prefix!r}
        got = fastckpt.read_bundle(prefix)
        w, v = got["w"], got["v"]
        assert isinstance(w.base, _core.CowMap)
        counts = [0, 0]
        stop = threading.Event()
        def add(arr, i):
            while not stop.is_set():
                arr += 1  # numpy releases the GIL: these run while the move does
                counts[i] += 1
        threads = [threading.Thread(target=add, args=(w, 0)), threading.Thread(target=add, args=(v, 1))]
        for t in threads:
            t.start()
        while min(counts) < 3:
            pass
        data = prefix + ".data-00000-of-00001"
        before = _core.cow_copies()
        subprocess.run([sys.executable, "-c", f"import os; os.truncate({{data!r}}, 0)"], check=True)
        after = min(counts)
        while min(counts) < after + 3:
            pass
        stop.set()
        for t in threads:
            t.join()
        assert _core.cow_copies() - before == 1
        assert np.all(w == counts[0]), (np.unique(w)[:5], counts)
        assert np.all(v == counts[1]), (np.unique(v)[:5], counts)
        print("ok", counts)
    """))


_LATE_FAULT = """
    import ctypes, os, subprocess, sys, threading, numpy as np, fastckpt
    from fastckpt import _core
    prefix = {prefix!r}
    fastckpt.save({{"w": np.zeros(300_000, np.float32)}}, prefix)
    w = fastckpt.read_bundle(prefix)["w"]
    assert isinstance(w.base, _core.CowMap)
    subprocess.run([sys.executable, "-c", f"import os; os.truncate({{prefix + '.data-00000-of-00001'!r}}, 0)"],
                   check=True)
    assert _core.cow_copies() == 1  # the move ran
    class SigInfo(ctypes.Structure):
        _fields_ = [("signo", ctypes.c_int), ("errno", ctypes.c_int), ("code", ctypes.c_int),
                    ("pad", ctypes.c_int), ("addr", ctypes.c_void_p), ("rest", ctypes.c_char * 104)]
    def fault_at(addr):  # what the kernel delivers for a write to a read-only page (SEGV_ACCERR)
        info = SigInfo(signo=11, code=2, addr=addr)
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.syscall(297, os.getpid(), threading.get_native_id(), 11, ctypes.byref(info)) == 0
    fault_at(w.ctypes.data + 4096)
    w += 1
    assert np.all(w == 1)
    print("survived")
    {then}
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="rt_tgsigqueueinfo's number is x86_64's")
def test_a_write_fault_delivered_after_the_move_ended_is_retried(tmp_path):
    """A thread that wrote into a map while it was being moved can be
    preempted between its fault and the signal's delivery; the move may
    have ended by then. That late SIGSEGV (a fault inside a live map) must
    retry the write, not kill the process: the handler stayed installed.
    (Before: the handler was removed at the end of each move, and such a
    writer died with SIGSEGV in about 1 run of 20 of the test above under
    CPU load.)"""
    out = _child(_LATE_FAULT.format(prefix=str(tmp_path / "m"), then="pass"))
    assert "survived" in out


@pytest.mark.no_sanitizer  # ASan owns SIGSEGV there and aborts (SIGABRT) instead
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="rt_tgsigqueueinfo's number is x86_64's")
def test_a_real_segfault_after_a_move_still_reaches_the_previous_handler(tmp_path):
    """The handler left in place passes every fault outside its maps to the
    handler that was there before (here Python's faulthandler), and the
    process still dies of SIGSEGV."""
    code = _LATE_FAULT.format(prefix=str(tmp_path / "m"),
                              then="import faulthandler; faulthandler.enable(); ctypes.string_at(0)")
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert out.returncode == -11, (out.returncode, out.stderr[-2000:])
    assert "survived" in out.stdout
    assert "Segmentation fault" in out.stderr and "string_at" in out.stderr, out.stderr[-2000:]


@pytest.mark.deep
def test_writes_racing_many_moves_under_cpu_load_are_kept(tmp_path):
    """The race behind the test above, hunted in a loop: 40 rounds of four
    threads writing into maps of two files that two processes truncate at
    once, while two more processes keep both cores busy (preemption between
    fault and delivery). Before the fix this loop died of SIGSEGV in about one
    run of six; each round checks that every write is kept."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: sum(range(100000))"]) for _ in range(2)]
    try:
        print(_child(f"""
            import os, subprocess, sys, threading, numpy as np, fastckpt
            from fastckpt import _core
            base = {str(tmp_path)!r}
            for r in range(40):
                arrs, datas = [], []
                for f in range(2):
                    prefix = os.path.join(base, f"m{{r}}-{{f}}")
                    fastckpt.save({{"a": np.zeros(300_000, np.float32), "b": np.zeros(100_000, np.float64)}}, prefix)
                    got = fastckpt.read_bundle(prefix)
                    arrs += [got["a"], got["b"]]
                    datas.append(prefix + ".data-00000-of-00001")
                assert all(isinstance(a.base, _core.CowMap) for a in arrs)
                counts = [0] * len(arrs)
                stop = threading.Event()
                def add(arr, i):
                    while not stop.is_set():
                        arr += 1
                        counts[i] += 1
                threads = [threading.Thread(target=add, args=(a, i)) for i, a in enumerate(arrs)]
                for t in threads:
                    t.start()
                while min(counts) < 2:
                    pass
                before = _core.cow_copies()
                cutters = [subprocess.Popen([sys.executable, "-c", f"import os; os.truncate({{d!r}}, 0)"]) for d in datas]
                assert all(c.wait() == 0 for c in cutters)
                after = min(counts)
                while min(counts) < after + 2:
                    pass
                stop.set()
                for t in threads:
                    t.join()
                assert _core.cow_copies() - before == len(datas)
                for a, c in zip(arrs, counts):
                    assert np.all(a == c), (r, np.unique(a)[:5], c)
            print("ok")
        """, timeout=600))
    finally:
        for b in burners:
            b.kill()
            b.wait()


def test_no_map_where_the_file_cannot_be_guarded(tmp_path):
    """A file another process holds open for writing cannot be leased: the
    arrays are copies, and correct."""
    prefix = str(tmp_path / "m")
    state = _state()
    fastckpt.save(state, prefix)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; f = open(sys.argv[1], 'r+b'); "
                               "print('open', flush=True); time.sleep(60)", prefix + ".data-00000-of-00001"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        got = fastckpt.read_bundle(prefix)
        assert not isinstance(got["big"].base, _core.CowMap)
        assert all(np.array_equal(got[k], state[k]) for k in state)
    finally:
        holder.kill()
        holder.wait()
    print(_child(f"""
        import numpy as np, fastckpt
        from fastckpt import _core
        got = fastckpt.read_bundle({prefix!r})
        assert not isinstance(got["big"].base, _core.CowMap)
        print("off")
    """, env={"FASTCKPT_COPY_ON_WRITE": "0"}))


def test_a_map_ends_with_its_last_array(tmp_path):
    """Once the arrays are gone the lease is too: a writer then costs this
    process nothing (no copy)."""
    prefix = str(tmp_path / "m")
    fastckpt.save(_state(), prefix)
    got = fastckpt.read_bundle(prefix)
    big = got["big"]
    del got
    before = _core.cow_copies()
    del big
    import gc
    gc.collect()
    with open(prefix + ".data-00000-of-00001", "r+b") as f:
        f.write(b"\0")
    assert _core.cow_copies() == before


def test_more_maps_than_slots_fall_back_to_copies(tmp_path):
    prefix = str(tmp_path / "m")
    state = {"x": np.arange(1000, dtype=np.float32)}
    fastckpt.save(state, prefix)
    held = [fastckpt.read_bundle(prefix)["x"] for _ in range(1100)]
    kinds = [isinstance(a.base, _core.CowMap) for a in held]
    assert kinds[0] and not kinds[-1] and sum(kinds) <= 1024
    assert all(np.array_equal(a, state["x"]) for a in held)


def test_recycling_never_takes_a_file_a_map_holds(tmp_path):
    """A recycling save skips the retired checkpoint whose file backs
    restored arrays; the arrays keep their values."""
    first = _state(1)
    saver = fastckpt.Saver(max_to_keep=1, recycle=True, durable=False)
    saver.save(first, str(tmp_path / "m"), global_step=1)
    held = fastckpt.read_bundle(str(tmp_path / "m-1"))
    assert isinstance(held["big"].base, _core.CowMap)
    old_ino = os.stat(str(tmp_path / "m-1.data-00000-of-00001")).st_ino
    for step in (2, 3, 4):
        saver.save(_state(step), str(tmp_path / "m"), global_step=step)
    inos = {os.stat(str(tmp_path / f"m-4.data-00000-of-00001")).st_ino}
    assert old_ino not in inos
    for k in first:
        np.testing.assert_array_equal(held[k], first[k])


def test_a_forked_child_reads_the_arrays(tmp_path):
    prefix = str(tmp_path / "m")
    state = _state()
    fastckpt.save(state, prefix)
    got = fastckpt.read_bundle(prefix)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        ok = all(np.array_equal(got[k], state[k]) for k in state)
        got["big"][0, 0] = 1.0
        os.write(w, b"1" if ok else b"0")
        os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1"
    os.waitpid(pid, 0)
    os.close(r)
    np.testing.assert_array_equal(got["big"], state["big"])


def test_a_forked_child_freeing_its_arrays_leaves_the_parent_guarded(tmp_path):
    """The lease belongs to the open file description a forked child
    shares: a child that drops its copies of the arrays must not release it,
    or a later truncation would fault the parent."""
    prefix = str(tmp_path / "m")
    fastckpt.save(_state(), prefix)
    print(_child(f"""
        import gc, os, subprocess, sys, numpy as np, fastckpt
        from fastckpt import _core
        from tests.robustness.test_copy_on_write_restores import _state
        prefix = {prefix!r}
        want = _state()
        got = fastckpt.read_bundle(prefix)
        assert isinstance(got["big"].base, _core.CowMap)
        pid = os.fork()
        if pid == 0:
            del got
            gc.collect()
            os._exit(0)
        os.waitpid(pid, 0)
        before = _core.cow_copies()
        data = prefix + ".data-00000-of-00001"
        subprocess.run([sys.executable, "-c", f"import os; os.truncate({{data!r}}, 0)"], check=True)
        assert _core.cow_copies() - before == 1
        assert all(np.array_equal(got[k], want[k]) for k in want)
        print("ok")
    """))


def test_a_reset_lease_signal_is_put_back_at_the_next_map(tmp_path):
    """PyTorch Lightning's Trainer restores every signal to what Python
    thinks it was when fit ends: SIG_DFL for the lease-break signal, whose
    default kills the process. The next map puts fastckpt's handler back,
    so a truncation by another process is served (the bytes moved, the
    arrays intact); someone else's handler there means copies instead."""
    prefix = str(tmp_path / "m")
    fastckpt.save(_state(), prefix)
    print(_child(f"""
        import signal, subprocess, sys, numpy as np, fastckpt
        from fastckpt import _core
        from tests.robustness.test_copy_on_write_restores import _state
        prefix = {prefix!r}
        data = prefix + ".data-00000-of-00001"
        first = fastckpt.read_bundle(prefix)  # the handler installed
        assert isinstance(first["big"].base, _core.CowMap)
        del first
        sig = signal.SIGRTMAX - 6
        signal.signal(sig, signal.SIG_DFL)  # what Lightning's teardown does
        got = fastckpt.read_bundle(prefix)
        assert isinstance(got["big"].base, _core.CowMap)
        before = _core.cow_copies()
        subprocess.run([sys.executable, "-c", f"import os; os.truncate({{data!r}}, 0)"], check=True)
        assert _core.cow_copies() - before == 1
        want = _state()
        assert all(np.array_equal(got[k], want[k]) for k in want)
        del got
        fastckpt.save(_state(), prefix)
        signal.signal(sig, lambda *a: None)  # someone else's handler: no map, a copy
        again = fastckpt.read_bundle(prefix)
        assert not isinstance(again["big"].base, _core.CowMap)
        assert all(np.array_equal(again[k], want[k]) for k in want)
        print("ok")
    """))
