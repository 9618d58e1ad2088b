"""Training states round-trip with their Python types: optimizer, scheduler
and scaler state dicts, random generators, data loader positions, every
leaf type; restore into live objects returns the whole structure."""

import collections
import math
import random

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, strategies as st

import fastckpt
from fastckpt.structure.record import STRUCTURE_KEY


def assert_exact(a, b, path="<root>"):
    """Same types all the way down, same keys in the same order, bit-equal
    arrays and tensors, equal values (NaN equal to NaN)."""
    assert type(a) is type(b), (path, type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            assert_exact(a[k], b[k], f"{path}/{k!r}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_exact(x, y, f"{path}/{i}")
    elif type(a).__module__.startswith("torch"):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert _torch_bytes(a) == _torch_bytes(b), path
    elif isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and np.shape(a) == np.shape(b), path
        if a.dtype.kind == "O":
            assert np.asarray(a).tolist() == np.asarray(b).tolist(), path
        else:
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), path
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), path
    elif isinstance(a, complex):
        assert (a.real, a.imag) == (b.real, b.imag) or repr(a) == repr(b), path
    else:
        assert a == b, (path, a, b)


def _torch_bytes(t):
    import torch
    return t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()


def roundtrip(tmp_path, state, **kw):
    prefix = fastckpt.save(state, str(tmp_path / "c"), **kw)
    assert fastckpt.verify_checkpoint(prefix).ok
    return prefix, fastckpt.restore(prefix)


# ---- every leaf type ----------------------------------------------------------------------

VALUES = {
    "none": None, "true": True, "false": False, "int": 7, "neg": -3, "big": 2 ** 200 + 1, "zero": 0,
    "float": 0.1, "nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "negzero": -0.0,
    "complex": complex(1.5, -2.25), "str": "run-1", "unicode": "ü\u2603\U0001F600", "surrogate": "a\udc80b",
    "empty_str": "", "bytes": b"\x00\xffabc", "empty_bytes": b"",
    "np_f32": np.float32(2.5), "np_i64": np.int64(-9), "np_bool": np.bool_(True), "np_bf16": ml_dtypes.bfloat16(1.5),
    "np_c128": np.complex128(1 + 2j),
    "arr": np.arange(6, dtype=np.int16).reshape(2, 3), "bf16": np.ones(3, ml_dtypes.bfloat16),
    "u_arr": np.array(["ab", "ü", ""]), "s_arr": np.array([b"x", b"yz"]), "obj": np.array([b"a", b"bc"], dtype=object),
    "list": [1, "two", None, [3.0]], "tuple": (1, (2, None)), "empty": {}, "empty_list": [], "empty_tuple": (),
    "ordered": collections.OrderedDict([("b", 1), ("a", np.zeros(2))]),
    "int_keys": {0: "a", 1: np.ones(1), -5: None}, "mixed_keys": {2: "i", "1x": "s", True: "b", None: "n", 2.5: "f"},
}


def test_every_leaf_type_round_trips_exactly(tmp_path):
    prefix, back = roundtrip(tmp_path, VALUES)
    assert_exact(back, VALUES)
    names = dict(fastckpt.list_variables(prefix))
    assert "arr" in names and "int_keys/1" in names and "bytes" in names and "np_f32" in names
    assert "int" not in names and "str" not in names and "none" not in names  # they live in the record


def test_arrays_stay_tensors_that_a_plain_reader_reads(tmp_path):
    prefix, _ = roundtrip(tmp_path, {"optim": {"state": {0: {"m": np.arange(3.0)}}, "lr": 0.5}})
    with fastckpt.load_checkpoint(prefix) as r:
        assert r.get_tensor("optim/state/0/m").tolist() == [0.0, 1.0, 2.0]
        assert sorted(r) == [STRUCTURE_KEY, "optim/state/0/m"]


def test_record_keeps_key_order_and_dict_kinds(tmp_path):
    state = {"z": 1, "a": {3: 1, 1: 2, 2: 3}, "m": collections.OrderedDict([("y", 1), ("x", 2)])}
    _, back = roundtrip(tmp_path, state)
    assert list(back) == ["z", "a", "m"] and list(back["a"]) == [3, 1, 2]
    assert type(back["m"]) is collections.OrderedDict and type(back["a"]) is dict


def test_python_random_and_numpy_generators(tmp_path):
    random.seed(11)
    random.random()
    gen = np.random.default_rng(5)
    gen.random(3)
    state = {"random": random.getstate(), "pcg64": gen.bit_generator.state,
             "mt": np.random.Generator(np.random.MT19937(3)).bit_generator.state,
             "legacy": np.random.RandomState(4).get_state(), "loader": {"epoch": 3, "batch_in_epoch": 117,
                                                                       "order_seed": 2 ** 63 + 5}}
    _, back = roundtrip(tmp_path, state)
    assert_exact(back, state)
    random.setstate(back["random"])
    expect_py = random.random()
    random.setstate(state["random"])
    assert random.random() == expect_py
    g2 = np.random.default_rng()
    g2.bit_generator.state = back["pcg64"]
    assert g2.random(4).tolist() == gen.random(4).tolist()
    rs = np.random.RandomState()
    rs.set_state(back["legacy"])
    assert rs.randint(0, 1000, 5).tolist() == np.random.RandomState(4).randint(0, 1000, 5).tolist()


