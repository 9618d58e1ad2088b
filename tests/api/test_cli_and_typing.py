"""The `fastckpt` command and the typed surface (py.typed, _core.pyi, mypy)."""

import os
import subprocess
import sys

import numpy as np
import pytest

import fastckpt
from fastckpt.bench.run import gpt_like_state, parse_size, run_bench
from fastckpt.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_ls(tmp_path, capsys):
    fastckpt.Saver().save({"w": np.zeros((2, 3), np.float32)}, str(tmp_path / "m"), global_step=1)
    assert main(["ls", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "1 tensors" in out and "w  float32  [2, 3]" in out


def test_ls_missing_is_an_error(tmp_path, capsys):
    assert main(["ls", str(tmp_path / "nothing")]) == 2  # not found: 2, as for a usage error; damage: 1
    assert "fastckpt:" in capsys.readouterr().err


def test_parse_size():
    assert parse_size("1GiB") == 1 << 30 and parse_size("512MiB") == 512 << 20 and parse_size("100") == 100
    with pytest.raises(ValueError):
        parse_size("lots")


def test_gpt_like_state_shape():
    st = gpt_like_state(64 << 20, 250)
    assert len(st) == 250
    total = sum(v.nbytes for v in st.values())
    assert 0.7 * (64 << 20) < total <= 64 << 20


@pytest.mark.deep  # 8 s; test_bench_groups_cases_and_ends_with_a_verdict runs the bench in the default tier
def test_bench_runs_and_reports_every_case(tmp_path):
    lines = []
    res = run_bench(size=4 << 20, tensors=20, rounds=2, directory=str(tmp_path), skip_others=True,
                    out=lines.append)
    assert {"fastckpt save", "fastckpt restore (fresh arrays)", "fastckpt restore into=",
            "raw write (1 file, sequential)"} <= set(res)
    cases = {n: r for n, r in res.items() if n != "verdict"}
    assert all(0 < r["min_s"] <= r["median_s"] <= r["max_s"] for r in cases.values())
    assert any(line.startswith("| fastckpt save") for line in lines)
    assert os.listdir(tmp_path) == []  # cleaned up


def test_bench_groups_cases_and_ends_with_a_verdict(tmp_path):
    """Saves, restores into existing buffers and into fresh arrays apart, the
    cost of first touches beside the fresh ones, and a verdict line whose
    facts are in the results too."""
    lines = []
    res = run_bench(size=4 << 20, tensors=20, rounds=2, directory=str(tmp_path), skip_others=True,
                    out=lines.append)
    text = "\n".join(lines)
    assert lines[0].startswith("fastckpt bench: a gpt state of") and "needs about" in lines[0]
    groups = [line for line in lines if line.startswith("| **")]
    assert [g.split("**")[1] for g in groups] == ["saves", "restores into existing buffers",
                                                  "restores into fresh arrays"]
    assert "| first touch of new memory alone (no I/O)" in text
    assert res["first touch of new memory alone (no I/O)"]["kind"] == "touch"
    assert len({len(line) for line in lines if line.startswith("| ") and "**" not in line}) == 1  # aligned
    facts = res["verdict"]
    assert lines[-1] == facts["text"] and facts["text"].startswith("verdict: fastckpt saved at")
    assert set(facts["kinds"]) == {"save", "into", "fresh"}
    assert isinstance(facts["targets_met"], bool)
    assert facts["targets_met"] == (not facts["missed"])
    assert ("Targets met." in facts["text"]) == facts["targets_met"]


def test_verdict_names_the_fastest_other_library_and_the_missed_targets():
    from fastckpt.bench.run import verdict

    def row(kind, t, raw):
        return {"kind": kind, "min_s": t, "vs_raw": raw / t, "gb_per_s": 1.0}
    res = {"raw write (1 file, sequential)": row("save", 1.0, 1.0), "fastckpt save": row("save", 1.0, 1.0),
           "slow save": row("save", 3.0, 1.0), "quick save": row("save", 0.5, 1.0),
           "raw read (into existing)": row("into", 1.0, 1.0), "fastckpt restore into=": row("into", 1.0, 1.0),
           "raw read (fresh arrays)": row("fresh", 1.0, 1.0), "fastckpt restore (fresh arrays)": row("fresh", 0.5, 1.0),
           "peer load": row("fresh", 1.0, 1.0)}
    facts = verdict(res)
    assert facts["kinds"]["save"]["fastest_other"] == "quick save"
    assert facts["kinds"]["save"]["vs_fastest_other"] == 0.5
    assert facts["missed"] == ["saved below 1.0x quick save"]  # fresh: 2.0x the peer, into: at the raw limit
    assert not facts["targets_met"] and "Missed: saved below 1.0x quick save." in facts["text"]


def test_a_save_slower_than_a_peer_is_explained_by_the_one_file_measurement():
    """With the two-file rows (two threads), a save missed against a peer
    names the measurement behind it: the raw write to one file and to two
    files on two threads, and what num_shards=2 gave against that peer."""
    from fastckpt.bench.run import RAW_TWO_FILES, TWO_DATA_FILES, verdict

    def row(kind, t, raw):
        return {"kind": kind, "min_s": t, "vs_raw": raw / t, "gb_per_s": 1.0}
    res = {"raw write (1 file, sequential)": row("save", 0.20, 0.20), "fastckpt save": row("save", 0.21, 0.20),
           RAW_TWO_FILES: row("save", 0.11, 0.20), TWO_DATA_FILES: row("save", 0.12, 0.20),
           "safetensors save_file": row("save", 0.19, 0.20)}
    facts = verdict(res)
    assert facts["kinds"]["save"]["fastest_other"] == "safetensors save_file"  # not the two-file rows
    assert facts["missed"] == ["saved below 1.0x safetensors save_file -- one file's writes are serialized by "
                               "the file system here: the raw write took 0.200 s to one file and 0.110 s to two "
                               "files on two threads; with num_shards=2 fastckpt saved at 1.58x safetensors save_file"]
    assert facts["kinds"]["save"]["two_files_raw_speedup"] == pytest.approx(0.20 / 0.11)
    res["fastckpt save"] = row("save", 0.18, 0.20)
    assert verdict(res)["missed"] == []  # nothing to explain


# The process's peak RSS from now on (getrusage's ru_maxrss survives exec on Linux: a child of a big
# pytest would start at its parent's peak): VmHWM of /proc/self/status, reset by clear_refs "5".
RSS_HELPERS = (
    "def _status(key):\n"
    "    with open('/proc/self/status') as f:\n"
    "        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key + ':'))\n"
    "def since_now():\n"
    "    with open('/proc/self/clear_refs', 'w') as f:\n"
    "        f.write('5')\n"
    "    return _status('VmRSS')\n"
    "def peak():\n"
    "    return _status('VmHWM')\n")


@pytest.mark.deep
@pytest.mark.no_sanitizer  # (ASan's allocator and quarantine add their own memory)
def test_bench_with_every_peer_prints_only_its_table_and_stays_within_its_estimate(tmp_path):
    """With TensorFlow, torch, DCP, safetensors and Orbax: no library's log
    line on stdout or stderr, and the memory figure holds."""
    code = (RSS_HELPERS + "import fastckpt.bench.run as b\n"
            "from fastckpt.bench.peers import quiet\n"
            "with quiet():\n"
            "    for m in ('tensorflow', 'torch', 'torch.distributed.checkpoint', 'safetensors.numpy', "
            "'orbax.checkpoint'):\n"
            "        try:\n"
            "            __import__(m)\n"
            "        except ImportError:\n"
            "            pass\n"
            "base = since_now()\n"
            f"b.run_bench(size=512 << 20, tensors=32, rounds=1, directory={str(tmp_path)!r})\n"
            "print('MEMORY', peak() - base, b.memory_estimate(512 << 20, False))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("fastckpt bench:") and lines[-2].startswith("verdict: fastckpt")
    assert not [line for line in lines[:-1] if not line.startswith(("fastckpt bench:", "machine:", "|", "min, median",
                                                                    "note:", "verdict:")) and line.strip()], lines
    assert "absl" not in r.stderr and "oneDNN" not in r.stderr and "WARNING" not in r.stderr, r.stderr
    used, estimate = map(int, lines[-1].split()[1:])
    assert used <= estimate, (used, estimate)


@pytest.mark.no_sanitizer  # (ASan has an allocator of its own)
def test_bench_settles_the_heap_a_case_left_behind(monkeypatch):
    """Before each timed case the bench finishes the heap work an earlier
    case left (glibc sorts freed chunks on later allocations): after
    200,000 small blocks are freed, settling takes several 1 MiB
    allocations, and afterwards one is enough (a few if the machine preempts
    the thread meanwhile); without glibc it does nothing and says so (0)."""
    import ctypes
    from fastckpt.bench import settle
    lib = settle._libc()
    if lib is None:
        pytest.skip("not glibc")
    lib.malloc.restype = ctypes.c_void_p
    keep = [lib.malloc(1000 + i % 24) for i in range(200_000)]
    for ptr in keep[::2]:  # every other one: freed chunks that cannot merge
        lib.free(ptr)
    assert settle.settle_heap() > 1
    assert settle.settle_heap() <= 3  # (one, unless the machine preempts this thread)
    for ptr in keep[1::2]:
        lib.free(ptr)
    settle.settle()
    monkeypatch.setattr(settle, "_LIBC", False)
    assert settle.settle_heap() == 0


@pytest.mark.no_sanitizer  # (ASan's allocator and quarantine add their own memory)
def test_bench_memory_estimate_covers_the_measured_peak(tmp_path):
    """The first line's memory figure is at least what the run takes beyond
    the libraries (measured in a child: peak RSS minus RSS after imports)."""
    code = (RSS_HELPERS + "import fastckpt.bench.run as b\n"
            "base = since_now()\n"
            f"b.run_bench(size=256 << 20, tensors=32, rounds=1, directory={str(tmp_path)!r}, skip_others=True,"
            " out=lambda line: None)\n"
            "print(peak() - base, b.memory_estimate(256 << 20, True))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    used, estimate = map(int, r.stdout.split())
    assert used <= estimate, (used, estimate)
    assert estimate <= 2 * used, (used, estimate)  # and not a wild overstatement


def test_py_typed_and_stub_shipped():
    pkg = os.path.dirname(fastckpt.__file__)
    assert os.path.exists(os.path.join(pkg, "py.typed"))
    assert os.path.exists(os.path.join(pkg, "_core.pyi"))


def test_mypy_clean():
    pytest.importorskip("mypy")
    r = subprocess.run([sys.executable, "-m", "mypy", os.path.join(ROOT, "fastckpt")], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


USER_CODE = """\
import numpy as np
import fastckpt

prefix: str = fastckpt.save({"w": np.zeros(2)}, "c")
reveal_type(fastckpt.latest_checkpoint("run"))
mgr = fastckpt.CheckpointManager("run")
reveal_type(mgr.restored_step)
fastckpt.latest_checkpoint(3)
reveal_type(mgr.save({"w": np.zeros(2)}, 1, blocking=False))
reveal_type(mgr.save({"w": np.zeros(2)}, 2))
"""


@pytest.mark.no_sanitizer
@pytest.mark.deep  # 20 s of mypy in a scratch project; test_mypy_clean checks the package itself in the default tier
def test_a_user_project_gets_fastckpts_types_from_an_editable_install(tmp_path):
    """mypy, run from another directory, finds the installed fastckpt and
    its types (an editable install puts a plain path in its .pth)."""
    pytest.importorskip("mypy")
    import importlib.metadata
    import json
    urls = [d.read_text("direct_url.json") for d in importlib.metadata.distributions()
             if d.metadata["Name"] == "fastckpt"]
    if not any(u and json.loads(u).get("dir_info", {}).get("editable") for u in urls):
        pytest.skip("fastckpt is not installed with `pip install -e` here")
    (tmp_path / "user.py").write_text(USER_CODE)
    r = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", "user.py"], capture_output=True,
                       text=True, cwd=tmp_path, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    out = r.stdout + r.stderr
    assert "import-not-found" not in out and "Cannot find implementation" not in out, out
    assert 'Revealed type is "str | None"' in out or 'Revealed type is "Union[str, None]"' in out, out
    assert 'Revealed type is "int | None"' in out or 'Revealed type is "Union[int, None]"' in out, out
    assert 'Argument 1 to "latest_checkpoint" has incompatible type "int"' in out, out
    assert 'Revealed type is "concurrent.futures._base.Future[str] | None"' in out or \
        'Revealed type is "Union[concurrent.futures._base.Future[builtins.str], None]"' in out, out
    assert out.count('Revealed type is "str | None"') + out.count('Revealed type is "Union[str, None]"') >= 2, out


def test_the_library_and_its_commands_do_not_load_the_benchmark(tmp_path):
    """`import fastckpt`, `fastckpt ls/verify/gc` leave the benchmark (and its
    process-wide malloc settings) out of the user's process."""
    p = fastckpt.save({"a": {"b": np.zeros(2)}}, str(tmp_path / "c"))
    code = ("import sys, fastckpt, fastckpt.cli as c\n"
            f"for argv in (['ls', {p!r}], ['verify', {p!r}], ['gc', {str(tmp_path)!r}]):\n"
            "    assert c.main(argv) == 0, argv\n"
            "assert 'fastckpt.bench' not in sys.modules, 'benchmark imported'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


IMPORT_TIMES = """\
import sys, time
t = time.perf_counter(); import numpy; numpy_s = time.perf_counter() - t
t = time.perf_counter(); import fastckpt; fastckpt_s = time.perf_counter() - t
heavy = [m for m in ("ml_dtypes", "torch", "jax", "tensorflow", "safetensors", "zstandard", "boto3", "mpi4py",
                     "fastckpt.bench") if m in sys.modules]
print(numpy_s, fastckpt_s, heavy)
"""


def test_import_fastckpt_is_quick_and_loads_no_framework():
    """Every command pays `import fastckpt`: it loads no framework and no
    ml_dtypes (most of a second to import here), and takes at most 3x what
    `import numpy` takes (min of three fresh processes; 0.9.0 took ~15x)."""
    runs = []
    for _ in range(3):
        r = subprocess.run([sys.executable, "-c", IMPORT_TIMES], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        numpy_s, fastckpt_s, heavy = r.stdout.split(" ", 2)
        assert heavy.strip() == "[]", heavy
        runs.append((float(numpy_s), float(fastckpt_s)))
    assert min(f for _, f in runs) <= 3 * min(n for n, _ in runs), runs


def test_bfloat16_and_float8_need_no_import_by_the_caller(tmp_path):
    """ml_dtypes is loaded when a checkpoint has its types: a fresh process
    reads bfloat16 and float8 tensors (bundle and safetensors) without
    importing it itself, through the fast path, bit-exact."""
    import ml_dtypes
    import safetensors.numpy
    state = {"b": np.arange(6, dtype=np.float32).astype(ml_dtypes.bfloat16),
             "f8": np.linspace(-2, 2, 5).astype(ml_dtypes.float8_e4m3fn), "x": np.ones(3, np.float32)}
    p = fastckpt.write_bundle(str(tmp_path / "c"), state)
    safetensors.numpy.save_file({"b": state["b"]}, str(tmp_path / "w.safetensors"))
    code = (f"import sys, fastckpt\nassert 'ml_dtypes' not in sys.modules\n"
            f"r = fastckpt.read_bundle({p!r})\n"
            "print(r['b'].dtype, r['f8'].dtype, r['b'].view('uint16').tolist(), r['f8'].view('uint8').tolist())\n"
            f"fastckpt.convert({str(tmp_path / 'w.safetensors')!r}, {str(tmp_path / 'back')!r})\n"
            f"print(fastckpt.read_bundle({str(tmp_path / 'back')!r})['b'].dtype)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[0] == (f"bfloat16 float8_e4m3fn {state['b'].view(np.uint16).tolist()} "
                                       f"{state['f8'].view(np.uint8).tolist()}"), r.stdout
    assert r.stdout.split("\n")[1] == "bfloat16"


def _cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "fastckpt", *args], capture_output=True, text=True, input=stdin)


def test_version_help_and_module_entry_point():
    r = _cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"fastckpt {fastckpt.__version__}"
    r = _cli()
    assert r.returncode == 2 and "COMMAND" in r.stdout and "verify" in r.stdout and not r.stderr
    for command in ("bench", "verify", "ls", "gc"):
        r = _cli(command, "--help")
        assert r.returncode == 0
        options = [line for line in r.stdout.splitlines() if line.strip().startswith("--")]
        assert all(len(line.split()) > 1 for line in options), r.stdout  # every option explains itself


@pytest.mark.parametrize("args,message", [
    (["bench", "--dtype", "nonsense"], "unknown dtype"),
    (["bench", "--tensors", "0"], "at least 1"),
    (["bench", "--size", "foo"], "cannot parse size"),
    (["bench", "--rounds", "0"], "at least 1"),
    (["bench", "--dir", "/missing"], "not a directory"),
    (["verify", "/no/such/checkpoint"], "no checkpoint"),
    (["ls", "/no/such/checkpoint"], "fastckpt:"),
])
def test_bad_usage_is_one_line_and_exit_2(args, message):
    r = _cli(*args)
    assert r.returncode == 2, r
    assert "Traceback" not in r.stderr and message in r.stderr.strip().splitlines()[-1]


def test_verify_exit_status_and_json(tmp_path):
    import json
    saver = fastckpt.Saver()
    p = saver.save({"w": np.arange(1000, dtype=np.float32)}, str(tmp_path / "m"), global_step=1)
    r = _cli("verify", str(tmp_path), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["ok"] is True
    with open(p + ".data-00000-of-00001", "r+b") as f:
        f.seek(100)
        f.write(b"\xff")
    r = _cli("verify", p)
    assert r.returncode == 1 and "DAMAGED" in r.stdout
    report = json.loads(_cli("verify", p, "--json").stdout)
    assert report["ok"] is False and report["checkpoints"][0]["problems"]
    empty = tmp_path / "empty"
    empty.mkdir()
    r = _cli("verify", str(empty))
    assert r.returncode == 2 and "no checkpoint at" in r.stderr


def test_ls_columns_tf_dtype_names_and_json(tmp_path):
    import json
    p = fastckpt.write_bundle(str(tmp_path / "c"), {"a/long/name": np.zeros(3, np.float32),
                                                    "s": np.array([b"x"], dtype=object)})
    r = _cli("ls", p)
    lines = r.stdout.splitlines()[1:]
    assert "string" in r.stdout and "object" not in r.stdout
    assert len({line.index(line.split()[1]) for line in lines}) == 1  # the dtype column is aligned
    data = json.loads(_cli("ls", p, "--json").stdout)
    assert data["tensors"] == [{"name": "a/long/name", "dtype": "float32", "shape": [3]},
                               {"name": "s", "dtype": "string", "shape": [1]}]


def test_output_piped_into_head_ends_quietly(tmp_path):
    p = fastckpt.write_bundle(str(tmp_path / "c"), {f"t{i}": np.zeros(1) for i in range(20000)})
    r = subprocess.run(f"{sys.executable} -m fastckpt ls {p} | head -1", shell=True, capture_output=True, text=True)
    assert r.stdout.count("\n") == 1 and r.stderr == ""


def test_bench_quick_json(tmp_path):
    import json
    r = _cli("bench", "--quick", "--json", "--only-fastckpt", "--dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["size"] == 64 << 20 and data["rounds"] == 1
    assert data["results"]["fastckpt save"]["median_s"] > 0


def test_bench_loop_json(tmp_path):
    """bench --loop: the four cases, durable and not, side by side."""
    import json
    r = _cli("bench", "--loop", "4", "--size", "8MiB", "--tensors", "8", "--rounds", "1", "--json",
             "--dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)["results"]
    for mode in ("non-durable", "durable"):
        assert set(data[mode]) == {"raw write, new file", "raw overwrite, cached file", "save, new files",
                                   "save, recycled (recycle=True)"}
        assert all(0 < t["min_s"] <= t["median_s"] for t in data[mode].values())
    assert os.listdir(tmp_path) == []
    r = _cli("bench", "--loop", "3", "--dir", str(tmp_path))
    assert r.returncode == 2 and "needs K > 3" in r.stderr


def test_bench_delta_json(tmp_path):
    """bench --delta: full vs delta saves of a fine-tuning loop and of a
    loop where everything changes, with the bytes each save wrote."""
    import json
    r = _cli("bench", "--delta", "--loop", "4", "--size", "16MiB", "--tensors", "8", "--rounds", "1", "--json",
             "--dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)["results"]
    full, delta = data["fine-tuning: full saves"], data["fine-tuning: delta=True"]
    assert full["written_bytes"] > 10 * delta["written_bytes"] > 0  # 5 % of the state changes per step
    assert data["all change: delta=True"]["written_bytes"] >= full["written_bytes"]
    assert data["verdict"].startswith("verdict: fine-tuning saves wrote")
    assert data["tied"]["fastckpt"] <= data["tied"]["torch.save"]
    assert os.listdir(tmp_path) == []


def _run_with_tty_stderr(args):
    """(stdout, what a terminal on stderr saw) of ``python -m fastckpt args``."""
    import pty
    master, slave = pty.openpty()
    try:
        r = subprocess.run([sys.executable, "-m", "fastckpt", *args], stdout=subprocess.PIPE, stderr=slave,
                           text=True, timeout=300)
        os.close(slave)
        seen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
    return r, seen.decode(errors="replace")


def test_progress_on_a_terminal_only(tmp_path):
    r, seen = _run_with_tty_stderr(["bench", "--quick", "--only-fastckpt", "--dir", str(tmp_path)])
    assert r.returncode == 0
    assert "needs about" in r.stdout and "round 1/1: fastckpt save" in seen
    assert "\r\033[K" in seen  # the progress line is cleared before the table
    p = fastckpt.write_bundle(str(tmp_path / "c"), {"w": np.zeros(1000)})
    r, seen = _run_with_tty_stderr(["verify", p])
    assert r.returncode == 0 and "MiB checked" in seen
    quiet = _cli("verify", p)  # stderr is a pipe here: no progress
    assert quiet.returncode == 0 and quiet.stderr == ""
