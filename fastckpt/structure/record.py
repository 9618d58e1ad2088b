"""The structure record: one uint8 tensor of the bundle,
``_FASTCKPT_STRUCTURE``, holding the state's tree (the node grammar of
:mod:`fastckpt.structure.tree`), each leaf's dtype and shape, and the
caller's metadata as JSON -- written with the bundle, and checked strictly
against the index (every leaf present, with its dtype and shape) before it
is trusted."""

from __future__ import annotations

import json
import math
import re
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from fastckpt.bundle.dtypes import DT_VARIANT, numpy_dtype
from fastckpt.bundle.lazy import LazyTensor
from fastckpt.bundle.naming import index_filename
from fastckpt.bundle.reader import CheckpointReader
from fastckpt.bundle.readplan import name_of
from fastckpt.errors import DataLossError, InvalidArgumentError, UnsupportedError
from fastckpt.structure.tree import AS_KINDS, KEY_TYPES, MAX_DEPTH, PYTHON_TYPES

__all__ = ["STRUCTURE_KEY", "RECORD_FORMAT", "RECORD_VERSION", "with_structure_record", "record_tensor",
           "parse_structure_record", "read_record"]

STRUCTURE_KEY = "_FASTCKPT_STRUCTURE"
RECORD_FORMAT = "fastckpt.structure"
RECORD_VERSION = 2  # 2: non-array leaves in the record, typed keys, "as"
_MISSING = object()


def with_structure_record(leaves: Mapping[str, Any], tree: Any, metadata: Any) -> Mapping[str, Any]:
    """``leaves`` plus the structure record tensor (none for a flat dict of
    arrays without metadata: it restores as it is)."""
    if STRUCTURE_KEY in leaves:
        raise InvalidArgumentError(f"the tensor name {STRUCTURE_KEY!r} is reserved for fastckpt's structure record")
    if tree is None:
        return leaves
    table = {n: {"dtype": str(_dtype_of(v).newbyteorder("=")), "shape": list(np.shape(v) if not
                                                                           isinstance(v, LazyTensor) else v.shape)}
             for n, v in leaves.items()}
    out = dict(leaves)
    out[STRUCTURE_KEY] = record_tensor(tree, table, metadata)
    return out


def _dtype_of(v: Any) -> np.dtype:
    return v.dtype if isinstance(v, LazyTensor) else np.asarray(v).dtype


def record_tensor(tree: Any, table: Mapping[str, Any], metadata: Any) -> np.ndarray:
    """The structure record as the uint8 tensor stored in the bundle:
    ``tree``, the leaf table (name -> dtype text and shape) and ``metadata``."""
    record = {
        "format": RECORD_FORMAT,
        "version": RECORD_VERSION,
        "structure": tree,
        "leaves": dict(table),
        "metadata": metadata,
    }
    try:
        text = json.dumps(record, ensure_ascii=True, allow_nan=False,  # ASCII: any str, surrogates too
                          default=_scalar_as_json)
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(f"metadata must be JSON-serialisable: {e}") from None
    except RecursionError:
        raise InvalidArgumentError("the state or its metadata is nested too deeply") from None
    return np.frombuffer(text.encode("utf-8", "surrogateescape"), np.uint8)


def _scalar_as_json(value: Any) -> Any:
    """A numpy, PyTorch or JAX scalar (or 0-d array) in metadata as the
    Python number or bool it holds (it comes back as that); anything else
    is not JSON (TypeError)."""
    if hasattr(value, "item") and hasattr(value, "shape") and tuple(value.shape) == ():
        item = value.item()  # (numpy, torch -- with grad too -- and JAX scalars have .item())
        if isinstance(item, np.generic) and item.dtype.kind == "f":  # ml_dtypes' bfloat16 and friends
            item = float(item)
        if isinstance(item, (bool, int, float, str)):
            return item
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _corrupt(where: str, why: str) -> DataLossError:
    return DataLossError(f"{where}: structure record is corrupt: {why}")


