"""Exporting part of a checkpoint (``convert --only/--exclude/--strip-prefix``)
and telling formats apart by content and by suffix."""

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import fastckpt
from fastckpt.formats.convert import convert, convert_files
from tests.helpers.roundtrip import assert_bit_equal

safetensors_numpy = pytest.importorskip("safetensors.numpy")

MODEL = {"enc.weight": np.arange(12, dtype=np.float32).reshape(3, 4), "enc.bias": np.ones(3, np.float32),
         "bn.num_batches_tracked": np.array(5, np.int64), "head.weight": np.full((2, 3), 0.5, np.float32)}


def _training_checkpoint(path):
    """A training checkpoint as a PyTorch loop saves it: model, optimizer
    moments, and values that are not tensors (step, learning rate)."""
    return fastckpt.save({"model": MODEL, "optim": {"exp_avg": {k: np.zeros_like(v) for k, v in MODEL.items()},
                                                    "step": 7, "lr": 1e-3}}, str(path))


def test_only_and_strip_prefix_export_a_models_weights_as_safetensors(tmp_path):
    """The issue's case: the whole checkpoint is refused (its step and
    learning rate would be lost); ``only="model", strip_prefix="model/"``
    writes the model's own names, bit-exact, readable by safetensors."""
    prefix = _training_checkpoint(tmp_path / "run")
    dst = str(tmp_path / "model.safetensors")
    with pytest.raises(fastckpt.InvalidArgumentError, match="other value"):
        convert(prefix, dst)
    assert convert(prefix, dst, only="model", strip_prefix="model/") == dst
    got = safetensors_numpy.load_file(dst)
    assert sorted(got) == sorted(MODEL)
    for k, v in MODEL.items():
        assert_bit_equal(got[k], v)
    torch_st = pytest.importorskip("safetensors.torch")
    assert torch_st.load_file(dst)["enc.weight"].tolist() == MODEL["enc.weight"].tolist()


def test_exclude_takes_globs_and_only_takes_several(tmp_path):
    prefix = _training_checkpoint(tmp_path / "run")
    dst = str(tmp_path / "w.safetensors")
    convert(prefix, dst, only=["model/enc", "model/head.weight"], exclude="*.bias", strip_prefix="model/")
    assert sorted(safetensors_numpy.load_file(dst)) == ["enc.weight", "head.weight"]
    convert(prefix, dst, only="model", exclude=["*.num_batches_tracked"], strip_prefix="model/")
    assert sorted(safetensors_numpy.load_file(dst)) == ["enc.bias", "enc.weight", "head.weight"]
    # a name is not a prefix of another's segment: "model/enc" does not choose "model/encoder.x"
    assert fastckpt.formats.select.matches("model/enc.weight", "model/enc")
    assert not fastckpt.formats.select.matches("model/encoder.weight", "model/enc")
    assert fastckpt.formats.select.matches("model/encoder.weight", "model/enc*")


def test_selection_refusals_name_what_is_wrong(tmp_path):
    prefix = _training_checkpoint(tmp_path / "run")
    dst = str(tmp_path / "w.safetensors")
    with pytest.raises(fastckpt.InvalidArgumentError, match=r"chooses no tensor.*model/enc.weight"):
        convert(prefix, dst, only="modle")
    with pytest.raises(fastckpt.InvalidArgumentError, match=r"not tensors \(optim/step, optim/lr\)"):
        convert(prefix, dst, only="optim")
    convert(prefix, str(tmp_path / "opt"), exclude=["optim/step", "optim/lr"], strip_prefix="optim/exp_avg/")
    assert "enc.weight" in fastckpt.read_bundle(str(tmp_path / "opt"))  # (values outside excluded: allowed)
    both = fastckpt.write_bundle(str(tmp_path / "both"), {"a/x": np.zeros(1), "x": np.ones(1)})
    with pytest.raises(fastckpt.InvalidArgumentError, match="'a/x' and 'x' both become 'x'|'x' and 'a/x' both"):
        convert(both, str(tmp_path / "x"), strip_prefix="a/")
    with pytest.raises(fastckpt.InvalidArgumentError, match="no name left"):
        convert(prefix, dst, only="model/enc.bias", strip_prefix="model/enc.bias")
    with pytest.raises(fastckpt.InvalidArgumentError, match="non-empty"):
        convert(prefix, dst, only=[""])
    assert not os.path.exists(dst) and not os.path.exists(tmp_path / "x.index")
    assert not any(n.startswith(".fcsave-") for n in os.listdir(tmp_path))


