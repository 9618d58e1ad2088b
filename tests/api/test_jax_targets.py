"""Restoring immutable JAX trees: ``restore(prefix, target=tree)`` and
``restore_or_initialize(tree)`` return a new tree of the target's own
structure (optax NamedTuples, Flax dataclass pytrees), arrays placed as the
target's -- with real optax and Flax where installed. Every test runs JAX
in a child process: its threads would make the later fork() calls of other
tests in this process unsafe."""

import importlib.util
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
if importlib.util.find_spec("jax") is None:  # (not importorskip: that would import it here)
    pytest.skip("jax is not installed", allow_module_level=True)


def _in_child(body, tmp_path, env=None):
    """Run ``body`` (a test's code, with ``tmp_path``) in a fresh process."""
    code = (f"import sys, pathlib; sys.path.insert(0, {str(ROOT)!r})\n"
            "import numpy as np, pytest, jax, jax.numpy as jnp, fastckpt\n"
            "from tests.helpers.jax_trees import AdamLike, TrainLike, params as _params, state as _state, same as _same\n"
            f"tmp_path = pathlib.Path({str(tmp_path)!r})\n" + textwrap.dedent(body))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                       env=None if env is None else {**os.environ, **env})
    assert r.returncode == 0, r.stderr[-4000:]


def test_target_rebuilds_namedtuples_and_dataclass_pytrees(tmp_path):
    """Saved, a dataclass pytree is a dict of its fields and a NamedTuple a
    tuple; restored with target= they are their own types again, every
    leaf a JAX array with the target's sharding, values bit-exact."""
    _in_child(r'''
    saved = _state(3)
    prefix = fastckpt.save(saved, str(tmp_path / "c"))
    plain = fastckpt.restore(prefix)
    assert isinstance(plain, dict) and isinstance(plain["opt_state"][0], tuple)
    got = fastckpt.restore(prefix, target=_state(0))
    assert isinstance(got, TrainLike) and isinstance(got.opt_state[0], AdamLike)
    _same(saved, got)
    assert got.params["dense"]["kernel"].sharding == _state(0).params["dense"]["kernel"].sharding
    ''', tmp_path)


