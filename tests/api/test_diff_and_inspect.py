"""fastckpt diff (any two formats, tolerances, exit status, --json) and
fastckpt inspect (a summary of any format, terminal and --json)."""

import json
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import fastckpt
from fastckpt.formats.convert import convert
from fastckpt.formats.diff import PIECE_ELEMENTS


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "fastckpt", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def pair(tmp_path):
    a = {"w": np.linspace(0, 1, 1000, dtype=np.float32), "same": np.arange(5), "gone": np.ones(1),
         "nan": np.array([np.nan, 1.0, -0.0]), "shape": np.zeros((2, 3)), "dt": np.ones(4, np.float32)}
    b = dict(a, w=a["w"] * np.float32(1 + 1e-5), new=np.zeros(2), shape=np.zeros((3, 2)),
             dt=np.ones(4, np.float64), nan=np.array([np.nan, 1.0, 0.0]))
    del b["gone"]
    fastckpt.write_bundle(str(tmp_path / "a"), a)
    fastckpt.write_bundle(str(tmp_path / "b"), b)
    convert(str(tmp_path / "b"), str(tmp_path / "b.safetensors"))
    return tmp_path, a, b


def test_diff_reports_each_kind_of_difference(pair):
    d, a, b = pair
    report = fastckpt.diff(str(d / "a"), str(d / "b.safetensors"))
    assert not report.equal
    assert report.only_in_a == ["gone"] and report.only_in_b == ["new"]
    t = report.tensors
    assert t["same"].status == "identical"
    assert t["shape"].status == "shape" and t["shape"].shape_b == [3, 2]
    assert t["dt"].status == "dtype" and t["dt"].max_abs == 0.0
    assert t["nan"].status == "close"  # -0.0 vs 0.0: equal as numbers (NaN in the same place too), other bits
    assert t["nan"].max_abs == 0.0 and t["nan"].mismatched == 0
    w = t["w"]
    want = np.abs(a["w"].astype(np.float64) - b["w"].astype(np.float64))
    assert w.status == "different" and w.max_abs == pytest.approx(want.max())
    assert w.max_rel == pytest.approx((want[1:] / np.abs(b["w"][1:].astype(np.float64))).max())
    assert w.mismatched == int((want > 0).sum())


def test_tolerances_decide_close_and_the_exit_status(pair):
    d, _, _ = pair
    for name, arr in (("a1", np.array([1.0, 2.0, np.nan, np.inf])), ("b1", np.array([1.0 + 1e-9, 2.0, np.nan, np.inf]))):
        fastckpt.write_bundle(str(d / name), {"x": arr})
    assert fastckpt.diff(str(d / "a1"), str(d / "b1"), atol=1e-8).tensors["x"].status == "close"
    assert fastckpt.diff(str(d / "a1"), str(d / "b1"), rtol=1e-8).equal
    assert not fastckpt.diff(str(d / "a1"), str(d / "b1"), rtol=1e-10).equal
    assert _cli("diff", str(d / "a1"), str(d / "b1"), "--atol", "1e-8").returncode == 0
    r = _cli("diff", str(d / "a1"), str(d / "b1"))
    assert r.returncode == 1 and "different  x" in r.stdout, r.stdout
    fastckpt.write_bundle(str(d / "c1"), {"x": np.array([1.0, 2.0, 5.0, np.inf])})
    one_nan = fastckpt.diff(str(d / "a1"), str(d / "c1"), atol=1e9).tensors["x"]
    assert one_nan.status == "different" and one_nan.max_abs == float("inf")
    assert _cli("diff", str(d / "a1"), str(d / "b1"), "--atol", "-1").returncode == 2


