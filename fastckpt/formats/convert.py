"""``fastckpt convert SRC DST``: any supported checkpoint to any other --
TensorFlow bundles (plain, sharded, compressed), safetensors (single or
sharded), PyTorch state-dict files and numpy ``.npz`` -- tensor by tensor.

Memory: tensors stored raw (plain bundles, safetensors, stored npz members,
zip-format PyTorch files) are read through memory maps, which cost page
cache the kernel reclaims, not the process's memory; tensors that must be
decoded (compressed bundles, deflated npz, partitioned or big-endian
tensors, a ``dtype`` cast) are decoded one at a time. A conversion's own
memory is thus about the largest decoded tensor plus a 64 MiB staging
pool. Destinations written whole at the end (PyTorch files, compressed
bundles) first get decoded tensors into a temporary plain bundle beside
the destination (a locked ``.fcsave-`` bundle: ``fastckpt gc`` removes it
if the conversion is killed), so the bound holds for them too (at the cost
of that disk space for the duration)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Union

import numpy as np

from fastckpt.errors import InvalidArgumentError
from fastckpt.bundle.lazy import LazyTensor
from fastckpt.formats.registry import open_source, write_as
from fastckpt.formats.select import select
from fastckpt.formats.source import Source, checked_path, detect_format
from fastckpt.storage.fsutil import ensure_directory
from fastckpt.bundle.naming import PathLike, checkpoint_files, storage_path
from fastckpt.bundle.writer import stage_bundle
from fastckpt.formats.bundle import bundle_tensors
from fastckpt.storage import fs
from fastckpt.storage.s3 import using_storage

__all__ = ["convert", "convert_files", "cast_floats", "each_once"]

# Decoded bytes above which a whole-file destination goes through a temporary plain bundle.
SCRATCH_ABOVE = 256 << 20


def convert(src: PathLike, dst: PathLike, *, src_format: Optional[str] = None, dst_format: Optional[str] = None,
            num_shards: int = 1, compression: Optional[str] = None, compression_level: int = 1,
            dtype: Optional[str] = None, durable: bool = False, threads: Optional[int] = None,
            verify: bool = True, storage_options: Optional[Mapping[str, Any]] = None,
            only: Union[None, str, Sequence[str]] = None, exclude: Union[None, str, Sequence[str]] = None,
            strip_prefix: Optional[str] = None) -> str:
    """Convert checkpoint ``src`` to ``dst``; formats come from the paths
    (``.safetensors`` / ``.safetensors.index.json``, ``.pt``/``.pth``/``.bin``,
    ``.npz``, anything else a TensorFlow prefix; a source directory: its
    latest checkpoint or its safetensors) or ``src_format``/``dst_format``
    (``tf``, ``safetensors``, ``torch``, ``npz``).

    Lossless: values and dtypes are kept bit for bit, unless ``dtype``
    (``"float16"``, ``"bfloat16"``, ...) asks for floating-point tensors to
    be cast. ``num_shards`` reshards (bundles, safetensors);
    ``compression="zstd"`` compresses a bundle, ``None`` writes one stock
    TensorFlow reads. Every checksum of a bundle source is checked. A format
    that holds only tensors (safetensors, npz) refuses a source whose other
    values it would lose; TensorFlow 2's object graph is left out of them.

    ``only`` and ``exclude`` (a name or pattern, or a list of them) choose
    tensors, ``strip_prefix`` renames them: ``only="model",
    strip_prefix="model/"`` exports a training checkpoint's model weights
    (:func:`fastckpt.formats.select.select`). Returns ``dst``
    (:func:`convert_files`: the files written)."""
    convert_files(src, dst, src_format=src_format, dst_format=dst_format, num_shards=num_shards,
                  compression=compression, compression_level=compression_level, dtype=dtype, durable=durable,
                  threads=threads, verify=verify, storage_options=storage_options, only=only, exclude=exclude,
                  strip_prefix=strip_prefix)
    return storage_path(dst, "dst")


def convert_files(src: PathLike, dst: PathLike, *, src_format: Optional[str] = None, dst_format: Optional[str] = None,
                  num_shards: int = 1, compression: Optional[str] = None, compression_level: int = 1,
                  dtype: Optional[str] = None, durable: bool = False, threads: Optional[int] = None,
                  verify: bool = True, storage_options: Optional[Mapping[str, Any]] = None,
                  only: Union[None, str, Sequence[str]] = None, exclude: Union[None, str, Sequence[str]] = None,
                  strip_prefix: Optional[str] = None) -> List[str]:
    """:func:`convert`, returning the paths of the files it wrote (a
    bundle's index and data files; a sharded safetensors' shards and index)."""
    with using_storage(storage_options):
        s, d = checked_path(src, "src"), checked_path(dst, "dst")
        fmt_out = dst_format or detect_format(d, existing=False)
        with open_source(s, src_format, verify=verify) as opened:
            source = select(opened, only, exclude, strip_prefix)
            _refuse_same(source, d, fmt_out)
            if dtype is not None:
                source.tensors = cast_floats(source.tensors, dtype)
            with _bounded(source, fmt_out, compression, d, threads) as ready:
                return write_as(fmt_out, d, ready, num_shards=num_shards, compression=compression,
                                compression_level=compression_level, durable=durable, threads=threads)


def cast_floats(tensors: Dict[str, LazyTensor], dtype: str) -> Dict[str, LazyTensor]:
    """Floating-point tensors cast to ``dtype`` (read when written); others as they are."""
    import ml_dtypes  # (only here: a second to import)
    try:
        target = np.dtype(getattr(ml_dtypes, dtype, None) or dtype)
    except TypeError:
        raise InvalidArgumentError(f"unknown dtype {dtype!r}") from None
    if not _is_float(target):
        raise InvalidArgumentError(f"--dtype casts floating-point tensors: {dtype!r} is not a floating-point dtype")
    return each_once(tensors, lambda t: _cast(t, target) if _is_float(t.dtype) and t.dtype != target else t)


def each_once(tensors: Dict[str, LazyTensor], change: Callable[[LazyTensor], LazyTensor]) -> Dict[str, LazyTensor]:
    """``change`` applied to every tensor, once per tensor object: tied names
    (one :class:`LazyTensor` under two names) stay one."""
    made: Dict[int, LazyTensor] = {}
    out: Dict[str, LazyTensor] = {}
    for name, t in tensors.items():
        if id(t) not in made:
            made[id(t)] = change(t)
        out[name] = made[id(t)]
    return out


def _cast(t: LazyTensor, target: np.dtype) -> LazyTensor:
    def load() -> np.ndarray:
        return t.copied().astype(target)
    return LazyTensor(target, t.shape, load, what=t.what)


def _is_float(dt: np.dtype) -> bool:
    return dt.kind == "f" or (dt.kind == "V" and "float" in dt.name)


def _refuse_same(source: Source, dst: str, fmt: str) -> None:
    """Writing over the checkpoint being read would destroy it mid-read."""
    theirs = {fs.real_path(p) for p in _files_of_source(source)}
    ours = {fs.real_path(p) for p in ([dst] if fmt != "tf" else checkpoint_files(dst) + [dst + ".index"])}
    if theirs & ours:
        raise InvalidArgumentError(f"{dst} is the checkpoint being converted: write to another path")


def _files_of_source(source: Source) -> List[str]:
    if source.format == "tf":
        return checkpoint_files(source.path) + [source.path + ".index"]
    if fs.is_dir(source.path):
        return [os.path.join(source.path, n) for n in fs.listdir(source.path)]
    return [source.path]


def _owned(t: LazyTensor) -> LazyTensor:
    """``t`` read into memory of its own when loaded (see ``LazyTensor.copied``)."""
    return LazyTensor(t.dtype, t.shape, t.copied, what=t.what, stored=t.stored)


@contextlib.contextmanager
def _bounded(source: Source, fmt: str, compression: Optional[str], dst: str,
             threads: Optional[int]) -> Iterator[Source]:
    """``source``, or -- for a destination written whole from memory whose
    decoded tensors would exceed :data:`SCRATCH_ABOVE` -- the same tensors
    decoded into a temporary plain bundle beside ``dst`` and mapped back."""
    if fmt == "torch":  # torch.save reads every value itself: each in memory of its own, or a private scratch
        if sum(t.nbytes for t in source.tensors.values()) <= SCRATCH_ABOVE:
            yield dataclasses.replace(source, tensors=each_once(source.tensors, _owned))
            return
    elif compression is None or fmt != "tf" or \
            sum(t.nbytes for t in source.tensors.values() if not t.mapped) <= SCRATCH_ABOVE:
        yield source  # written by the C core, whose reads of mapped values are guarded
        return

    # A staged bundle (.fcsave-<hex>), locked while in use: killed, it is a
    # leftover that `fastckpt gc` (or the next save there) removes.
    directory = os.path.dirname(os.path.abspath(dst))
    ensure_directory(directory)
    scratch = stage_bundle(directory, bundle_tensors(source), threads=threads)
    try:
        with open_source(scratch.prefix, "tf") as plain:
            yield plain
    finally:
        scratch.remove()
        scratch.close()