def test_a_target_sharded_over_two_devices_is_restored_with_its_sharding(tmp_path):
    """Two host devices (XLA's forced device count), a kernel split across
    them by a mesh and a bias replicated: the restored arrays have the
    target's shardings, and each device's shard holds its part of the saved
    values."""
    _in_child(r'''
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    devices = jax.devices()
    assert len(devices) == 2, devices
    mesh = Mesh(np.array(devices), ("x",))
    split, replicated = NamedSharding(mesh, P("x", None)), NamedSharding(mesh, P())
    rng = np.random.default_rng(4)
    kernel, bias = rng.standard_normal((8, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    prefix = fastckpt.save({"kernel": jax.device_put(kernel, split), "bias": jax.device_put(bias, replicated)},
                           str(tmp_path / "c"))
    target = {"kernel": jax.device_put(np.zeros((8, 3), np.float32), split),
              "bias": jax.device_put(np.zeros(3, np.float32), replicated)}
    got = fastckpt.restore(prefix, target=target)
    assert got["kernel"].sharding == split and got["bias"].sharding == replicated
    np.testing.assert_array_equal(np.asarray(got["kernel"]), kernel)
    for shard in got["kernel"].addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), kernel[shard.index])
        assert shard.data.shape == (4, 3)
    assert {s.device for s in got["kernel"].addressable_shards} == set(devices)
    ''', tmp_path, env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"})


def test_restore_or_initialize_takes_an_immutable_tree_and_returns_the_restored_one(tmp_path):
    """The issue's failure ("into['dense/kernel'] is read-only"): a JAX
    tree given to restore_or_initialize or restore(into=) is restored as a
    target; a new directory returns None and the tree stays as it was."""
    _in_child(r'''
    mgr = fastckpt.CheckpointManager(tmp_path)
    fresh = _state(0)
    assert mgr.restore_or_initialize(fresh) is None
    mgr.save(_state(5), 5)
    again = fastckpt.CheckpointManager(tmp_path)
    got = again.restore_or_initialize(_state(0))
    _same(_state(5), got)
    assert again.restored_step == 5
    _same(_state(5), fastckpt.restore(str(tmp_path), into=_state(0)))
    _same(_state(5), again.restore(step=5, into=_state(1)))
    ''', tmp_path)


def test_a_target_that_does_not_fit_is_refused_naming_the_place(tmp_path):
    """Shapes and dtypes are the target's or an error naming the path; a
    leaf the checkpoint lacks is named; into= and target= together refused."""
    _in_child(r'''
    prefix = fastckpt.save(_state(3), str(tmp_path / "c"))
    wrong_shape = _state(0)
    wrong_shape.params["dense"]["kernel"] = jnp.zeros((3, 4))
    with pytest.raises(fastckpt.InvalidArgumentError, match=r"params/dense/kernel.*float32\[3, 4\].*\[4, 3\]"):
        fastckpt.restore(prefix, target=wrong_shape)
    wrong_dtype = _state(0)
    wrong_dtype.params["embed"] = jnp.zeros(10, jnp.float32)
    with pytest.raises(fastckpt.InvalidArgumentError, match="params/embed"):
        fastckpt.restore(prefix, target=wrong_dtype)
    missing = _state(0)
    missing.params["extra"] = jnp.zeros(2)
    with pytest.raises(fastckpt.InvalidArgumentError, match="no params/extra"):
        fastckpt.restore(prefix, target=missing)
    with pytest.raises(fastckpt.InvalidArgumentError, match="not both"):
        fastckpt.restore(prefix, into={"a": np.zeros(1)}, target=_state(0))
    ''', tmp_path)


def test_part_of_a_checkpoint_and_a_flat_tensorflow_one_as_targets(tmp_path):
    """A target may be part of what was saved (the params of a training
    state); a flat checkpoint's ``a/b`` names fill a nested target."""
    _in_child(r'''
    prefix = fastckpt.save(_state(2), str(tmp_path / "c"))
    got = fastckpt.restore(prefix, target={"params": _params(0)})
    _same({"params": _state(2).params}, got)
    flat = fastckpt.write_bundle(str(tmp_path / "flat"), {"dense/kernel": np.ones((4, 3), np.float32),
                                                           "dense/bias": np.zeros(3, np.float32),
                                                           "embed": np.arange(10).astype("bfloat16")})
    got = fastckpt.restore(flat, target=_params(0))
    assert got["dense"]["kernel"].tolist() == [[1.0] * 3] * 4 and isinstance(got["embed"], jax.Array)
    ''', tmp_path)


def test_metadata_takes_jax_scalars(tmp_path):
    _in_child(r'''
    p = fastckpt.save({"a": np.zeros(1)}, str(tmp_path / "c"), metadata={"lr": jnp.float32(0.75), "n": jnp.int32(3)})
    assert fastckpt.read_meta(p)["metadata"] == {"lr": 0.75, "n": 3}
    ''', tmp_path)


@pytest.mark.deep  # 11 s; the JAX target tests above run in the default tier
def test_real_optax_state_and_flax_module_survive_a_kill(tmp_path):
    """A Flax module trained with optax.adam, SIGKILLed after its save at
    step 3, resumes through restore_or_initialize(target) and takes the
    same next step as a run that never stopped."""
    for needed in ("optax", "flax"):
        if importlib.util.find_spec(needed) is None:
            pytest.skip(f"{needed} is not installed")
    script = textwrap.dedent("""
        import os, sys, numpy as np, jax, jax.numpy as jnp, optax, flax.linen as nn
        from flax.training import train_state
        import fastckpt
        class MLP(nn.Module):
            @nn.compact
            def __call__(self, x):
                return nn.Dense(1)(nn.relu(nn.Dense(8)(x)))
        model = MLP()
        x = jnp.linspace(-1, 1, 32).reshape(-1, 2)
        y = jnp.sin(x.sum(axis=1, keepdims=True))
        def fresh():
            params = model.init(jax.random.PRNGKey(0), x)
            return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.adam(1e-2))
        @jax.jit
        def step(s):
            loss, g = jax.value_and_grad(lambda p: ((s.apply_fn(p, x) - y) ** 2).mean())(s.params)
            return s.apply_gradients(grads=g), loss
        mgr = fastckpt.CheckpointManager(sys.argv[1])
        state = mgr.restore_or_initialize(fresh()) or fresh()
        start = int(state.step)
        for i in range(start, 6):
            state, loss = step(state)
            print("loss", int(state.step), repr(float(loss)), flush=True)
            mgr.save(state, int(state.step))
            if sys.argv[2] == "kill" and int(state.step) == 3:
                os.kill(os.getpid(), 9)
    """)
    run = lambda d, how: subprocess.run([sys.executable, "-c", script, str(d), how], capture_output=True, text=True)
    whole = run(tmp_path / "whole", "run")
    assert whole.returncode == 0, whole.stderr
    killed = run(tmp_path / "killed", "kill")
    assert killed.returncode == -9, killed.stderr
    resumed = run(tmp_path / "killed", "run")
    assert resumed.returncode == 0, resumed.stderr
    losses = lambda out: [line for line in out.splitlines() if line.startswith("loss")]
    assert losses(killed.stdout) + losses(resumed.stdout) == losses(whole.stdout)
    assert os.path.exists(tmp_path / "killed" / "ckpt-6.index")
