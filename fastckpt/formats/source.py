"""What every format shares: a :class:`Source` of lazy tensors, format
detection by suffix, and the checks of a tensors-only destination."""


from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Dict

from fastckpt.errors import InvalidArgumentError, UnsupportedError
from fastckpt.bundle.lazy import LazyTensor
from fastckpt.bundle.naming import PathLike, is_url, storage_path
from fastckpt.structure.objectgraph import OBJECT_GRAPH_KEY
from fastckpt.structure.tree import non_tensor_values
from fastckpt.structure.record import STRUCTURE_KEY
from fastckpt.storage.fileio import open_file
from fastckpt.storage import fs, local

__all__ = ["Source", "FORMATS", "detect_format", "open_input", "checked_path", "tensors_only", "check_format"]

FORMATS = ("tf", "safetensors", "torch", "npz")
_SUFFIXES = {".safetensors": "safetensors", ".pt": "torch", ".pth": "torch", ".bin": "torch", ".npz": "npz",
             ".json": "safetensors"}


@dataclass
class Source:
    """A checkpoint opened for conversion: its tensors (read on demand), the
    nesting they came in (a fastckpt structure tree, or None for a flat
    mapping), the format's own metadata, what ``inspect`` reports, and the
    tied names (one tensor under two names: ``tensors`` holds the same
    :class:`LazyTensor` under both)."""

    format: str
    path: str
    tensors: Dict[str, LazyTensor]
    tree: Any = None
    metadata: Any = None
    info: Dict[str, Any] = field(default_factory=dict)
    close: Callable[[], None] = lambda: None
    tied: Dict[str, str] = field(default_factory=dict)  # name -> the name whose very tensor it is (tied weights)

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def detect_format(path: PathLike, *, existing: bool = True) -> str:
    """The format of ``path``: from its suffix, else (for a source) from
    what is there; a path without a known suffix is a TensorFlow prefix."""
    p = storage_path(path)
    base = p[:-len(".index.json")] if p.endswith(".index.json") else p
    suffix = os.path.splitext(base)[1].lower()
    if suffix in _SUFFIXES and not (suffix == ".json" and not p.endswith(".safetensors.index.json")):
        return _SUFFIXES[suffix]
    if existing and not is_url(p) and fs.is_dir(p):
        names = fs.listdir(p)
        if any(n.endswith(".safetensors") or n.endswith(".safetensors.index.json") for n in names) and not any(
                n.endswith(".index") or n == "checkpoint" for n in names):
            return "safetensors"
    return "tf"


def open_input(path: str) -> BinaryIO:
    """The regular file ``path`` opened for reading, without blocking: a
    FIFO, a device (``/dev/zero``) or a directory is refused at once
    (:class:`DataLossError`, :class:`NotFoundError`), never read."""
    return local.open_binary(open_file(path, f"no checkpoint at {path}"), "rb")


def checked_path(path: Any, what: str = "path") -> str:
    """``path`` as a str (a local path or an ``s3://`` URL), or
    :class:`InvalidArgumentError`."""
    return storage_path(path, what)


def check_reachable(path: str, fmt: str) -> None:
    """Object stores hold TensorFlow bundles; the single-file formats are
    read and written on local paths (:class:`UnsupportedError` at once)."""
    if is_url(path) and fmt != "tf":
        raise UnsupportedError(f"{path}: {fmt} files are read and written on local paths; an s3:// URL names "
                               "a TensorFlow bundle (convert it there, or to a local file)")


def tensors_only(source: Source, fmt: str) -> Dict[str, LazyTensor]:
    """The tensors of ``source`` for a format that holds only tensors:
    refuses what it would lose (values kept in the nesting record: ints,
    strings, None...), and string tensors, naming them."""
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



def check_format(fmt: Any) -> str:
    if fmt not in FORMATS:
        raise InvalidArgumentError(f"unknown checkpoint format {fmt!r}: one of {', '.join(FORMATS)}")
    return fmt