def _check_value(node: Dict[str, Any]) -> bool:
    """True if ``node`` is a well-formed value node."""
    if len(node) != 1:
        return False
    if "value" in node:
        return node["value"] is None or type(node["value"]) in (bool, int, str)
    if "int" in node:
        return type(node["int"]) is str and re.fullmatch(r"-?0x[0-9a-f]+", node["int"]) is not None
    texts = [node["float"]] if "float" in node else node.get("complex")
    if type(texts) is not list or len(texts) != (1 if "float" in node else 2):
        return False
    try:
        [float.fromhex(t) for t in texts]
    except (TypeError, ValueError, OverflowError):
        return False
    return True


def _check_leaf_node(node: Dict[str, Any]) -> bool:
    leaf, py, kind = node["leaf"], node.get("python"), node.get("as")
    if type(leaf) is not str or len(node) != 1 + ("python" in node) + ("as" in node):
        return False
    if py is not None and (type(py) is not str or py not in PYTHON_TYPES or kind is not None):
        return False
    return kind is None or (type(kind) is str and kind in AS_KINDS)


def _check_dict(node: Dict[str, Any], children: Any, where: str) -> None:
    if len(node) != 1 + ("type" in node) or node.get("type", "OrderedDict") != "OrderedDict":
        raise _corrupt(where, f"unknown node {node!r:.80}")
    keys = set()
    for kv in children:
        if (type(kv) is not list or len(kv) != 2 or type(kv[0]) not in KEY_TYPES or kv[0] == ""
                or (type(kv[0]) is float and not math.isfinite(kv[0]))):
            raise _corrupt(where, "a dict node is not a list of [key, node] pairs")
        keys.add(kv[0])
    if len(keys) != len(children):
        raise _corrupt(where, "a dict node repeats a key")


def _check_tree(tree: Any, where: str) -> List[str]:
    """The tensor names of a structure tree, after checking every node's
    shape (iteratively: no depth limit of the interpreter's stack applies)."""
    names: List[str] = []
    stack = [(tree, 0)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        if type(node) is not dict:
            raise _corrupt(where, f"a node is {type(node).__name__}, not an object")
        if depth > MAX_DEPTH:
            raise _corrupt(where, f"nested deeper than {MAX_DEPTH}")
        if "leaf" in node:
            if not _check_leaf_node(node):
                raise _corrupt(where, f"bad leaf node {node!r:.80}")
            names.append(node["leaf"])
            continue
        children = node.get("dict", node.get("list", node.get("tuple", _MISSING)))
        if children is _MISSING:
            if not _check_value(node):
                raise _corrupt(where, f"unknown node {node!r:.80}")
            continue
        if type(children) is not list:
            raise _corrupt(where, f"unknown node {node!r:.80}")
        if "dict" in node:
            _check_dict(node, children, where)
            for kv in children:
                push((kv[1], depth + 1))
        else:
            if len(node) != 1:
                raise _corrupt(where, f"unknown node {node!r:.80}")
            for child in children:
                push((child, depth + 1))
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


def read_record(reader: CheckpointReader) -> Optional[Dict[str, Any]]:
    """The structure record fastckpt's ``save`` stored in the bundle open in
    ``reader`` (checked against its index), or None when it has none."""
    if not reader.has_tensor(STRUCTURE_KEY):
        return None
    raw = reader.read([STRUCTURE_KEY])[STRUCTURE_KEY]
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise DataLossError(f"{reader.prefix}: structure record is corrupt: "
                            f"tensor {STRUCTURE_KEY} is {raw.dtype} {list(raw.shape)}, not uint8 bytes")
    shapes, dtypes = {}, {}
    for key, entry in reader.entries():  # one pass over the index
        if key[:1] != b"\x00":
            name = name_of(key)
            shapes[name] = entry.shape
            dtypes[name] = numpy_dtype(entry.dtype) if entry.dtype != DT_VARIANT else np.dtype(object)
    return parse_structure_record(raw.tobytes(), shapes, dtypes, index_filename(reader.prefix))