@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text() | st.binary()
    | st.complex_numbers(allow_nan=False),
    lambda kids: (st.lists(kids, max_size=4) | st.tuples(kids, kids)
                  | st.dictionaries(st.integers() | st.text(min_size=1), kids, max_size=4)),
    max_leaves=20))
def test_property_any_python_tree_round_trips(tmp_path_factory, tree):
    state = {"t": tree}
    d = tmp_path_factory.mktemp("p")
    try:
        prefix = fastckpt.save(state, str(d / "c"))
    except fastckpt.InvalidArgumentError as e:
        assert "same name" in str(e)  # e.g. keys 1 and "1" side by side: refused, nothing written
        assert not list(d.iterdir())
        return
    assert_exact(fastckpt.restore(prefix), state)


def test_refused_leaves_name_the_path(tmp_path):
    class Custom:
        pass
    for bad, match in (({"a": {"b": Custom()}}, "Custom at a/b"), ({"a": [{1, 2}]}, "set at a/0"),
                       ({"a": {(1, 2): 1}}, "keys must be str, int, float, bool or None, found tuple"),
                       ({"a": {1: np.zeros(1), "1": np.zeros(1)}}, "same name")):
        with pytest.raises(fastckpt.InvalidArgumentError, match=match):
            fastckpt.save(bad, str(tmp_path / "c"))
    assert not list(tmp_path.iterdir())


# ---- PyTorch training states ----------------------------------------------------------------

def _torch_training(opt_name):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    opt = {"adam": lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True),
           "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
           "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True)}[opt_name](model.parameters())
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=50)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)  # holds float('inf')
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    for _ in range(3):
        loss = model(torch.randn(4, 6)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        plateau.step(loss.item())
    return torch, model, opt, {"model": model.state_dict(), "optim": opt.state_dict(), "sched": sched.state_dict(),
                               "plateau": plateau.state_dict(), "scaler": scaler.state_dict(),
                               "torch_rng": torch.get_rng_state(), "step": 3}


@pytest.mark.parametrize("opt_name", ["adam", "adamw", "sgd"])
def test_torch_optimizer_scheduler_scaler_states_round_trip(tmp_path, opt_name):
    torch, model, opt, state = _torch_training(opt_name)
    prefix, back = roundtrip(tmp_path, state)
    assert_exact(back, state)
    assert isinstance(back["optim"]["state"][0][next(iter(state["optim"]["state"][0]))], torch.Tensor)
    # the restored dicts load into fresh objects and continue identically
    model2 = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    opt2 = type(opt)(model2.parameters(), lr=1.0)
    model2.load_state_dict(back["model"])
    opt2.load_state_dict(back["optim"])
    x = torch.randn(4, 6)
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(x).pow(2).mean().backward()
        o.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "bfloat16", "complex64", "complex128",
                                   "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool",
                                   "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"])
def test_torch_tensors_of_every_dtype(tmp_path, dtype):
    torch = pytest.importorskip("torch")
    t = (torch.arange(-6, 6, dtype=torch.float32) / 4).reshape(3, 4).to(getattr(torch, dtype))
    state = {"t": t, "scalar": t[0, 0].clone(), "strided": t.t()}
    prefix, back = roundtrip(tmp_path, state)
    assert_exact(back, state)
    assert fastckpt.read_bundle(prefix, ["t"])["t"].shape == (3, 4)
    # write_bundle takes torch tensors too, as save does
    fastckpt.write_bundle(str(tmp_path / "wb"), {"t": t})
    assert fastckpt.read_bundle(str(tmp_path / "wb"))["t"].tobytes() == state["t"].contiguous().view(torch.uint8).numpy().tobytes()


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch: complex32 is experimental, qint8 deprecated
def test_torch_dtypes_without_a_tensorflow_equivalent_are_refused(tmp_path):
    torch = pytest.importorskip("torch")
    for t in (torch.zeros(2, dtype=torch.complex32), torch.zeros(2, dtype=torch.float8_e8m0fnu),
              torch.quantize_per_tensor(torch.zeros(2), 0.1, 0, torch.qint8), torch.zeros(2).to_sparse()):
        with pytest.raises(fastckpt.CheckpointError, match=r"torch|layout|quantized"):
            fastckpt.save({"t": t}, str(tmp_path / "c"))
    assert not list(tmp_path.iterdir())


