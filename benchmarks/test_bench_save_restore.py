"""GPT-like state, many small tensors, one huge tensor: fastckpt against
the raw disk, TensorFlow and safetensors. Groups put comparable rows together."""

import os

import numpy as np
import pytest

import fastckpt
from fastckpt.bench.run import raw_read, raw_write
from conftest import fresh

ROUNDS = int(os.environ.get("FASTCKPT_BENCH_ROUNDS", "5"))


def _tf():
    return pytest.importorskip("tensorflow")


def _savev2(tf, state):
    names, tensors = list(state), [tf.constant(v) for v in state.values()]
    return lambda prefix: tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names,
                                            shape_and_slices=[""] * len(names), tensors=tensors)


@pytest.mark.parametrize("case", ["gpt_state", "small_state", "huge_state"])
@pytest.mark.parametrize("who", ["raw", "fastckpt", "tensorflow", "safetensors"])
def test_save(benchmark, request, workdir, case, who):
    state = request.getfixturevalue(case)
    benchmark.group = f"save {case}"
    if who == "raw":
        fn = lambda p: raw_write(p, state, False)  # noqa: E731
    elif who == "fastckpt":
        fn = lambda p: fastckpt.write_bundle(p, state)  # noqa: E731
    elif who == "tensorflow":
        fn = _savev2(_tf(), state)
    else:
        sf = pytest.importorskip("safetensors.numpy")
        fn = lambda p: sf.save_file(state, p)  # noqa: E731
    benchmark.pedantic(fn, setup=fresh(workdir, who), rounds=ROUNDS, warmup_rounds=1)


@pytest.mark.parametrize("case", ["gpt_state", "small_state", "huge_state"])
@pytest.mark.parametrize("who", ["raw", "raw_into", "fastckpt", "fastckpt_into", "tf_reader", "tf_restorev2",
                                 "safetensors"])
def test_restore(benchmark, request, workdir, case, who):
    state = request.getfixturevalue(case)
    benchmark.group = f"restore {case}"
    path = str(workdir / "ckpt")
    existing = {k: np.empty_like(v) for k, v in state.items()} if who.endswith("into") else None
    if who.startswith("raw"):
        raw_write(path, state, False)
        fn = lambda: raw_read(path, state, existing)  # noqa: E731
    elif who.startswith("fastckpt"):
        fastckpt.write_bundle(path, state)
        fn = lambda: fastckpt.read_bundle(path, into=existing)  # noqa: E731
    elif who.startswith("tf"):
        tf = _tf()
        _savev2(tf, state)(path)
        names = list(state)
        if who == "tf_reader":
            def fn():
                r = tf.train.load_checkpoint(path)
                return [r.get_tensor(n) for n in names]
        else:
            dtypes = [tf.as_dtype(v.dtype) for v in state.values()]
            fn = lambda: [t.numpy() for t in tf.raw_ops.RestoreV2(  # noqa: E731
                prefix=path, tensor_names=names, shape_and_slices=[""] * len(names), dtypes=dtypes)]
    else:
        sf = pytest.importorskip("safetensors.numpy")
        sf.save_file(state, path)
        fn = lambda: sf.load_file(path)  # noqa: E731
    benchmark.pedantic(fn, rounds=ROUNDS, warmup_rounds=1)


@pytest.mark.parametrize("who", ["fastckpt", "tensorflow"])
def test_open_and_read_one_of_100k(benchmark, small_state, workdir, who):
    benchmark.group = "open + read one tensor of 100,000"
    path = str(workdir / "ckpt")
    name = list(small_state)[50_000]
    if who == "fastckpt":
        fastckpt.write_bundle(path, small_state)
        fn = lambda: fastckpt.load_checkpoint(path).get_tensor(name)  # noqa: E731
    else:
        tf = _tf()
        _savev2(tf, small_state)(path)
        fn = lambda: tf.train.load_checkpoint(path).get_tensor(name)  # noqa: E731
    benchmark.pedantic(fn, rounds=ROUNDS * 4, warmup_rounds=1)
    if who == "fastckpt":
        assert benchmark.stats.stats.median < 0.05, "target: open + read one tensor <= 50 ms"


@pytest.mark.parametrize("durable", [False, True])
@pytest.mark.parametrize("who", ["raw", "fastckpt"])
def test_save_durable(benchmark, gpt_state, workdir, durable, who):
    benchmark.group = f"save gpt_state durable={durable}"
    fn = (lambda p: raw_write(p, gpt_state, durable)) if who == "raw" else \
        (lambda p: fastckpt.write_bundle(p, gpt_state, durable=durable))
    benchmark.pedantic(fn, setup=fresh(workdir, who), rounds=ROUNDS, warmup_rounds=1)
