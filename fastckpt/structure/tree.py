"""Nested state: a tree of dicts, lists and tuples flattened to tensors
stored under joined paths (``"layer/0/kernel"``) plus the tree itself, and
back. The tree is JSON (its node grammar is below) and travels in the
structure record (:mod:`fastckpt.structure.record`). Framework tensors
(PyTorch, JAX, TensorFlow) are taken as they are, through their numpy
views, and never imported unless the caller passes them.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple

import numpy as np

from fastckpt.errors import DataLossError, InvalidArgumentError
from fastckpt.bundle.frameworks import dtensor_part, framework_of, from_numpy, is_array, is_dtensor, to_numpy
from fastckpt.bundle.slices import Shard
from fastckpt.structure.target import jax_node_fields

__all__ = ["flatten", "unflatten", "leaf_targets", "non_tensor_values", "node_value", "KEY_TYPES", "AS_KINDS", "PYTHON_TYPES",
           "MAX_DEPTH"]

_BIG_INT_BITS = 12_000  # ints this long are stored in hex (Python limits decimal conversion to 4,300 digits)
MAX_SHARED = 100_000  # nodes walked again through containers that appear more than once (a DAG of lists)
MAX_DEPTH = 256
PYTHON_TYPES = {"bool": bool, "int": int, "float": float, "complex": complex}


# ---- flatten: state -> tensors + tree ----------------------------------------------------
#
# Tree nodes (JSON):
#   {"dict": [[key, node], ...]}  (+ "type": "OrderedDict")  keys: str, int, bool, None, float
#   {"list": [node, ...]}  {"tuple": [node, ...]}
#   {"leaf": name}  a tensor of the bundle (+ "as": torch|jax|tensorflow|scalar|bytes for what
#                   it was; version 1 wrote "python": bool|int|float|complex for Python scalars)
#   {"value": v}    None, bool, int (any size) or str, kept in the record itself
#   {"float": hex}  {"complex": [hex, hex]}  exact, NaN and infinities included

KEY_TYPES = (str, int, float, bool, type(None))
AS_KINDS = ("torch", "jax", "tensorflow", "scalar", "bytes")


def _where(path: List[str]) -> str:
    return "/".join(path) or "<root>"


def _check_key(k: Any, path: List[str]) -> None:
    if type(k) not in KEY_TYPES:
        raise InvalidArgumentError(f"dict keys must be str, int, float, bool or None, found "
                                   f"{type(k).__name__} {k!r:.40} at {_where(path)}")
    if k == "":
        raise InvalidArgumentError(f"empty dict key at {_where(path)}")
    if type(k) is float and not math.isfinite(k):
        raise InvalidArgumentError(f"dict key {k!r} at {_where(path)} is not a finite number")


def _value_node(x: Any) -> Optional[Dict[str, Any]]:
    """The record node of a non-array leaf, or None if ``x`` is not one."""
    if type(x) is int and x.bit_length() > _BIG_INT_BITS:  # beyond what JSON numbers carry here: hex
        return {"int": hex(x)}
    if x is None or type(x) in (bool, int, str):
        return {"value": x}
    if type(x) is float:
        return {"float": x.hex()}
    if type(x) is complex:
        return {"complex": [x.real.hex(), x.imag.hex()]}
    return None


def flatten(state: Any, sep: str = "/") -> Tuple[Dict[str, Any], Any]:
    """``(name -> array, tree)`` of a nested state. Arrays (numpy arrays and
    scalars, framework tensors as numpy views, ``bytes`` as uint8) become
    tensors named by their joined path; other leaves (None, bool, int,
    float, complex, str) live in ``tree``, a JSON-able description of the
    nesting that keeps every Python type."""
    leaves: Dict[str, Any] = {}
    seen: Set[int] = set()  # containers met so far, and those on the way to the current one
    above: Set[int] = set()
    repeated = [0, 0]  # containers met again being walked; nodes walked inside them

    def walk(x: Any, path: List[str]) -> Any:
        if len(path) > MAX_DEPTH:
            raise InvalidArgumentError(f"the state is nested deeper than {MAX_DEPTH} levels")
        if repeated[0]:
            repeated[1] += 1
            if repeated[1] > MAX_SHARED:
                raise InvalidArgumentError(f"the state shares containers so much that its tree has over "
                                           f"{MAX_SHARED} repeated nodes (at {_where(path)})")
        if not isinstance(x, (Mapping, list, tuple)):
            fields = jax_node_fields(x)  # a dataclass pytree (Flax, optax): saved as a dict of its fields
            if fields is None:
                return walk_leaf(x, path)
            x = fields
        key = id(x)
        if key in above:
            raise InvalidArgumentError(f"the state contains itself at {_where(path)}")
        again = key in seen
        seen.add(key)
        above.add(key)
        repeated[0] += again
        try:
            return walk_container(x, path)
        finally:
            above.discard(key)
            repeated[0] -= again

    def walk_container(x: Any, path: List[str]) -> Any:
        if isinstance(x, Mapping):
            items = []
            for k, v in x.items():
                _check_key(k, path)
                items.append([k, walk(v, path + [str(k)])])
            node: Dict[str, Any] = {"dict": items}
            if isinstance(x, OrderedDict):
                node["type"] = "OrderedDict"
            return node
        kind = "list" if isinstance(x, list) else "tuple"
        return {kind: [walk(v, path + [str(i)]) for i, v in enumerate(x)]}

    def walk_leaf(x: Any, path: List[str]) -> Any:
        if not path:
            raise InvalidArgumentError("the state must be a dict, list or tuple, not a single array")
        value = _value_node(x)
        if value is not None:
            return value
        return {"leaf": add_leaf(x, path)}

    def add_leaf(x: Any, path: List[str]) -> str:
        name = sep.join(path)
        if is_dtensor(x):  # PyTorch DTensor: this process's part, as a Shard (or the replica)
            x = dtensor_part(x)
        if name in leaves:
            raise InvalidArgumentError(f"two leaves have the same name {name!r} (keys that print alike, "
                                       "such as 1 and '1', or 'a/b' beside 'a' -> 'b')")
        fw = framework_of(x)
        if isinstance(x, Shard):  # one process's part of a global tensor (fastckpt.collective)
            leaves[name] = x
            if framework_of(x.local) is not None:
                as_kinds[name] = framework_of(x.local)  # type: ignore[assignment]
        elif fw is not None:
            leaves[name] = to_numpy(x)
            as_kinds[name] = fw
        elif isinstance(x, np.ndarray):
            leaves[name] = x
        elif isinstance(x, np.generic):
            leaves[name] = np.asarray(x)
            as_kinds[name] = "scalar"
        elif isinstance(x, (bytes, bytearray, memoryview)):
            leaves[name] = np.frombuffer(bytes(x), np.uint8)
            as_kinds[name] = "bytes"
        else:
            raise InvalidArgumentError(
                f"cannot save {type(x).__module__}.{type(x).__qualname__} at {name}: a state holds dicts, "
                "lists, tuples, arrays and tensors, None, bool, int, float, complex, str and bytes")
        return name

    as_kinds: Dict[str, str] = {}
    tree = walk(state, [])
    if as_kinds:
        _tag_leaves(tree, as_kinds)
    return leaves, tree


def _tag_leaves(tree: Any, as_kinds: Mapping[str, str]) -> None:
    """Add ``"as"`` to the leaf nodes of the tensors that were not numpy arrays."""
    stack = [tree]
    while stack:
        node = stack.pop()
        leaf = node.get("leaf")
        if leaf is not None:
            if leaf in as_kinds:
                node["as"] = as_kinds[leaf]
        elif "dict" in node:
            stack.extend(v for _, v in node["dict"])
        else:
            stack.extend(node.get("list", node.get("tuple", ())))


# ---- unflatten: tensors + tree -> state ----------------------------------------------------

def _leaf_value(node: Mapping[str, Any], value: Any, dtype_text: Optional[str]) -> Any:
    """A tensor as the type it was saved as."""
    py = node.get("python")
    if py is not None:  # version 1: Python scalars were tensors
        return PYTHON_TYPES[py](value.item())
    kind = node.get("as")
    if kind is None:
        if value.dtype.kind == "O" and dtype_text and dtype_text[1:2] in ("U", "S"):
            return _text_array(value, dtype_text)
        return value
    if kind == "scalar":
        return value[()]
    if kind == "bytes":
        return value.tobytes()
    return from_numpy(value, kind)


def _text_array(value: np.ndarray, dtype_text: str) -> np.ndarray:
    """A numpy ``U``/``S`` array back from the bytes TensorFlow stores."""
    if dtype_text[1] == "U":
        return np.array([b.decode("utf-8", "surrogateescape") for b in value.reshape(-1)],
                        dtype=dtype_text).reshape(value.shape)
    return value.astype(dtype_text)


def node_value(node: Mapping[str, Any]) -> Any:
    """The Python value of a value node (``{"value": ...}``, ``{"int": hex}``,
    ``{"float": hex}``, ``{"complex": [hex, hex]}``)."""
    if "value" in node:
        return node["value"]
    if "int" in node:
        return int(node["int"], 16)
    if "float" in node:
        return float.fromhex(node["float"])
    re_, im = node["complex"]
    return complex(float.fromhex(re_), float.fromhex(im))


def unflatten(tree: Any, leaves: Mapping[str, Any], dtypes: Optional[Mapping[str, Any]] = None,
              given: Optional[Mapping[str, Any]] = None) -> Any:
    """Rebuild the nested state from ``tree`` (checked by
    :func:`parse_structure_record`) and ``name -> array``. ``given`` maps
    leaf names to the objects to put in their place (the caller's tensors,
    restored in place)."""
    given = given or {}
    dtypes = dtypes or {}
    made: Dict[Tuple[int, Any], Any] = {}  # one array under several names (tied weights): one tensor back

    def build(node: Any) -> Any:
        if "dict" in node:
            items = [(k, build(v)) for k, v in node["dict"]]
            return OrderedDict(items) if node.get("type") == "OrderedDict" else dict(items)
        if "list" in node:
            return [build(v) for v in node["list"]]
        if "tuple" in node:
            return tuple(build(v) for v in node["tuple"])
        name = node.get("leaf")
        if name is None:
            return node_value(node)
        if name in given:
            return given[name]
        if name not in leaves:
            raise DataLossError(f"the structure names tensor {name!r}, which the checkpoint lacks")
        info = dtypes.get(name)
        value = leaves[name]
        seen = (id(value), node.get("as"))
        if seen not in made:
            made[seen] = (_leaf_value(node, value, info.get("dtype") if isinstance(info, dict) else None), value)
        return made[seen][0]
    return build(tree)


def leaf_targets(tree: Any, into: Any) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """Pair ``into``'s arrays with the tree's tensors: ``(name -> numpy
    array to fill in place, name -> the caller's object)``. Framework
    tensors become numpy views sharing their memory. Arrays of ``into``
    that the checkpoint does not hold, or holds as something other than a
    tensor, are an error (they would silently stay as they are)."""
    targets: Dict[str, np.ndarray] = {}
    owners: Dict[str, Any] = {}
    extra: List[str] = []

    def walk(t: Any, x: Any, path: List[str]) -> None:
        if "dict" in t:
            if not isinstance(x, Mapping):
                raise InvalidArgumentError(f"into: expected a dict at {_where(path)}, found {type(x).__name__}")
            known = {}
            for k, v in t["dict"]:
                known[k] = v
                if k in x:
                    walk(v, x[k], path + [str(k)])
            extra.extend(_array_paths({k: v for k, v in x.items() if k not in known}, path))
        elif "list" in t or "tuple" in t:
            items = t.get("list", t.get("tuple"))
            if not isinstance(x, (list, tuple)) or len(x) != len(items):
                raise InvalidArgumentError(f"into: expected a sequence of {len(items)} at {_where(path)}")
            for i, (v, y) in enumerate(zip(items, x)):
                walk(v, y, path + [str(i)])
        elif "leaf" in t and "python" not in t and t.get("as") not in ("scalar", "bytes"):
            given = x
            if is_dtensor(x):  # its local part is filled in place
                x = dtensor_part(x)
            if isinstance(x, Shard):  # a region of the global tensor, read in place of x.local
                targets[t["leaf"]] = x  # type: ignore[assignment]
                owners[t["leaf"]] = given
            elif is_array(x):
                targets[t["leaf"]] = to_numpy(x)
                owners[t["leaf"]] = given
        elif is_array(x) and not isinstance(x, np.generic):
            extra.append(_where(path) + " (the checkpoint holds a value there, not a tensor)")
    walk(tree, into, [])
    if extra:
        raise InvalidArgumentError("into: the checkpoint has nothing to restore into " + ", ".join(extra[:10])
                                   + (f" and {len(extra) - 10} more" if len(extra) > 10 else ""))
    return targets, owners


def _array_paths(x: Any, path: List[str]) -> List[str]:
    """Paths of the arrays inside ``x``."""
    if isinstance(x, Mapping):
        return [p for k, v in x.items() for p in _array_paths(v, path + [str(k)])]
    if isinstance(x, (list, tuple)):
        return [p for i, v in enumerate(x) for p in _array_paths(v, path + [str(i)])]
    return [_where(path)] if is_array(x) and not isinstance(x, np.generic) else []


def non_tensor_values(tree: Any, path: str = "") -> List[str]:
    """Paths of the non-tensor leaves of a structure tree."""
    if not isinstance(tree, dict):
        return []
    for kind in ("dict", "list", "tuple"):
        if kind in tree:
            items = tree[kind] if kind != "dict" else [(k, v) for k, v in tree[kind]]
            pairs = items if kind == "dict" else list(enumerate(items))
            return [p for k, v in pairs for p in non_tensor_values(v, f"{path}/{k}" if path else str(k))]
    return [] if "leaf" in tree else [path or "<root>"]
