"""Nested state and the ``PREFIX.meta`` file.

``save`` accepts nested dicts, lists and tuples of arrays and scalars; each
leaf is stored under its joined path (``"layer/0/kernel"``). ``PREFIX.meta``
(JSON) records the tree, each leaf's dtype and shape, and the caller's
metadata, so the same structure comes back without the code that built it.
Framework tensors (PyTorch, JAX, TensorFlow) are taken as they are, through
their numpy views, and never imported unless the caller passes them.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, MutableMapping, Optional, Tuple

import numpy as np

from .errors import DataLossError, InvalidArgumentError, NotFoundError
from .naming import PathLike, read_file, resolve_prefix

__all__ = ["flatten", "unflatten", "to_numpy", "meta_filename", "write_meta", "read_meta", "META_FORMAT"]

META_FORMAT = "fastckpt.meta"
META_VERSION = 1


def meta_filename(prefix: str) -> str:
    """``PREFIX.meta``."""
    return prefix + ".meta"


# ---- framework arrays ----------------------------------------------------------------

def _framework(x: Any) -> str:
    module = type(x).__module__ or ""
    return module.split(".", 1)[0]


def to_numpy(x: Any) -> Any:
    """A numpy view of a framework tensor where the framework allows it
    (PyTorch CPU tensors, bfloat16 included; JAX and TensorFlow arrays);
    anything else is returned unchanged."""
    fw = _framework(x)
    if fw == "torch":
        t = x.detach()
        if t.device.type != "cpu":
            raise InvalidArgumentError(f"torch tensor on {t.device}: move it to the CPU first")
        if str(t.dtype) == "torch.bfloat16":
            import ml_dtypes
            return t.view(_torch_int16()).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()
    if fw in ("jax", "jaxlib"):
        return np.asarray(x)
    if fw == "tensorflow" and hasattr(x, "numpy"):
        return x.numpy()
    return x


def _torch_int16() -> Any:
    import torch  # only reached with a torch tensor in hand
    return torch.int16


# ---- flatten / unflatten -------------------------------------------------------------

def flatten(state: Any, sep: str = "/") -> Tuple[Dict[str, Any], Any]:
    """``(name -> leaf, tree)`` of a nested state. Leaves are numpy arrays
    (framework tensors as numpy views) or Python scalars; ``tree`` is a
    JSON-able description of the nesting."""
    leaves: Dict[str, Any] = {}

    def walk(x: Any, path: List[str]) -> Any:
        if isinstance(x, Mapping):
            items = []
            for k, v in x.items():
                if not isinstance(k, str):
                    raise InvalidArgumentError(f"dict keys must be str, found {k!r} at {sep.join(path) or '<root>'}")
                if not k:
                    raise InvalidArgumentError(f"empty dict key at {sep.join(path) or '<root>'}")
                items.append([k, walk(v, path + [k])])
            return {"dict": items}
        if isinstance(x, (list, tuple)):
            kind = "list" if isinstance(x, list) else "tuple"
            return {kind: [walk(v, path + [str(i)]) for i, v in enumerate(x)]}
        name = sep.join(path)
        if not name:
            raise InvalidArgumentError("the state must be a dict, list or tuple, not a single array")
        if name in leaves:
            raise InvalidArgumentError(f"two leaves have the same name {name!r}")
        if isinstance(x, (bool, int, float, complex)) and not isinstance(x, np.generic):
            leaves[name] = np.asarray(x)
            return {"leaf": name, "python": type(x).__name__}
        leaves[name] = to_numpy(x)
        return {"leaf": name}

    tree = walk(state, [])
    return leaves, tree


def unflatten(tree: Any, leaves: Mapping[str, Any]) -> Any:
    """Rebuild the nested state from ``tree`` and ``name -> array``."""
    if not isinstance(tree, dict) or len(tree) not in (1, 2):
        raise DataLossError(f"corrupt structure record: {tree!r}")
    if "dict" in tree:
        return {k: unflatten(v, leaves) for k, v in tree["dict"]}
    if "list" in tree:
        return [unflatten(v, leaves) for v in tree["list"]]
    if "tuple" in tree:
        return tuple(unflatten(v, leaves) for v in tree["tuple"])
    if "leaf" in tree:
        name = tree["leaf"]
        if name not in leaves:
            raise DataLossError(f"the structure names tensor {name!r}, which the checkpoint lacks")
        value = leaves[name]
        py = tree.get("python")
        if py is not None:
            return {"bool": bool, "int": int, "float": float, "complex": complex}[py](value.item())
        return value
    raise DataLossError(f"corrupt structure record: {tree!r}")


def leaf_targets(tree: Any, into: Any) -> Dict[str, Any]:
    """name -> array to fill in place, pairing ``into``'s leaves with the tree.
    Framework tensors become numpy views sharing their memory."""
    out: Dict[str, Any] = {}

    def walk(t: Any, x: Any, path: str) -> None:
        if "dict" in t:
            if not isinstance(x, Mapping):
                raise InvalidArgumentError(f"into: expected a dict at {path or '<root>'}")
            for k, v in t["dict"]:
                if k in x:
                    walk(v, x[k], f"{path}/{k}" if path else k)
        elif "list" in t or "tuple" in t:
            items = t.get("list", t.get("tuple"))
            if not isinstance(x, (list, tuple)) or len(x) != len(items):
                raise InvalidArgumentError(f"into: expected a sequence of {len(items)} at {path or '<root>'}")
            for i, (v, y) in enumerate(zip(items, x)):
                walk(v, y, f"{path}/{i}" if path else str(i))
        elif "leaf" in t and "python" not in t:
            arr = to_numpy(x)
            if not isinstance(arr, np.ndarray):
                raise InvalidArgumentError(f"into: {t['leaf']!r} is {type(x).__name__}, not an array")
            out[t["leaf"]] = arr
    walk(tree, into, "")
    return out


# ---- the .meta file --------------------------------------------------------------------

def write_meta(prefix: str, tree: Any, leaves: Mapping[str, Any], metadata: Any, durable: bool) -> None:
    """Write ``PREFIX.meta`` atomically."""
    from .state import write_text_atomic

    record = {
        "format": META_FORMAT,
        "version": META_VERSION,
        "structure": tree,
        "leaves": {n: {"dtype": str(np.asarray(v).dtype), "shape": list(np.shape(v))} for n, v in leaves.items()},
        "metadata": metadata,
    }
    try:
        text = json.dumps(record, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(f"metadata must be JSON-serialisable: {e}") from None
    write_text_atomic(meta_filename(prefix), text, durable)


def read_meta(prefix: PathLike) -> Dict[str, Any]:
    """The ``PREFIX.meta`` record (``structure``, ``leaves`` with dtype and
    shape, ``metadata``) without reading any tensor data. Raises
    :class:`NotFoundError` when the checkpoint has none (TensorFlow's)."""
    p = resolve_prefix(prefix)
    path = meta_filename(p)
    raw = read_file(path, f"checkpoint {p!r} has no structure file (not written by fastckpt's save)")
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise DataLossError(f"{path} is corrupt: {e}") from None
    if not isinstance(record, dict) or record.get("format") != META_FORMAT:
        raise DataLossError(f"{path} is not a fastckpt structure file")
    if record.get("version", 0) > META_VERSION:
        raise DataLossError(f"{path} has version {record.get('version')}, newer than this fastckpt reads")
    return record


def restore_structure(prefix: PathLike, into: Optional[Any] = None, *, verify: bool = True,
                      threads: Optional[int] = None) -> Any:
    """Read checkpoint ``prefix`` back in the structure it was saved in
    (from ``PREFIX.meta``); checkpoints without one (TensorFlow's) come back
    as a flat dict. With ``into`` (the same structure, or a flat dict),
    arrays -- numpy, or PyTorch/JAX tensors through their numpy views -- are
    filled in place and ``into`` is returned."""
    from .reader import read_bundle

    p = resolve_prefix(prefix)
    try:
        record: Optional[Dict[str, Any]] = read_meta(p)
    except NotFoundError:
        record = None
    if record is None:  # a TensorFlow checkpoint: a flat dict
        if into is None:
            return read_bundle(p, verify=verify, threads=threads)
        targets: MutableMapping[str, Any] = {k: to_numpy(v) for k, v in into.items()}
        read_bundle(p, into=targets, verify=verify, threads=threads)
        return into
    tree = record["structure"]
    if into is None:
        return unflatten(tree, read_bundle(p, verify=verify, threads=threads))
    targets = leaf_targets(tree, into)
    read_bundle(p, into=targets, verify=verify, threads=threads)
    return into