def test_a_selection_to_a_bundle_and_to_sharded_safetensors_lists_every_file(tmp_path):
    """``convert_files`` (and the command's "wrote" line) names the files
    really written: a bundle's index and data file, a sharded safetensors'
    shards and index (which safetensors' and transformers' loaders read)."""
    prefix = _training_checkpoint(tmp_path / "run")
    files = convert_files(prefix, str(tmp_path / "m"), only="model", strip_prefix="model/")
    assert files == [str(tmp_path / "m.index"), str(tmp_path / "m.data-00000-of-00001")] or \
        sorted(files) == sorted([str(tmp_path / "m.index"), str(tmp_path / "m.data-00000-of-00001")])
    got = fastckpt.read_bundle(str(tmp_path / "m"))
    assert sorted(got) == sorted(MODEL)
    files = convert_files(prefix, str(tmp_path / "model.safetensors"), num_shards=2, only="model",
                          strip_prefix="model/")
    assert all(os.path.isfile(f) for f in files) and len(files) == 3
    index = json.loads(open(tmp_path / "model.safetensors.index.json").read())
    assert sorted(index["weight_map"]) == sorted(MODEL)
    merged = {}
    for shard in set(index["weight_map"].values()):
        merged.update(safetensors_numpy.load_file(str(tmp_path / shard)))
    assert sorted(merged) == sorted(MODEL)
    r = subprocess.run([sys.executable, "-m", "fastckpt", "convert", prefix, str(tmp_path / "cli.safetensors"),
                        "--only", "model", "--exclude", "*.bias", "--strip-prefix", "model/", "--num-shards", "2"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    listed = r.stdout.strip().split(": ", 1)[1].split(", ")
    assert r.stdout.startswith("wrote 3 files") and all(os.path.isfile(f) for f in listed), r.stdout
    r = subprocess.run([sys.executable, "-m", "fastckpt", "convert", prefix, str(tmp_path / "one.safetensors"),
                        "--only", "model", "--strip-prefix", "model/"], capture_output=True, text=True)
    assert r.stdout.strip() == f"wrote {tmp_path / 'one.safetensors'}", r.stdout + r.stderr


def test_tied_weights_stay_tied_under_their_new_names(tmp_path):
    shared = np.arange(6, dtype=np.float32)
    prefix = fastckpt.save({"model": {"emb": shared, "head": shared, "b": np.ones(2, np.float32)}, "step": 3},
                           str(tmp_path / "run"))
    dst = str(tmp_path / "m.safetensors")
    convert(prefix, dst, only="model", strip_prefix="model/")
    with open(dst, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert sorted(k for k in header if k != "__metadata__") == ["b", "emb"]
    assert header["__metadata__"] == {"head": "emb"}
    back = fastckpt.read_bundle(convert(dst, str(tmp_path / "back")))
    assert back["head"].tolist() == shared.tolist()


def test_a_mistyped_or_foreign_destination_suffix_is_an_error_listing_the_formats(tmp_path):
    src = fastckpt.write_bundle(str(tmp_path / "src"), MODEL)
    with pytest.raises(fastckpt.InvalidArgumentError, match=r"did you mean \.safetensors\?.*\.npz"):
        convert(src, str(tmp_path / "weights.safetensor"))
    for name in ("w.h5", "w.keras", "w.onnx", "w.pkl"):
        with pytest.raises(fastckpt.InvalidArgumentError, match="does not write"):
            convert(src, str(tmp_path / name))
    assert sorted(os.listdir(tmp_path)) == ["src.data-00000-of-00001", "src.index"]
    # TensorFlow's own naming stays a prefix, and --to names the format whatever the suffix
    convert(src, str(tmp_path / "model.ckpt"))
    assert sorted(fastckpt.read_bundle(str(tmp_path / "model.ckpt"))) == sorted(MODEL)
    convert(src, str(tmp_path / "w.h5"), dst_format="tf")
    assert os.path.exists(tmp_path / "w.h5.index")
    r = subprocess.run([sys.executable, "-m", "fastckpt", "convert", src, str(tmp_path / "x.safetensros")],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "did you mean .safetensors" in r.stderr, r.stderr


def test_sources_are_recognised_by_their_first_bytes(tmp_path):
    """Lightning's ``.ckpt`` is a PyTorch file; an HDF5 file or a Keras
    archive says what it is instead of "no checkpoint"."""
    torch = pytest.importorskip("torch")
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in MODEL.items()}, "epoch": 3}, str(ckpt))
    convert(str(ckpt), str(tmp_path / "from_lightning"))
    got = fastckpt.restore(str(tmp_path / "from_lightning"))
    assert got["epoch"] == 3 and got["state_dict"]["enc.weight"].tolist() == MODEL["enc.weight"].tolist()
    info = fastckpt.inspect_checkpoint(str(ckpt))
    assert info["format"] == "torch"
    h5 = tmp_path / "weights.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(fastckpt.UnsupportedError, match="HDF5"):
        convert(str(h5), str(tmp_path / "y"))
    keras_file = tmp_path / "model.keras"
    with zipfile.ZipFile(keras_file, "w") as z:
        z.writestr("config.json", "{}")
        z.writestr("model.weights.h5", b"\x89HDF")
    with pytest.raises(fastckpt.UnsupportedError, match="Keras archive"):
        convert(str(keras_file), str(tmp_path / "y"))
    renamed = tmp_path / "weights.bin2"  # safetensors under an odd name
    safetensors_numpy.save_file(MODEL, str(renamed))
    assert sorted(fastckpt.read_bundle(convert(str(renamed), str(tmp_path / "z")))) == sorted(MODEL)
