"""Restoring into the shape of a *target* tree: a new tree of the target's
own structure (NamedTuples, dataclass pytrees registered with JAX, dicts,
lists, tuples) whose leaves are the checkpoint's values, each of the
target leaf's kind and placement (a JAX array on the target's sharding, a
PyTorch tensor on its device). For immutable trees -- JAX parameters and
optax states -- which cannot be filled in place."""

from __future__ import annotations

import sys
from typing import Any, List, Mapping, Tuple

import numpy as np

from fastckpt.errors import InvalidArgumentError

__all__ = ["rebuild", "has_immutable_leaves", "jax_node_fields"]


def _jax_tree_util() -> Any:
    """``jax.tree_util`` when JAX is already imported (a JAX tree implies it)."""
    jax = sys.modules.get("jax")
    return getattr(jax, "tree_util", None) if jax is not None else None


def _is_jax_array(x: Any) -> bool:
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(x, jax.Array)


def has_immutable_leaves(tree: Any) -> bool:
    """Whether ``tree`` holds a JAX array or a node only JAX knows (a
    dataclass pytree): it is restored by :func:`rebuild`, not in place."""
    tu = _jax_tree_util()
    if tu is None:
        return False
    stack, seen = [tree], 0
    while stack and seen < 1_000_000:
        x = stack.pop()
        seen += 1
        if _is_jax_array(x) or _custom_node(tu, x):
            return True
        if isinstance(x, Mapping):
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
    return False


def _custom_node(tu: Any, x: Any) -> bool:
    """A pytree node registered with JAX that is not a dict, list or tuple."""
    if tu is None or x is None or isinstance(x, (Mapping, list, tuple, np.ndarray, np.generic)) or _is_jax_array(x):
        return False
    if isinstance(x, (bool, int, float, complex, str, bytes, bytearray, memoryview)) or hasattr(x, "__array__"):
        return False  # (tensors of every framework have __array__: no JAX call per leaf of a large state)
    return not tu.treedef_is_leaf(tu.tree_structure(x))


def _children(tu: Any, x: Any) -> Tuple[List[Tuple[Any, Any]], Any]:
    """The direct children of a JAX pytree node as ``(key, child)`` and
    the one-level structure that rebuilds it."""
    pairs, treedef = tu.tree_flatten_with_path(x, is_leaf=lambda y: y is not x)
    out = []
    for path, child in pairs:
        key = path[0]
        name = getattr(key, "name", getattr(key, "key", getattr(key, "idx", None)))
        out.append((name, child))
    return out, treedef


def jax_node_fields(x: Any) -> Any:
    """The children of a pytree node only JAX knows (a Flax ``struct``
    dataclass, an ``optax`` state class) as a dict by field name or index,
    as it is saved; None for anything else."""
    tu = _jax_tree_util()
    if not _custom_node(tu, x):
        return None
    return {name: child for name, child in _children(tu, x)[0]}


def rebuild(target: Any, restored: Any, path: str = "") -> Any:
    """A new tree of ``target``'s structure with the values of ``restored``
    (a checkpoint's structure: dicts, lists and tuples -- NamedTuples come
    back as tuples, dataclass pytrees as dicts of their fields). Shapes and
    dtypes must match the target's; a value the checkpoint lacks is
    :class:`InvalidArgumentError` naming its path. Keys the checkpoint has
    beyond the target's are left out."""
    where = path or "<root>"
    tu = _jax_tree_util()
    if target is None:
        return None
    if _custom_node(tu, target):
        children, treedef = _children(tu, target)
        new = [rebuild(child, _child(restored, name, i, where), _join(path, name)) for i, (name, child) in
               enumerate(children)]
        return tu.tree_unflatten(treedef, new)
    if isinstance(target, Mapping):
        if not isinstance(restored, Mapping):
            raise InvalidArgumentError(f"target at {where} is a mapping, the checkpoint holds a "
                                       f"{type(restored).__name__} there")
        values = {k: rebuild(v, _child(restored, k, None, where), _join(path, k)) for k, v in target.items()}
        return values if type(target) is dict else _same_kind(target, values)
    if isinstance(target, tuple) and hasattr(target, "_fields"):  # a NamedTuple (saved as a tuple)
        return type(target)(*[rebuild(v, _child(restored, f, i, where), _join(path, i))
                              for i, (f, v) in enumerate(zip(target._fields, target))])
    if isinstance(target, (list, tuple)):
        if not isinstance(restored, (list, tuple)) or len(restored) != len(target):
            raise InvalidArgumentError(f"target at {where} is a {type(target).__name__} of {len(target)}, the "
                                       f"checkpoint holds {_describe(restored)} there")
        items = [rebuild(v, r, _join(path, i)) for i, (v, r) in enumerate(zip(target, restored))]
        return type(target)(items)
    return _leaf(target, restored, where)


