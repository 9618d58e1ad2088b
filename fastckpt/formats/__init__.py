"""The checkpoint formats users have, behind one shape: a :class:`Source`
(tensor name → :class:`~fastckpt.bundle.lazy.LazyTensor`, plus the nesting and
metadata when the format keeps them) read from a path, and a writer per
format that takes tensors one at a time.

Formats: ``tf`` (TensorFlow bundles: plain, sharded, compressed),
``safetensors`` (one file, or shards with ``model.safetensors.index.json``),
``torch`` (``.pt``/``.pth``/``.bin`` state dicts, read with
``weights_only=True``), ``npz`` (numpy). Raw tensors are read through memory
maps; a writer holds at most one decoded tensor (plus a 64 MiB staging pool).
"""

from fastckpt.bundle.lazy import LazyTensor
from fastckpt.formats.registry import open_source, write_as
from fastckpt.formats.source import FORMATS, Source, checked_path, detect_format, open_input

__all__ = ["Source", "FORMATS", "detect_format", "open_source", "write_as", "LazyTensor", "open_input", "checked_path"]
