"""Framework arrays: PyTorch CPU tensors (bfloat16 included) saved as they
are and restored in place; JAX and TensorFlow tensors saved. Each framework
is optional and imported only here."""

import numpy as np
import pytest

import fastckpt


def test_torch_state_dict_roundtrip_in_place(tmp_path):
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    sd = model.state_dict()
    sd["extra.bf16"] = torch.randn(5).to(torch.bfloat16)
    sd["extra.half"] = torch.randn(3).to(torch.float16)
    prefix = fastckpt.save(sd, str(tmp_path / "c"))
    target = {k: torch.zeros_like(v) for k, v in sd.items()}
    ptrs = {k: v.data_ptr() for k, v in target.items()}
    back = fastckpt.restore(prefix, into=target)
    assert type(back) is type(sd) and list(back) == list(sd)  # an OrderedDict, as saved
    for k, v in sd.items():
        assert back[k] is target[k] and target[k].data_ptr() == ptrs[k], "filled in place"
        assert torch.equal(target[k], v), k
    model2 = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    model2.load_state_dict({k: v for k, v in target.items() if not k.startswith("extra")})
    x = torch.randn(2, 8)
    assert torch.equal(model(x), model2(x))


def test_torch_not_imported_unless_used(tmp_path):
    import subprocess
    import sys
    code = ("import sys, numpy as np, fastckpt; fastckpt.save({'a': {'b': np.zeros(2)}}, %r); "
            "fastckpt.restore(%r); print('torch' in sys.modules, 'jax' in sys.modules, 'tensorflow' in sys.modules)"
            % (str(tmp_path / "c"), str(tmp_path / "c")))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "False"]


def test_tensorflow_tensors_saved_as_they_are(tmp_path):
    tf = pytest.importorskip("tensorflow")
    state = {"v": tf.Variable(np.arange(4, dtype=np.float32)), "c": tf.constant([[1, 2]], dtype=tf.int64)}
    got = fastckpt.restore(fastckpt.save(state, str(tmp_path / "c")))
    assert isinstance(got["v"], tf.Tensor) and isinstance(got["c"], tf.Tensor)  # TF tensors come back as TF tensors
    assert got["v"].numpy().tolist() == [0, 1, 2, 3] and got["c"].numpy().tolist() == [[1, 2]]
    assert got["c"].dtype == tf.int64


def test_jax_arrays_saved_as_they_are(tmp_path):
    """In a child process: JAX starts threads, and later tests fork."""
    pytest.importorskip("jax")
    import subprocess
    import sys
    code = ("import jax.numpy as jnp, fastckpt\n"
            "state = {'w': jnp.arange(6.0).reshape(2, 3)}\n"
            f"got = fastckpt.restore(fastckpt.save(state, {str(tmp_path / 'c')!r}))\n"
            "assert type(got['w']) is type(state['w']), type(got['w'])\n"
            "assert got['w'].tolist() == [[0, 1, 2], [3, 4, 5]]\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_gpu_tensors_are_refused_clearly(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        t = torch.zeros(2, device="meta")
        with pytest.raises(fastckpt.InvalidArgumentError, match="CPU"):
            fastckpt.save({"t": t}, str(tmp_path / "c"))