def test_diff_json_and_identical_copies_in_every_format(pair):
    d, _, _ = pair
    convert(str(d / "a"), str(d / "a.npz"))
    r = _cli("diff", str(d / "a"), str(d / "a.npz"), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["equal"] and set(doc["tensors"]) == {"w", "same", "gone", "nan", "shape", "dt"}
    r = _cli("diff", str(d / "a"), str(d / "b"), "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 1 and not doc["equal"] and doc["only_in_b"] == ["new"]


def test_diff_compares_the_values_that_are_not_tensors(tmp_path):
    """Two training checkpoints with the same tensors but another step or
    learning rate are DIFFERENT (0.9 called them equal): each value named
    with both sides; values only in one are listed; --summary prints the
    verdict line only; --json carries them."""
    model = {"w": np.ones(3, np.float32)}
    a = fastckpt.save({"model": model, "optim": {"lr": 1e-3, "betas": (0.9, 0.99)}, "step": 7, "tag": "x"},
                      str(tmp_path / "a"))
    b = fastckpt.save({"model": model, "optim": {"lr": 5e-4, "betas": (0.9, 0.99)}, "step": 8, "extra": None},
                      str(tmp_path / "b"))
    report = fastckpt.diff(a, b)
    assert not report.equal and all(t.status == "identical" for t in report.tensors.values())
    assert report.values == {"optim/lr": (1e-3, 5e-4), "step": (7, 8)}
    assert report.values_only_in_a == ["tag"] and report.values_only_in_b == ["extra"]
    assert fastckpt.diff(a, a).equal
    same_but_int = fastckpt.save({"model": model, "optim": {"lr": 1e-3, "betas": (0.9, 0.99)}, "step": 7.0,
                                  "tag": "x"}, str(tmp_path / "c"))
    assert fastckpt.diff(a, same_but_int).values == {"step": (7, 7.0)}  # (an int and a float are not one value)
    r = _cli("diff", a, b)
    assert r.returncode == 1 and "value  optim/lr  0.001 -> 0.0005" in r.stdout and "value only in A: tag" in r.stdout
    r = _cli("diff", a, b, "--summary")
    assert r.returncode == 1 and r.stdout.count("\n") == 1 and r.stdout.startswith("DIFFERENT: 1 common tensor(s)")
    assert "2 value(s) differ, 2 only in one" in r.stdout
    doc = json.loads(_cli("diff", a, b, "--json").stdout)
    assert doc["values"] == {"optim/lr": ["0.001", "0.0005"], "step": ["7", "8"]} and doc["values_only_in_b"] == ["extra"]
    torch = pytest.importorskip("torch")
    torch.save({"model": {"w": torch.ones(3)}, "epoch": 3}, str(tmp_path / "t3.pt"))
    torch.save({"model": {"w": torch.ones(3)}, "epoch": 4}, str(tmp_path / "t4.pt"))
    assert fastckpt.diff(str(tmp_path / "t3.pt"), str(tmp_path / "t4.pt")).values == {"epoch": (3, 4)}


def test_ignore_dtype_compares_a_cast_by_value(tmp_path):
    """A float32 checkpoint against its bfloat16 cast: "dtype" by default,
    "close" with ignore_dtype within a tolerance that covers bfloat16's
    rounding, "different" below it."""
    a = fastckpt.write_bundle(str(tmp_path / "a"), {"w": np.linspace(-3, 3, 101, dtype=np.float32),
                                                    "i": np.arange(4)})
    b = convert(a, str(tmp_path / "b"), dtype="bfloat16")
    assert fastckpt.diff(a, b).tensors["w"].status == "dtype" and not fastckpt.diff(a, b).equal
    loose = fastckpt.diff(a, b, rtol=1e-2, ignore_dtype=True)
    assert loose.tensors["w"].status == "close" and loose.equal
    tight = fastckpt.diff(a, b, rtol=1e-6, ignore_dtype=True)
    assert tight.tensors["w"].status == "different" and tight.tensors["w"].mismatched > 0
    assert _cli("diff", a, b, "--ignore-dtype", "--rtol", "1e-2").returncode == 0
    with pytest.raises(fastckpt.InvalidArgumentError, match="ignore_dtype"):
        fastckpt.diff(a, b, ignore_dtype="yes")


def test_diff_compares_large_tensors_in_pieces(tmp_path, monkeypatch):
    import importlib
    diff_mod = importlib.import_module("fastckpt.formats.diff")
    monkeypatch.setattr(diff_mod, "PIECE_ELEMENTS", 1000)
    a = np.arange(10_000, dtype=np.float32).reshape(100, 100)
    b = a.copy()
    b[99, 99] += 1
    fastckpt.write_bundle(str(tmp_path / "a"), {"x": a})
    fastckpt.write_bundle(str(tmp_path / "b"), {"x": b})
    t = fastckpt.diff(str(tmp_path / "a"), str(tmp_path / "b")).tensors["x"]
    assert t.mismatched == 1 and t.max_abs == 1.0
    assert PIECE_ELEMENTS > 1000


def test_inspect_summarises_every_format(tmp_path):
    tensors = {"emb/w": np.zeros((100, 10), np.float32), "emb/b": np.zeros(10, np.float32),
               "head/w": np.zeros((10, 3), ml_dtypes.bfloat16), "step": np.array(3, np.int64)}
    fastckpt.save({"emb": {"w": tensors["emb/w"], "b": tensors["emb/b"]}, "head": {"w": tensors["head/w"]},
                   "step": 3}, str(tmp_path / "nested"), metadata={"run": "r1"}, compression="zstd")
    s = fastckpt.inspect_checkpoint(str(tmp_path / "nested"))
    assert s["format"] == "tf" and s["compression"] == "zstd" and s["tensors"] == 3
    assert s["bytes_by_dtype"]["float32"] == {"tensors": 2, "bytes": 4040}
    assert s["bytes_by_dtype"]["bfloat16"] == {"tensors": 1, "bytes": 60}
    assert s["largest"][0] == {"name": "emb/w", "dtype": "float32", "shape": [100, 10], "bytes": 4000}
    assert s["metadata"] == {"run": "r1"}
    assert s["structure"]["emb"]["tensors"] == 2 and "w" in s["structure"]["emb"]["children"]
    fastckpt.write_bundle(str(tmp_path / "flat"), tensors)
    convert(str(tmp_path / "flat"), str(tmp_path / "m.safetensors"), num_shards=2)
    s = fastckpt.inspect_checkpoint(str(tmp_path / "m.safetensors"))
    assert s["format"] == "safetensors" and s["data_files"] == 2 and s["bytes_by_dtype"]["BF16"]["bytes"] == 60
    r = _cli("inspect", str(tmp_path / "nested"))
    assert r.returncode == 0 and "compression: zstd" in r.stdout and "emb/w" in r.stdout, r.stdout
    assert '"run": "r1"' in r.stdout
    r = _cli("inspect", str(tmp_path / "m.safetensors.index.json"), "--json")
    assert json.loads(r.stdout)["tensors"] == 4
    np.savez(tmp_path / "x.npz", **{k: v for k, v in tensors.items() if k != "head/w"})
    r = _cli("inspect", str(tmp_path / "x.npz"), "--largest", "1")
    assert r.returncode == 0 and "3 tensors" in r.stdout and r.stdout.count("emb/w") == 2, r.stdout
    assert _cli("inspect", str(tmp_path / "nothing")).returncode == 2


def test_inspect_shows_a_tensorflow2_checkpoint_by_its_objects(data_dir):
    import os
    s = fastckpt.inspect_checkpoint(os.path.join(data_dir, "tf2_checkpoint"))
    assert s["object_graph_nodes"] > 1
    assert all(".ATTRIBUTES" not in k for k in s["structure"])
