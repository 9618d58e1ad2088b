"""Framework tensors in and out: PyTorch, JAX and TensorFlow arrays as numpy.

One numpy path underneath; each framework is a few lines here, imported
only when the caller hands over (or a checkpoint asks for) one of its
tensors. PyTorch's bfloat16 and float8 tensors, which ``Tensor.numpy()``
refuses, travel as their integer storage viewed as ``ml_dtypes`` types.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np

from fastckpt.bundle.slices import Shard
from fastckpt.errors import InvalidArgumentError, UnsupportedError

__all__ = ["framework_of", "to_numpy", "from_numpy", "is_array", "dtensor_part"]

# torch dtype name -> (integer storage, ml_dtypes name)
_TORCH_VIA: Dict[str, Tuple[str, str]] = {
    "bfloat16": ("int16", "bfloat16"),
    "float8_e4m3fn": ("uint8", "float8_e4m3fn"),
    "float8_e5m2": ("uint8", "float8_e5m2"),
    "float8_e4m3fnuz": ("uint8", "float8_e4m3fnuz"),
    "float8_e5m2fnuz": ("uint8", "float8_e5m2fnuz"),
}
ML_TO_TORCH = {ml: name for name, (_, ml) in _TORCH_VIA.items()}
FRAMEWORKS = ("torch", "jax", "tensorflow")


def framework_of(x: Any) -> Optional[str]:
    """``"torch"``, ``"jax"`` or ``"tensorflow"`` for a tensor of that
    framework, else None (numpy arrays, scalars, anything else)."""
    module = (type(x).__module__ or "").split(".", 1)[0]
    if module == "torch" and hasattr(x, "detach"):
        return "torch"
    if module in ("jax", "jaxlib") and hasattr(x, "__array__"):
        return "jax"
    if module == "tensorflow" and hasattr(x, "numpy"):
        return "tensorflow"
    return None


def is_array(x: Any) -> bool:
    """True for what is stored as a tensor: numpy arrays and scalars, and
    framework tensors."""
    return isinstance(x, (np.ndarray, np.generic)) or framework_of(x) is not None


def to_numpy(x: Any) -> Any:
    """A numpy view of a framework tensor (PyTorch CPU tensors of every
    dtype TensorFlow has, bfloat16 and float8 included; JAX and TensorFlow
    arrays); anything else is returned unchanged."""
    fw = framework_of(x)
    if fw == "torch":
        return _torch_to_numpy(x)
    if fw == "jax":
        return np.asarray(x)
    if fw == "tensorflow":
        return x.numpy()
    return x


def _torch_to_numpy(t: Any) -> np.ndarray:
    import torch  # the caller handed us a torch tensor: torch is there

    t = t.detach()
    if t.device.type != "cpu":
        raise InvalidArgumentError(f"torch tensor on {t.device}: move it to the CPU first")
    if t.layout != torch.strided:
        raise UnsupportedError(f"torch tensors with layout {t.layout} are not supported: convert with .to_dense()")
    if t.is_quantized:
        raise UnsupportedError(f"quantized torch tensors ({t.dtype}) are not supported: dequantize first")
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    name = str(t.dtype)[6:]  # "torch.bfloat16" -> "bfloat16"
    via = _TORCH_VIA.get(name)
    if via is not None:
        import ml_dtypes
        return t.view(getattr(torch, via[0])).numpy().view(getattr(ml_dtypes, via[1]))
    try:
        return t.numpy()
    except (TypeError, RuntimeError) as e:
        raise UnsupportedError(f"torch dtype {t.dtype} has no TensorFlow equivalent ({e})") from None


def from_numpy(arr: np.ndarray, framework: str) -> Any:
    """``arr`` as a tensor of ``framework`` (sharing its memory where the
    framework allows: PyTorch). Without the framework installed, the numpy
    array is returned."""
    try:
        if framework == "torch":
            import torch
            if not arr.flags.writeable:
                arr = arr.copy()
            name = ML_TO_TORCH.get(arr.dtype.name)
            if name is not None:
                return torch.from_numpy(arr.view(_TORCH_VIA[name][0])).view(getattr(torch, name))
            return torch.from_numpy(arr)
        if framework == "jax":
            import jax.numpy as jnp
            return jnp.asarray(arr)
        if framework == "tensorflow":
            import tensorflow as tf
            return tf.convert_to_tensor(arr)
    except ImportError:
        return arr
    raise InvalidArgumentError(f"unknown framework {framework!r}")


def is_dtensor(x: Any) -> bool:
    """True for a PyTorch ``DTensor`` (checked without importing torch)."""
    return type(x).__name__ == "DTensor" and (type(x).__module__ or "").startswith("torch.distributed")


def dtensor_part(x: Any) -> Any:
    """What a PyTorch ``DTensor`` holds on this process: its local tensor when
    it is replicated here (``Replicate()`` placements), else a
    :class:`~fastckpt.Shard` of the global tensor (``Shard(dim)``
    placements, FSDP2-style, uneven splits included)."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if any(type(p).__name__ == "Partial" for p in x.placements):
        raise UnsupportedError("a DTensor with a Partial placement holds unreduced values: "
                               "redistribute it to Shard or Replicate first")
    local = x.to_local()
    offset = one_dim_shard_offset(x, local)
    if offset is None:
        shape, offset = compute_local_shape_and_global_offset(x.shape, x.device_mesh, x.placements)
    else:
        shape = tuple(local.shape)
    if tuple(shape) == tuple(x.shape):
        return local
    return Shard(local, tuple(int(d) for d in x.shape), tuple(int(o) for o in offset))


def one_dim_shard_offset(x: Any, local: Any) -> Optional[Tuple[int, ...]]:
    """The global offset of a DTensor sharded on a 1-D mesh by one
    ``Shard(dim)`` -- FSDP2's case -- computed as PyTorch splits
    (``torch.chunk``: parts of ceil(size / n), the last ones short or
    empty); None for any other placement (PyTorch's helper is used)."""
    placements = x.placements
    if len(placements) != 1 or type(placements[0]).__name__ != "Shard" or x.device_mesh.ndim != 1:
        return None
    dim, n = placements[0].dim % max(1, len(x.shape)), x.device_mesh.size()
    coord = x.device_mesh.get_local_rank()
    size = int(x.shape[dim])
    chunk = -(-size // n) if n else 0
    offset = [0] * len(x.shape)
    offset[dim] = min(size, coord * chunk)
    return tuple(offset)