# ---- restore into live objects ---------------------------------------------------------------

def test_restore_into_returns_the_structure_with_the_callers_tensors(tmp_path):
    torch, model, opt, state = _torch_training("adam")
    prefix = fastckpt.save(state, str(tmp_path / "c"))
    model2 = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-2, amsgrad=True)
    live = {"model": model2.state_dict(), "optim": opt2.state_dict()}  # optimizer: no state before step 1
    assert live["optim"]["state"] == {}
    back = fastckpt.restore(prefix, into=live)
    for name, p in model2.named_parameters():
        assert back["model"][name].data_ptr() == p.data_ptr()  # the model itself was filled
        assert torch.equal(p, state["model"][name])
    assert back["step"] == 3
    assert_exact(back["sched"], state["sched"])
    opt2.load_state_dict(back["optim"])
    assert_exact(opt2.state_dict(), state["optim"])


def test_manager_restore_or_initialize_pytorch_pattern(tmp_path):
    torch, model, opt, state = _torch_training("adamw")
    mgr = fastckpt.CheckpointManager(tmp_path)
    fresh_model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    fresh_opt = torch.optim.AdamW(fresh_model.parameters(), lr=1e-2, weight_decay=0.1)
    assert mgr.restore_or_initialize({"model": fresh_model.state_dict(), "optim": fresh_opt.state_dict()}) is None
    mgr.save({"model": model.state_dict(), "optim": opt.state_dict(), "epoch": 4}, 30, blocking=False)
    mgr.wait()
    mgr2 = fastckpt.CheckpointManager(tmp_path)
    restored = mgr2.restore_or_initialize({"model": fresh_model.state_dict(), "optim": fresh_opt.state_dict()})
    assert restored is not None and restored["epoch"] == 4 and mgr2.restored_step == 30
    fresh_opt.load_state_dict(restored["optim"])
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh_model.parameters()))
    assert_exact(fresh_opt.state_dict(), opt.state_dict())


def test_restore_into_refuses_what_would_stay_unrestored(tmp_path):
    prefix = fastckpt.save({"w": np.zeros(3), "n": 5}, str(tmp_path / "c"))
    with pytest.raises(fastckpt.InvalidArgumentError, match="nothing to restore into extra"):
        fastckpt.restore(prefix, into={"w": np.ones(3), "extra": np.ones(2)})
    with pytest.raises(fastckpt.InvalidArgumentError, match="holds a value there"):
        fastckpt.restore(prefix, into={"n": np.ones(1)})
    with pytest.raises(fastckpt.InvalidArgumentError, match="shape"):
        fastckpt.restore(prefix, into={"w": np.ones(4)})
    w = np.ones(3)
    back = fastckpt.restore(prefix, into={"w": w, "n": 0})  # a non-array leaf in into is just a placeholder
    assert back == {"w": w, "n": 5} and (w == 0).all()


def test_manager_restores_strings_and_values_it_saved(tmp_path):
    mgr = fastckpt.CheckpointManager(tmp_path)
    mgr.save({"w": np.arange(3.0), "tag": "run-1", "cfg": {"layers": 4, "act": None}}, 1)
    w = np.zeros(3)
    restored = fastckpt.CheckpointManager(tmp_path).restore_or_initialize({"w": w, "tag": "", "cfg": {}})
    assert restored == {"w": w, "tag": "run-1", "cfg": {"layers": 4, "act": None}} and w.tolist() == [0, 1, 2]


def test_flat_tensorflow_checkpoint_into_returns_every_tensor(data_dir):
    import os
    prefix = os.path.join(data_dir, "tf1_saver", "my-model-3000")
    names = [n for n, _ in fastckpt.list_variables(prefix)]
    with fastckpt.load_checkpoint(prefix) as r:
        first = r.get_tensor(names[0])
    target = np.zeros_like(first)
    back = fastckpt.restore(prefix, into={names[0]: target})
    assert list(back) == names and back[names[0]] is target and target.tobytes() == first.tobytes()


def test_old_version_1_records_still_restore(tmp_path):
    import json
    record = {"format": "fastckpt.structure", "version": 1, "metadata": None,
              "structure": {"dict": [["w", {"leaf": "w"}], ["step", {"leaf": "step", "python": "int"}]]},
              "leaves": {"w": {"dtype": "float64", "shape": [2]}, "step": {"dtype": "int64", "shape": []}}}
    p = fastckpt.write_bundle(str(tmp_path / "c"), {"w": np.ones(2), "step": np.int64(7),
                                                      STRUCTURE_KEY: np.frombuffer(json.dumps(record).encode(), np.uint8)})
    back = fastckpt.restore(p)
    assert back["step"] == 7 and type(back["step"]) is int and back["w"].tolist() == [1.0, 1.0]
