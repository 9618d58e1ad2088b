"""The checkpoint formats users have, behind one shape: a :class:`Source`
(tensor name → :class:`~fastckpt.lazy.LazyTensor`, plus the nesting and
metadata when the format keeps them) read from a path, and a writer per
format that takes tensors one at a time.

Formats: ``tf`` (TensorFlow bundles: plain, sharded, compressed),
``safetensors`` (one file, or shards with ``model.safetensors.index.json``),
``torch`` (``.pt``/``.pth``/``.bin`` state dicts, read with
``weights_only=True``), ``npz`` (numpy). Raw tensors are read through memory
maps; a writer holds at most one decoded tensor (plus a 64 MiB staging pool).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Dict, List, Optional

from ..errors import CheckpointError, InvalidArgumentError, NotFoundError
from ..fsutil import io_error
from ..lazy import LazyTensor
from ..naming import PathLike, local_path, open_file

__all__ = ["Source", "FORMATS", "detect_format", "open_source", "write_as", "LazyTensor", "open_input"]

FORMATS = ("tf", "safetensors", "torch", "npz")
_SUFFIXES = {".safetensors": "safetensors", ".pt": "torch", ".pth": "torch", ".bin": "torch", ".npz": "npz",
             ".json": "safetensors"}


@dataclass
class Source:
    """A checkpoint opened for conversion: its tensors (read on demand), the
    nesting they came in (a fastckpt structure tree, or None for a flat
    mapping), the format's own metadata, and what ``inspect`` reports."""

    format: str
    path: str
    tensors: Dict[str, LazyTensor]
    tree: Any = None
    metadata: Any = None
    info: Dict[str, Any] = field(default_factory=dict)
    close: Callable[[], None] = lambda: None

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def detect_format(path: PathLike, *, existing: bool = True) -> str:
    """The format of ``path``: from its suffix, else (for a source) from
    what is there; a path without a known suffix is a TensorFlow prefix."""
    p = local_path(path)
    base = p[:-len(".index.json")] if p.endswith(".index.json") else p
    suffix = os.path.splitext(base)[1].lower()
    if suffix in _SUFFIXES and not (suffix == ".json" and not p.endswith(".safetensors.index.json")):
        return _SUFFIXES[suffix]
    if existing and os.path.isdir(p):
        names = os.listdir(p)
        if any(n.endswith(".safetensors") or n.endswith(".safetensors.index.json") for n in names) and not any(
                n.endswith(".index") or n == "checkpoint" for n in names):
            return "safetensors"
    return "tf"


def open_input(path: str) -> BinaryIO:
    """The regular file ``path`` opened for reading, without blocking: a
    FIFO, a device (``/dev/zero``) or a directory is refused at once
    (:class:`DataLossError`, :class:`NotFoundError`), never read."""
    return os.fdopen(open_file(path, f"no checkpoint at {path}"), "rb")


def checked_path(path: Any, what: str = "path") -> str:
    """``path`` as a str, or :class:`InvalidArgumentError`."""
    return local_path(path, what)


def open_source(path: PathLike, fmt: Optional[str] = None, *, verify: bool = True) -> Source:
    """Open the checkpoint at ``path`` (in format ``fmt``, or detected)."""
    p = checked_path(path)
    fmt = _checked_format(fmt) if fmt else detect_format(p)
    if fmt != "tf" and not _exists(p, fmt):
        raise NotFoundError(f"no {fmt} checkpoint at {p}: it does not exist")
    try:
        return _open(p, fmt, verify)
    except CheckpointError:
        raise
    except OSError as e:  # the system refused a read (EIO, EACCES...)
        raise io_error(e, f"reading {p}") from e


def _open(p: str, fmt: str, verify: bool) -> Source:
    if fmt == "tf":
        from .bundle import open_bundle
        return open_bundle(p, verify=verify)
    if fmt == "safetensors":
        from .safetensors import open_safetensors
        return open_safetensors(p)
    if fmt == "npz":
        from .npz import open_npz
        return open_npz(p)
    from .torchfile import open_torch
    return open_torch(p)


def _exists(path: str, fmt: str) -> bool:
    """``path`` exists -- or, for safetensors, names shards through their index."""
    shards = fmt == "safetensors" and path.endswith(".safetensors") and \
        os.path.exists(path[:-len(".safetensors")] + ".safetensors.index.json")
    return os.path.exists(path) or shards


def write_as(fmt: str, dst: str, source: Source, *, num_shards: int = 1, compression: Optional[str] = None,
             compression_level: int = 1, durable: bool = False, threads: Optional[int] = None) -> List[str]:
    """Write ``source``'s tensors to ``dst`` in format ``fmt``; returns the
    files written. Every writer writes under private names and renames
    into place last, so ``dst`` is never half written."""
    fmt = _checked_format(fmt)
    if type(num_shards) is not int or not 1 <= num_shards <= 99999:
        raise InvalidArgumentError(f"num_shards must be an int in 1..99999, got {num_shards!r}")
    if compression is not None and fmt != "tf":
        raise InvalidArgumentError(f"compression is a TensorFlow-bundle option; {fmt} files are written plain")
    if num_shards != 1 and fmt not in ("tf", "safetensors"):
        raise InvalidArgumentError(f"{fmt} checkpoints are one file: --num-shards must be 1")
    if fmt == "tf":
        from .bundle import write_tf
        return write_tf(dst, source, num_shards=num_shards, compression=compression,
                        compression_level=compression_level, durable=durable, threads=threads)
    if fmt == "safetensors":
        from .safetensors import write_safetensors
        return write_safetensors(dst, source, num_shards=num_shards, durable=durable)
    if fmt == "npz":
        from .npz import write_npz
        return write_npz(dst, source, durable=durable)
    from .torchfile import write_torch
    return write_torch(dst, source, durable=durable)


def _checked_format(fmt: Any) -> str:
    if fmt not in FORMATS:
        raise InvalidArgumentError(f"unknown checkpoint format {fmt!r}: one of {', '.join(FORMATS)}")
    return fmt


def tensors_only(source: Source, fmt: str) -> Dict[str, LazyTensor]:
    """The tensors of ``source`` for a format that holds only tensors:
    refuses what it would lose (values kept in the nesting record: ints,
    strings, None...), and string tensors, naming them."""
    from ..structure import STRUCTURE_KEY
    values = non_tensor_values(source.tree)
    if values:
        raise InvalidArgumentError(
            f"{fmt} holds only tensors, and this checkpoint also holds {len(values)} other value(s) "
            f"({', '.join(values[:5])}{'...' if len(values) > 5 else ''}): convert to a TensorFlow bundle, "
            "which keeps them")
    strings = [n for n, t in source.tensors.items() if t.dtype.kind in "OSU" and n != OBJECT_GRAPH_KEY]
    if strings:
        raise InvalidArgumentError(f"{fmt} has no string tensors: {', '.join(strings[:5])}"
                                   f"{'...' if len(strings) > 5 else ''}")
    return {n: t for n, t in source.tensors.items() if n not in (OBJECT_GRAPH_KEY, STRUCTURE_KEY)}


OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


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
