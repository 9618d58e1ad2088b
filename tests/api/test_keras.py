"""Keras: ``fastckpt.keras.BackupAndRestore`` with a real ``model.fit``:
interrupted (SIGKILL) and resumed with the same losses and weights; the
backup is a bundle TensorFlow reads under Keras' variable paths. Keras runs
in child processes (TensorFlow's threads would make later fork() calls in
this process unsafe)."""

import importlib.util
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
if importlib.util.find_spec("keras") is None or importlib.util.find_spec("tensorflow") is None:
    pytest.skip("keras with TensorFlow is not installed", allow_module_level=True)

MODEL = textwrap.dedent("""
    import os, sys, numpy as np
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, {root!r})
    import keras
    from fastckpt.keras import BackupAndRestore
    x = np.random.default_rng(0).standard_normal((64, 4)).astype("float32")
    y = x.sum(1, keepdims=True)
    def model():
        keras.utils.set_random_seed(0)
        m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu", name="hidden"),
                              keras.layers.Dense(1, name="out")])
        m.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
        return m
    class Report(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            print("epoch", epoch, repr(float(logs["loss"])), flush=True)
            if os.environ.get("KILL_AT") and epoch == int(os.environ["KILL_AT"]):
                os.kill(os.getpid(), 9)
    def fit(m, epochs, *callbacks):
        m.fit(x, y, epochs=epochs, batch_size=16, shuffle=False, verbose=0, callbacks=[*callbacks, Report()])
        return [float(np.abs(v.numpy()).sum()) for v in m.variables]
""").format(root=str(ROOT))


def _run(code, **env):
    r = subprocess.run([sys.executable, "-c", MODEL + textwrap.dedent(code)], capture_output=True, text=True,
                       timeout=600, env=dict(os.environ, **env))
    return r


def _epochs(out):
    return {int(e): loss for _, e, loss in (line.split() for line in out.splitlines() if line.startswith("epoch "))}


def test_fit_again_continues_from_the_backup_with_the_same_losses(tmp_path):
    """fit for 2 epochs with the backup kept, then a new model's fit for 4
    continues at epoch 2 (model and Adam moments restored) and ends with
    the weights of an uninterrupted 4-epoch fit; the backup is TensorFlow-
    readable under Keras' own variable paths; delete_checkpoint removes it."""
    r = _run(f"""
        d = {str(tmp_path / "backup")!r}
        fit(model(), 2, BackupAndRestore(d, delete_checkpoint=False))
        print("---")
        resumed = fit(model(), 4, BackupAndRestore(d))
        print("===")
        whole = fit(model(), 4)
        assert resumed == whole, (resumed, whole)
        assert not os.path.exists(d)
        print("ok")
    """)
    assert r.returncode == 0, r.stderr[-3000:]
    first, rest = r.stdout.split("---\n")
    second, third = rest.split("===\n")
    assert sorted(_epochs(first)) == [0, 1] and sorted(_epochs(second)) == [2, 3]
    assert {**_epochs(first), **_epochs(second)} == {k: v for k, v in _epochs(third).items()}
    assert third.strip().endswith("ok")


@pytest.mark.deep  # two TensorFlow processes: 10 s
def test_the_backup_is_a_bundle_tensorflow_reads(tmp_path):
    import fastckpt
    r = _run(f"""
        fit(model(), 1, BackupAndRestore({str(tmp_path / "b")!r}, delete_checkpoint=False, blocking=True))
    """)
    assert r.returncode == 0, r.stderr[-3000:]
    names = dict(fastckpt.list_variables(str(tmp_path / "b")))
    assert names["model/hidden/kernel"] == [4, 8] and names["model/out/bias"] == [1]
    assert any(n.startswith("optimizer/adam/") for n in names)
    assert fastckpt.restore(str(tmp_path / "b"))["epoch"] == 1
    r = _run(f"""
        import tensorflow as tf
        reader = tf.train.load_checkpoint({str(tmp_path / "b")!r})
        print(reader.get_tensor("model/hidden/kernel").shape)
    """)
    assert r.returncode == 0 and "(4, 8)" in r.stdout, r.stderr[-2000:]


@pytest.mark.deep  # three TensorFlow processes: 20 s
def test_fit_killed_and_resumed_has_the_same_losses_and_weights(tmp_path):
    """SIGKILLed right after epoch 2 (the background save may still be in
    flight), fit again: it resumes after the last committed epoch and the
    losses and final weights equal an uninterrupted run's."""
    code = f"""
        print("weights", fit(model(), 6, BackupAndRestore({str(tmp_path / "b")!r})))
    """
    whole = _run(code.replace(str(tmp_path / "b"), str(tmp_path / "w")))
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = _run(code, KILL_AT="2")
    assert killed.returncode == -9
    resumed = _run(code)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert min(_epochs(resumed.stdout)) in (2, 3)
    assert {**_epochs(killed.stdout), **_epochs(resumed.stdout)} == _epochs(whole.stdout)
    weights = [line for line in resumed.stdout.splitlines() if line.startswith("weights")]
    assert weights == [line for line in whole.stdout.splitlines() if line.startswith("weights")]


@pytest.mark.deep  # a TensorFlow process: 6 s
def test_a_background_backup_copies_the_model_once(tmp_path):
    """Each backup copies the variables once (the copies are written in the
    callback's own thread while training goes on): traced numpy memory
    during a save of a 32 MB model stays under 1.5× the model, where a
    second snapshot would need 2×. A failed background save is raised at
    the next save."""
    r = _run(f"""
        import tracemalloc
        m = keras.Sequential([keras.Input((2048,)), keras.layers.Dense(4096, name="big")])
        m.compile(optimizer="sgd", loss="mse")
        size = sum(v.numpy().nbytes for v in m.variables)
        cb = BackupAndRestore({str(tmp_path / "b")!r})
        cb.set_model(m)
        tracemalloc.start()
        cb._save()
        cb._wait()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print("ratio", peak / size)
        assert peak < 1.5 * size, (peak, size)
        import fastckpt
        saved = fastckpt.load_checkpoint({str(tmp_path / "b")!r}).get_tensor("model/big/kernel")
        assert (saved == m.get_layer("big").kernel.numpy()).all()
        os.rename({str(tmp_path / "b")!r}, {str(tmp_path / "gone")!r})
        with open({str(tmp_path / "b")!r}, "w") as fh:  # the directory is now a file: the next save fails
            fh.write("x")
        cb._save()
        try:
            cb._save()
        except Exception as e:
            print("raised", type(e).__name__)
        else:
            raise AssertionError("a failed background save was not raised")
    """)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "raised" in r.stdout, r.stdout
