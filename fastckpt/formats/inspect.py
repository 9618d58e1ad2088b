"""``fastckpt inspect PATH``: a summary of any supported checkpoint --
tensor count, bytes by dtype, data files, compression, format version,
the structure tree, metadata and the largest tensors -- read from headers
and indexes only (no tensor data is read, except TensorFlow 2's object
graph and fastckpt's structure record)."""

from __future__ import annotations

import json
from typing import Any, Dict, Iterator, Mapping, Optional

from fastckpt.errors import InvalidArgumentError
from fastckpt.formats.registry import open_source
from fastckpt.formats.source import Source
from fastckpt.bundle.naming import PathLike
from fastckpt.structure.objectgraph import OBJECT_GRAPH_KEY, object_paths, parse_object_graph
from fastckpt.storage.s3 import using_storage

__all__ = ["inspect_checkpoint", "summary_lines"]


def inspect_checkpoint(path: PathLike, fmt: Optional[str] = None, *, largest: int = 10,
                       depth: int = 2, storage_options: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The summary of checkpoint ``path`` as a JSON-able dict."""
    with using_storage(storage_options):
        if type(largest) is not int or largest < 0 or type(depth) is not int or depth < 1:
            raise InvalidArgumentError(f"largest must be an int >= 0 and depth an int >= 1, got {largest!r}, {depth!r}")
        with open_source(path, fmt) as source:
            return _summary(source, largest, depth)


def _summary(source: Source, largest: int, depth: int) -> Dict[str, Any]:
    tensors = source.tensors
    by_dtype: Dict[str, Dict[str, int]] = {}
    for name, t in tensors.items():
        row = by_dtype.setdefault(_dtype_of(source, name), {"tensors": 0, "bytes": 0})
        row["tensors"] += 1
        row["bytes"] += t.nbytes
    names = sorted(tensors, key=lambda n: (-tensors[n].nbytes, n))[:largest]
    out = {"path": source.path, "format": source.format, "format_version": source.info.get("format_version"),
           "tensors": len(tensors), "bytes": sum(t.nbytes for t in tensors.values()),
           "file_bytes": source.info.get("file_bytes"), "data_files": source.info.get("data_files"),
           "compression": source.info.get("compression"), "bytes_by_dtype": dict(sorted(by_dtype.items())),
           "largest": [{"name": n, "dtype": _dtype_of(source, n), "shape": list(tensors[n].shape),
                        "bytes": tensors[n].nbytes} for n in names],
           "structure": _tree(source, depth), "metadata": source.metadata}
    if source.info.get("partitioned"):
        out["partitioned_tensors"] = source.info["partitioned"]
    if source.tied:
        out["tied"] = dict(sorted(source.tied.items()))
    if OBJECT_GRAPH_KEY in tensors:
        out["object_graph_nodes"] = _object_graph_nodes(source)
    return out


def _dtype_of(source: Source, name: str) -> str:
    """The format's own name of the tensor's dtype (``float32``, ``BF16``)."""
    return str(source.info.get("dtypes", {}).get(name, source.tensors[name].dtype))


def _object_graph_nodes(source: Source) -> Optional[int]:
    try:
        return len(parse_object_graph(source.tensors[OBJECT_GRAPH_KEY].array()[()]))
    except Exception:  # a damaged graph is reported, not fatal to a summary
        return None


def _tree(source: Source, depth: int) -> Dict[str, Any]:
    """Name groups to ``depth`` levels: ``{group: {"tensors": n, "bytes": b,
    "children": {...}}}``, from the saved nesting or from the names."""
    sep = "/" if source.format == "tf" or source.tree is not None else "."
    shown = _object_paths(source) if OBJECT_GRAPH_KEY in source.tensors else {}
    root: Dict[str, Any] = {}
    for name, t in source.tensors.items():
        if name == OBJECT_GRAPH_KEY:
            continue
        level = root
        parts = shown.get(name, name).split(sep)
        for i, part in enumerate(parts[:depth]):
            node = level.setdefault(part, {"tensors": 0, "bytes": 0, "children": {}})
            node["tensors"] += 1
            node["bytes"] += t.nbytes
            if i == len(parts) - 1:
                node["dtype"], node["shape"] = str(t.dtype), list(t.shape)
            level = node["children"]
    return root


def _object_paths(source: Source) -> Dict[str, str]:
    """Checkpoint key → its object path (TensorFlow 2), as restore lays it out."""
    try:
        return object_paths(parse_object_graph(source.tensors[OBJECT_GRAPH_KEY].array()[()]))
    except Exception:  # a damaged graph: the keys as they are
        return {}


def summary_lines(s: Dict[str, Any]) -> Iterator[str]:
    """The summary for a terminal."""
    yield f"{s['path']}: {s['format_version']}"
    files = f"{s['data_files']} data file(s), {_size(s['file_bytes'])} on disk" if s["file_bytes"] is not None else ""
    yield (f"  {s['tensors']} tensors, {_size(s['bytes'])}; {files}; compression: {s['compression'] or 'none'}")
    if s.get("partitioned_tensors"):
        yield f"  {s['partitioned_tensors']} partitioned tensor(s)"
    if s.get("tied"):
        pairs = ", ".join(f"{n} = {first}" for n, first in list(s["tied"].items())[:5])
        yield f"  {len(s['tied'])} tied name(s), stored once: {pairs}{' ...' if len(s['tied']) > 5 else ''}"
    if "object_graph_nodes" in s:
        yield f"  TensorFlow 2 object graph: {s['object_graph_nodes']} node(s)"
    yield "  bytes by dtype:"
    for dt, row in s["bytes_by_dtype"].items():
        yield f"    {dt:<14} {row['tensors']:>7} tensors  {_size(row['bytes']):>10}"
    if s["largest"]:
        yield "  largest tensors:"
        width = max(len(r["name"]) for r in s["largest"])
        for r in s["largest"]:
            yield f"    {r['name']:<{width}}  {r['dtype']:<10} {str(r['shape']):<18} {_size(r['bytes']):>10}"
    if s["structure"]:
        yield "  structure:"
        yield from _tree_lines(s["structure"], "    ")
    if s["metadata"] is not None:
        text = json.dumps(s["metadata"], sort_keys=True)
        yield f"  metadata: {text if len(text) <= 300 else text[:300] + '...'}"


def _tree_lines(tree: Dict[str, Any], indent: str, limit: int = 20) -> Iterator[str]:
    items = list(tree.items())
    for key, node in items[:limit]:
        what = (f"{node['dtype']}{node['shape']}" if "dtype" in node and not node["children"]
                else f"{node['tensors']} tensors")
        yield f"{indent}{key}: {what}, {_size(node['bytes'])}"
        yield from _tree_lines(node["children"], indent + "  ", limit)
    if len(items) > limit:
        yield f"{indent}... {len(items) - limit} more"


def _size(n: Optional[int]) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)