def _join(path: str, key: Any) -> str:
    return f"{path}/{key}" if path else str(key)


def _describe(x: Any) -> str:
    return f"a {type(x).__name__} of {len(x)}" if isinstance(x, (list, tuple)) else f"a {type(x).__name__}"


def _child(restored: Any, name: Any, index: Any, where: str) -> Any:
    """``restored``'s child called ``name`` (a dict) or at ``index`` (a
    tuple: how NamedTuples and sequences are saved)."""
    if isinstance(restored, Mapping):
        for key in (name, str(name)):
            if key in restored:
                return restored[key]
        below = f"{name}/"  # a flat checkpoint (TensorFlow's): "a/b" names stand for nesting
        nested = {k[len(below):]: v for k, v in restored.items() if isinstance(k, str) and k.startswith(below)}
        if nested:
            return nested
        raise InvalidArgumentError(f"the checkpoint has no {_join(where if where != '<root>' else '', name)!s}"
                                   f" (it has {', '.join(map(str, list(restored)[:8]))} there)")
    if isinstance(restored, (list, tuple)):
        i = index if isinstance(index, int) else name if isinstance(name, int) else None
        if i is not None and 0 <= i < len(restored):
            return restored[i]
    raise InvalidArgumentError(f"target at {where} has {name!r}, the checkpoint holds {_describe(restored)} there")


def _same_kind(target: Mapping, values: dict) -> Any:
    try:
        return type(target)(values)  # type: ignore[call-arg]
    except TypeError:
        return values


def _leaf(target: Any, value: Any, where: str) -> Any:
    """``value`` as a leaf of ``target``'s kind, shape, dtype and placement."""
    if hasattr(target, "shape") and hasattr(target, "dtype"):
        arr = np.asarray(value)
        want_dtype = _numpy_dtype(target)
        if tuple(arr.shape) != tuple(target.shape) or arr.dtype != want_dtype:
            raise InvalidArgumentError(f"target at {where} is {want_dtype}{list(target.shape)}, the checkpoint "
                                       f"holds {arr.dtype}{list(arr.shape)}")
        if _is_jax_array(target):
            import jax
            return jax.device_put(arr, target.sharding)
        if type(target).__module__.startswith("torch"):
            import torch
            return torch.from_numpy(np.array(arr)).to(target.device)
        if isinstance(target, np.ndarray):
            return arr if isinstance(value, np.ndarray) else np.array(arr)
        return arr
    if isinstance(target, (bool, int, float, complex, str)) and not isinstance(value, (Mapping, list, tuple)):
        try:
            return type(target)(value.item() if hasattr(value, "item") else value)
        except (TypeError, ValueError):
            raise InvalidArgumentError(f"target at {where} is a {type(target).__name__}, the checkpoint holds "
                                       f"{value!r:.40}") from None
    return value


def _numpy_dtype(target: Any) -> np.dtype:
    """A framework tensor's dtype as numpy's (bfloat16 through ml_dtypes)."""
    dt = target.dtype
    if isinstance(dt, np.dtype):
        return dt
    name = str(dt).replace("torch.", "")
    try:
        return np.dtype(name)
    except TypeError:
        import ml_dtypes
        return np.dtype(getattr(ml_dtypes, name))
