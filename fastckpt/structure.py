"""Nested state and its structure record.

``save`` accepts nested dicts, lists and tuples of arrays and scalars; each
leaf is stored under its joined path (``"layer/0/kernel"``). The tree, each
leaf's dtype and shape, and the caller's metadata are recorded as JSON in
one more tensor of the bundle, ``_FASTCKPT_STRUCTURE`` (uint8), in the
spirit of TensorFlow 2's ``_CHECKPOINTABLE_OBJECT_GRAPH``: the bundle's
checksums and atomic commit cover it, and TensorFlow reads it as an
ordinary tensor. On reading, the record is checked strictly against the
index (every leaf present, with its dtype and shape) before it is trusted.
Framework tensors (PyTorch, JAX, TensorFlow) are taken as they are, through
their numpy views, and never imported unless the caller passes them.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, MutableMapping, Optional, Tuple

import numpy as np

from .errors import DataLossError, InvalidArgumentError, NotFoundError, UnsupportedError
from .naming import PathLike

__all__ = ["flatten", "unflatten", "to_numpy", "with_structure_record", "parse_structure_record", "read_meta",
           "restore_structure", "STRUCTURE_KEY"]

STRUCTURE_KEY = "_FASTCKPT_STRUCTURE"
RECORD_FORMAT = "fastckpt.structure"
RECORD_VERSION = 1
MAX_DEPTH = 256
_PYTHON_TYPES = {"bool": bool, "int": int, "float": float, "complex": complex}
_MISSING = object()


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
        if len(path) > MAX_DEPTH:
            raise InvalidArgumentError(f"the state is nested deeper than {MAX_DEPTH} levels")
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
            return _PYTHON_TYPES[py](value.item())
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


# ---- the structure record ---------------------------------------------------------------

def with_structure_record(leaves: Mapping[str, Any], tree: Any, metadata: Any) -> Mapping[str, Any]:
    """``leaves`` plus the structure record tensor (none for a flat dict of
    arrays without metadata: it restores as it is)."""
    if STRUCTURE_KEY in leaves:
        raise InvalidArgumentError(f"the tensor name {STRUCTURE_KEY!r} is reserved for fastckpt's structure record")
    if tree is None:
        return leaves
    record = {
        "format": RECORD_FORMAT,
        "version": RECORD_VERSION,
        "structure": tree,
        "leaves": {n: {"dtype": str(np.asarray(v).dtype.newbyteorder("=")), "shape": list(np.shape(v))}
                   for n, v in leaves.items()},
        "metadata": metadata,
    }
    try:
        text = json.dumps(record, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(f"metadata must be JSON-serialisable: {e}") from None
    except RecursionError:
        raise InvalidArgumentError("the state or its metadata is nested too deeply") from None
    out = dict(leaves)
    out[STRUCTURE_KEY] = np.frombuffer(text.encode("utf-8", "surrogateescape"), np.uint8)
    return out


def _corrupt(where: str, why: str) -> DataLossError:
    return DataLossError(f"{where}: structure record is corrupt: {why}")


def _check_tree(tree: Any, where: str) -> List[str]:
    """The leaf names of a structure tree, after checking every node's shape
    (iteratively: no depth limit of the interpreter's stack applies)."""
    names: List[str] = []
    stack = [(tree, 0)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        if type(node) is not dict:
            raise _corrupt(where, f"a node is {type(node).__name__}, not an object")
        if depth > MAX_DEPTH:
            raise _corrupt(where, f"nested deeper than {MAX_DEPTH}")
        leaf = node.get("leaf", _MISSING)
        if leaf is not _MISSING:
            py = node.get("python", "int")
            if (type(leaf) is not str or type(py) is not str or py not in _PYTHON_TYPES
                    or len(node) != 1 + ("python" in node)):
                raise _corrupt(where, f"bad leaf node {node!r:.80}")
            names.append(leaf)
            continue
        if len(node) != 1:
            raise _corrupt(where, f"unknown node {node!r:.80}")
        kind, children = next(iter(node.items()))
        if kind not in ("dict", "list", "tuple") or type(children) is not list:
            raise _corrupt(where, f"unknown node {node!r:.80}")
        below = depth + 1
        if kind == "dict":
            keys = set()
            for kv in children:
                if type(kv) is not list or len(kv) != 2 or type(kv[0]) is not str or not kv[0]:
                    raise _corrupt(where, "a dict node is not a list of [key, node] pairs")
                keys.add(kv[0])
                push((kv[1], below))
            if len(keys) != len(children):
                raise _corrupt(where, "a dict node repeats a key")
        else:
            for child in children:
                push((child, below))
    if len(set(names)) != len(names):
        raise _corrupt(where, "two leaves name the same tensor")
    return names


def parse_structure_record(raw: bytes, index_shapes: Mapping[str, Any], index_dtypes: Mapping[str, Any],
                           where: str) -> Dict[str, Any]:
    """The structure record from its bytes, checked against the index: the
    tree is well formed, and every leaf it names is a tensor of the
    checkpoint with the dtype and shape the record says."""
    try:
        record = json.loads(bytes(raw).decode("utf-8", "surrogateescape"))
    except (ValueError, RecursionError) as e:
        raise _corrupt(where, f"not JSON: {str(e)[:80]}") from None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise _corrupt(where, "not a fastckpt structure record")
    version = record.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _corrupt(where, f"bad version {version!r}")
    if version > RECORD_VERSION:
        raise UnsupportedError(f"{where}: structure record version {version} is newer than this fastckpt reads")
    leaves = record.get("leaves")
    if not isinstance(leaves, dict) or "structure" not in record:
        raise _corrupt(where, "no structure or leaves")
    names = _check_tree(record["structure"], where)
    if set(names) != set(leaves):
        raise _corrupt(where, "the tree and the leaf table name different tensors")
    for name in names:
        _check_leaf(name, leaves[name], index_shapes, index_dtypes, where)
    return record


_DTYPE_TEXT: Dict[np.dtype, str] = {}


def _dtype_text(dt: np.dtype) -> str:
    """How the record writes a dtype (``str`` of its native form), cached."""
    text = _DTYPE_TEXT.get(dt)
    if text is None:
        text = _DTYPE_TEXT[dt] = str(dt.newbyteorder("="))
    return text


def _check_leaf(name: str, info: Any, shapes: Mapping[str, Any], dtypes: Mapping[str, Any], where: str) -> None:
    if name not in shapes:
        raise _corrupt(where, f"it names tensor {name!r}, which the checkpoint lacks")
    if not isinstance(info, dict) or not isinstance(info.get("shape"), list):
        raise _corrupt(where, f"bad entry for leaf {name!r}")
    if tuple(info["shape"]) != tuple(shapes[name]):
        raise _corrupt(where, f"leaf {name!r} has shape {list(shapes[name])} in the index, "
                              f"{info['shape']} in the record")
    want = dtypes[name]
    if want.kind == "O" or info.get("dtype") == _dtype_text(want):
        return  # the common case: the text save wrote, without parsing it
    try:
        got = np.dtype(str(info.get("dtype")))
    except TypeError:
        import ml_dtypes  # noqa: F401  (registers bfloat16 & co. with numpy)
        try:
            got = np.dtype(str(info.get("dtype")))
        except TypeError:
            raise _corrupt(where, f"leaf {name!r} has an unknown dtype {info.get('dtype')!r:.40}") from None
    if got.newbyteorder("=") != want.newbyteorder("="):
        raise _corrupt(where, f"leaf {name!r} is {want} in the index, {got} in the record")


def read_meta(prefix: PathLike) -> Dict[str, Any]:
    """The structure record (``structure``, ``leaves`` with dtype and shape,
    ``metadata``) of a checkpoint written by :func:`fastckpt.save`, checked
    against the index, reading no other tensor. Raises
    :class:`NotFoundError` when the checkpoint has none (TensorFlow's, or a
    flat dict of arrays saved without metadata)."""
    from .reader import CheckpointReader

    with CheckpointReader(prefix) as reader:
        record = reader.structure_record()
    if record is None:
        raise NotFoundError(f"checkpoint {reader.prefix!r} has no structure record (not written by fastckpt's "
                            "save from nested state or with metadata)")
    return record


def restore_structure(prefix: PathLike, into: Optional[Any] = None, *, verify: bool = True,
                      threads: Optional[int] = None) -> Any:
    """Read checkpoint ``prefix`` (a prefix, or a directory: its latest
    checkpoint) back in the structure it was saved in;
    checkpoints without a structure record (TensorFlow's) come back as a
    flat dict. With ``into`` (the same structure, or a flat dict), arrays --
    numpy, or PyTorch/JAX tensors through their numpy views -- are filled in
    place and ``into`` is returned."""
    from .reader import open_checkpoint

    return open_checkpoint(prefix, lambda p: _restore_from(p, into, verify, threads))


def _restore_from(prefix: str, into: Optional[Any], verify: bool, threads: Optional[int]) -> Any:
    from .reader import CheckpointReader

    with CheckpointReader(prefix, verify=verify, threads=threads) as reader:
        record = reader.structure_record()
        if record is None:  # a TensorFlow checkpoint: a flat dict
            if into is None:
                return reader.read()
            targets: MutableMapping[str, Any] = {k: to_numpy(v) for k, v in into.items()}
            reader.read(into=targets)
            return into
        tree = record["structure"]
        if into is None:
            return unflatten(tree, reader.read([n for n in record["leaves"]]))
        reader.read(into=leaf_targets(tree, into))
        return into
