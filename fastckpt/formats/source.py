"""What every format shares: a :class:`Source` of lazy tensors, format
detection by suffix, and the checks of a tensors-only destination."""


from __future__ import annotations

import difflib
import os
import re
import zipfile
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Dict, Optional

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
    """The format of ``path``: from its suffix; else, for a source, from
    what is there (a directory's files; an existing file's first bytes, so
    that Lightning's ``.ckpt`` -- a PyTorch file -- is read as one); a path
    without a known suffix is a TensorFlow prefix. A suffix of a format
    fastckpt does not write (``.h5``, ``.keras``, ``.onnx``...) or a near
    miss of one it does (``.safetensor``) is :class:`InvalidArgumentError`
    listing the formats; an existing file of a kind fastckpt does not
    read is :class:`UnsupportedError` saying what it is."""
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
    if existing and not is_url(p) and fs.is_file(p) and not _TF_FILE.search(p):
        sniffed = _sniff(p)
        if sniffed is not None:
            return sniffed
    _check_suffix(p, suffix, existing)
    return "tf"


# the files of a TensorFlow bundle, named as its path
_TF_FILE = re.compile(r"\.(index|data-\d{5,}-of-\d{5,})$")
# suffixes of formats fastckpt neither reads nor writes: never a TensorFlow prefix by accident
_FOREIGN = {".h5": "HDF5 (Keras 2 weights)", ".hdf5": "HDF5", ".keras": "a Keras archive", ".onnx": "ONNX",
            ".pkl": "a pickle", ".pickle": "a pickle", ".msgpack": "msgpack (Flax)", ".gguf": "GGUF",
            ".npy": "one numpy array (.npz holds a checkpoint)", ".tflite": "TensorFlow Lite", ".pb": "a TensorFlow graph"}
_KNOWN = sorted(set(_SUFFIXES) - {".json"}) + [".safetensors.index.json"]


def _check_suffix(p: str, suffix: str, existing: bool) -> None:
    """A path taken for a TensorFlow prefix must not look like a file of
    another format, or a typo of one."""
    formats = ("formats: a TensorFlow prefix (no suffix, or one like model.ckpt), " + ", ".join(_KNOWN)
               + "; or name the format with --to/--from (dst_format=/src_format=)")
    if suffix in _FOREIGN:
        raise InvalidArgumentError(f"{p}: {suffix} is {_FOREIGN[suffix]}, which fastckpt does not "
                                   f"{'read' if existing else 'write'}; {formats}")
    close = difflib.get_close_matches(suffix, _KNOWN, n=1, cutoff=0.8) \
        if len(suffix) >= 5 and suffix != ".ckpt" else []  # (model.ckpt: TensorFlow's own naming of a prefix)
    if close:
        raise InvalidArgumentError(f"{p}: unknown suffix {suffix} (did you mean {close[0]}?); {formats}")


def _sniff(path: str) -> Optional[str]:
    """The format of the file at ``path`` by its first bytes, None when
    they say nothing; :class:`UnsupportedError` for kinds fastckpt does not
    read."""
    try:
        with open_input(path) as f:
            head = f.read(16)
            if head.startswith(b"PK\x03\x04"):
                f.seek(0)
                with zipfile.ZipFile(f) as z:
                    members = z.namelist()
                if any(m.endswith("data.pkl") for m in members):
                    return "torch"
                if members and all(m.endswith(".npy") for m in members):
                    return "npz"
                if "config.json" in members or any(m.endswith(".h5") for m in members):
                    raise UnsupportedError(f"{path} is a Keras archive (.keras), which fastckpt does not read: "
                                           "save the model's weights with fastckpt.keras or as a TensorFlow "
                                           "checkpoint (tf.train.Checkpoint)")
                raise UnsupportedError(f"{path} is a zip archive of neither a PyTorch file nor an .npz")
    except (OSError, zipfile.BadZipFile):
        return None
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        raise UnsupportedError(f"{path} is an HDF5 file (Keras 2 .h5 weights?), which fastckpt does not read")
    if head[:2] == b"\x80\x02" or head[:1] == b"\x80" and head[1:2] in (b"\x03", b"\x04", b"\x05"):
        return "torch"  # a pickle: PyTorch's legacy (non-zip) file format
    if len(head) > 8 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < (100 << 20):
        return "safetensors"
    return None


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
