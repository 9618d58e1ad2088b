"""The `fastckpt` command and the typed surface (py.typed, _core.pyi, mypy)."""

import os
import subprocess
import sys

import numpy as np
import pytest

import fastckpt
from fastckpt.bench import gpt_like_state, parse_size, run_bench
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


def test_bench_runs_and_reports_every_case(tmp_path):
    lines = []
    res = run_bench(size=4 << 20, tensors=20, rounds=2, directory=str(tmp_path), skip_others=True,
                    out=lines.append)
    assert {"fastckpt save", "fastckpt restore (fresh arrays)", "fastckpt restore into=",
            "raw write (1 file, sequential)"} <= set(res)
    assert all(r["median_s"] > 0 for r in res.values())
    assert any(line.startswith("| fastckpt save") for line in lines)
    assert os.listdir(tmp_path) == []  # cleaned up


def test_py_typed_and_stub_shipped():
    pkg = os.path.dirname(fastckpt.__file__)
    assert os.path.exists(os.path.join(pkg, "py.typed"))
    assert os.path.exists(os.path.join(pkg, "_core.pyi"))


def test_mypy_clean():
    pytest.importorskip("mypy")
    r = subprocess.run([sys.executable, "-m", "mypy", os.path.join(ROOT, "fastckpt")], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


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
