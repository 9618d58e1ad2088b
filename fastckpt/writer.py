"""Writing a bundle: user state → plan (names, dtypes, shards, offsets) →
parallel C writes → index → commit (renames, index last)."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core
from .dtypes import DT_STRING, dtype_enum, native_enums
from .errors import CheckpointError, InvalidArgumentError
from .fsutil import (check_name_fits, default_threads, ensure_directory, fsync_all, fsync_dir, gc_paused,
                     io_error)
from .locking import create_locked_temp, release_lock
from .naming import PathLike, checkpoint_files, data_filename, index_filename

__all__ = ["write_bundle", "TensorPlan", "plan_bundle", "StagedBundle", "stage_bundle", "install_bundle",
           "install_plain", "STAGE_PREFIX"]

Name = Union[str, bytes]


class TensorPlan:
    """Where one tensor goes: its key, dtype enum, shape, payload (a
    C-contiguous array or bytes), shard and offset. ``crc`` is preset
    (unmasked) for string tensors, whose entry CRC is not the payload's."""

    __slots__ = ("name", "key", "dtype", "shape", "payload", "size", "crc", "shard", "offset", "source")

    def __init__(self, name: str, key: bytes, dtype: int, shape: Tuple[int, ...], payload: Any,
                 size: int, crc: Optional[int] = None, source: Optional[np.ndarray] = None) -> None:
        self.name, self.key, self.dtype, self.shape = name, key, dtype, shape
        self.payload, self.size, self.crc = payload, size, crc
        self.source = source  # set (payload None) when the array must be converted in the staging pool
        self.shard = 0
        self.offset = 0


def _key_of(name: Name) -> Tuple[str, bytes]:
    if isinstance(name, bytes):
        key, text = name, name.decode("utf-8", "surrogateescape")
    elif isinstance(name, str):
        text = name
        try:
            key = name.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError as e:
            raise InvalidArgumentError(f"tensor name {name!r} is not valid text: {e}") from None
    else:
        raise InvalidArgumentError(f"tensor names must be str, got {type(name).__name__}: {name!r}")
    if not key:
        raise InvalidArgumentError("the empty tensor name is reserved for the bundle header")
    if key[0] == 0:
        raise InvalidArgumentError(f"tensor name {text!r} starts with a NUL byte (reserved for slices)")
    return text, key


def _string_payload(name: str, arr: np.ndarray) -> Tuple[bytes, int]:
    items: List[bytes] = []
    for x in arr.reshape(-1, order="C").tolist() if arr.ndim else [arr.item()]:
        if isinstance(x, bytes):
            items.append(x)
        elif isinstance(x, str):
            items.append(x.encode("utf-8", "surrogateescape"))
        else:
            raise InvalidArgumentError(
                f"tensor {name!r}: string tensors hold bytes or str, found {type(x).__name__}"
            )
    return _core.encode_strings(items)


def _as_array(name: str, value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value)
    except Exception as e:
        raise InvalidArgumentError(f"tensor {name!r}: cannot be converted to an array: {e}") from e


_FAST_ENUMS = native_enums() if np.little_endian else {}


def _plan_tensor(name: Name, value: Any) -> TensorPlan:
    # Fast path: a str name and a C-contiguous little-endian numeric array,
    # written as it is (no copy, no view).
    if type(name) is str and type(value) is np.ndarray and name and name[0] != "\x00":
        enum = _FAST_ENUMS.get(value.dtype)
        if enum is not None and value.flags.c_contiguous:
            try:
                key = name.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                pass  # the slow path explains
            else:
                return TensorPlan(name, key, enum, value.shape, value, value.nbytes)
    text, key = _key_of(name)
    arr = _as_array(text, value)
    shape = tuple(int(d) for d in arr.shape)
    if arr.dtype.kind in "SUO":
        payload, crc = _string_payload(text, arr)
        return TensorPlan(text, key, DT_STRING, shape, payload, len(payload), crc)
    try:
        enum = dtype_enum(arr.dtype)
    except InvalidArgumentError as e:
        raise InvalidArgumentError(f"tensor {text!r}: {e}") from None
    big = arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not _LITTLE)
    if big or not arr.flags.c_contiguous:
        return TensorPlan(text, key, enum, shape, None, arr.nbytes, source=arr)
    return TensorPlan(text, key, enum, shape, arr, arr.nbytes)


STAGING_BYTES = 64 << 20


def c_order_chunks(arr: np.ndarray, max_bytes: int) -> Iterator[np.ndarray]:
    """C-contiguous little-endian pieces of ``arr`` of at most ``max_bytes``
    (or one row's worth) whose bytes, in order, are ``arr`` in C order."""
    le = arr.dtype.newbyteorder("<")
    if arr.nbytes <= max_bytes or arr.ndim == 0:
        yield np.ascontiguousarray(arr, dtype=le)
        return
    row = arr.nbytes // arr.shape[0]
    if row <= max_bytes:
        step = max(1, max_bytes // max(row, 1))
        for i in range(0, arr.shape[0], step):
            yield np.ascontiguousarray(arr[i:i + step], dtype=le)
    else:
        for i in range(arr.shape[0]):
            yield from c_order_chunks(arr[i], max_bytes)


_LITTLE = np.little_endian


def plan_bundle(
    tensors: Mapping[Any, Any], num_shards: int = 1, alignment: int = 1
) -> List[TensorPlan]:
    """Turns ``tensors`` into a write plan, in the mapping's order.

    Tensors are cut into ``num_shards`` contiguous runs of about equal byte
    size; within a shard each tensor starts where the previous one ended,
    padded up to a multiple of ``alignment`` (as TensorFlow's
    ``data_alignment`` does).
    """
    if not isinstance(tensors, Mapping):
        raise InvalidArgumentError(
            f"tensors must be a mapping of name to array, got {type(tensors).__name__}"
        )
    with gc_paused():
        plans = [_plan_tensor(name, value) for name, value in tensors.items()]
    seen: Dict[bytes, str] = {}
    for p in plans:
        if p.key in seen:
            raise InvalidArgumentError(f"duplicate tensor name {p.name!r}")
        seen[p.key] = p.name
    total = sum(p.size for p in plans) or 1
    ends = [0] * num_shards
    cum = 0
    for p in plans:
        p.shard = min(num_shards - 1, (2 * cum + p.size) * num_shards // (2 * total))
        cum += p.size
        p.offset = ends[p.shard]
        ends[p.shard] = -(-(p.offset + p.size) // alignment) * alignment
    return plans


def _check_options(num_shards: int, alignment: int, threads: Optional[int]) -> int:
    if not isinstance(num_shards, int) or isinstance(num_shards, bool) or not 1 <= num_shards <= 99999:
        raise InvalidArgumentError(f"num_shards must be an int in 1..99999, got {num_shards!r}")
    if not isinstance(alignment, int) or isinstance(alignment, bool) or not 1 <= alignment <= 1 << 30:
        raise InvalidArgumentError(f"alignment must be an int in 1..2**30, got {alignment!r}")
    if threads is None:
        return default_threads()
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise InvalidArgumentError(f"threads must be a positive int, got {threads!r}")
    return threads


def build_index(plans: Sequence[TensorPlan], num_shards: int) -> bytes:
    """The .index bytes for written plans (their ``crc`` filled in)."""
    order = sorted(plans, key=lambda p: p.key)
    return _core.build_index(
        num_shards,
        [p.key for p in order],
        [p.dtype for p in order],
        [p.shape for p in order],
        [p.shard for p in order],
        [p.offset for p in order],
        [p.size for p in order],
        [_core.mask_crc(p.crc or 0) for p in order],
    )



# ---- staging: a complete bundle under a private name --------------------------------

STAGE_PREFIX = ".fcsave-"


@dataclass
class StagedBundle:
    """A complete bundle written under a private prefix
    (``<dir>/.fcsave-<16 hex>``) whose files its writer keeps locked (so no
    cleaner takes them for leftovers) until :meth:`close`."""

    prefix: str
    num_shards: int
    durable: bool
    fds: List[int] = field(default_factory=list)

    def data_files(self) -> List[str]:
        """The data files' paths."""
        return [data_filename(self.prefix, s, self.num_shards) for s in range(self.num_shards)]

    def files(self) -> List[str]:
        """Every file of the bundle, the index first."""
        return [index_filename(self.prefix)] + self.data_files()

    def remove(self) -> None:
        """Delete whatever is left of the staged files (index first)."""
        for path in self.files():
            with contextlib.suppress(OSError):
                os.unlink(path)

    def close(self) -> None:
        """Release the locks (the files themselves stay)."""
        fds, self.fds = self.fds, []
        for fd in fds:
            with contextlib.suppress(OSError):
                release_lock(fd)


def stage_bundle(directory: str, tensors: Mapping[Any, Any], *, alignment: int = 1, num_shards: int = 1,
                 threads: Optional[int] = None, durable: bool = False,
                 staging_bytes: int = 64 << 20) -> StagedBundle:
    """Write ``tensors`` as a complete bundle under a new private prefix in
    ``directory``: data files, fsync'd when ``durable``, then the index.
    On any failure nothing is left behind and the error is raised
    (:class:`CheckpointIOError` for the system's)."""
    nthreads = _check_options(num_shards, alignment, threads)
    if not isinstance(staging_bytes, int) or isinstance(staging_bytes, bool) or staging_bytes < 1:
        raise InvalidArgumentError(f"staging_bytes must be a positive int, got {staging_bytes!r}")
    staged = StagedBundle(os.path.join(directory, STAGE_PREFIX + secrets.token_hex(8)), num_shards, durable)
    try:
        index = _write_data(tensors, staged, alignment, nthreads, staging_bytes)
        _write_all(_create_locked(index_filename(staged.prefix), staged), index, durable)
        if durable:
            fsync_dir(directory)
    except BaseException as e:
        staged.remove()
        staged.close()
        if isinstance(e, OSError) and not isinstance(e, CheckpointError):
            raise io_error(e, f"writing a checkpoint in {directory!r}") from e
        raise
    return staged


def _create_locked(path: str, staged: StagedBundle) -> int:
    _, fd = create_locked_temp(lambda: path)
    staged.fds.append(fd)
    return fd


def _write_all(fd: int, data: bytes, durable: bool) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    if durable:
        os.fsync(fd)


def _write_direct(plans: List[TensorPlan], fds: List[int], finals: List[str], nthreads: int,
                  durable: bool) -> None:
    """One parallel write of every payload that is ready as it is."""
    crcs = _core.io_run([fds[p.shard] for p in plans], [p.offset for p in plans],
                        [p.payload for p in plans], [], True, nthreads,
                        lambda i: f"tensor {plans[i].name!r} in {finals[plans[i].shard]}",
                        uncached=durable)
    assert crcs is not None
    for p, crc in zip(plans, crcs):
        if p.crc is None:
            p.crc = crc


def _write_staged(plans: List[TensorPlan], fds: List[int], finals: List[str], nthreads: int,
                  durable: bool, staging_bytes: int) -> None:
    """Arrays that need converting (non-contiguous, big-endian) go through a
    staging pool of at most ``staging_bytes``: converted piece by piece,
    written in parallel batches, their CRCs combined per tensor."""
    batch: List[Tuple[TensorPlan, int, np.ndarray]] = []
    held = 0

    def flush() -> None:
        nonlocal held
        crcs = _core.io_run([fds[p.shard] for p, _, _ in batch], [p.offset + at for p, at, _ in batch],
                            [c for _, _, c in batch], [], True, nthreads,
                            lambda i: f"tensor {batch[i][0].name!r} in {finals[batch[i][0].shard]}",
                            uncached=durable)
        assert crcs is not None
        for (p, at, chunk), crc in zip(batch, crcs):
            p.crc = crc if at == 0 else _core.crc32c_combine(p.crc or 0, crc, chunk.nbytes)
        batch.clear()
        held = 0

    for p in plans:
        assert p.source is not None
        at = 0
        if p.size == 0:
            p.crc = 0
        for chunk in c_order_chunks(p.source, staging_bytes) if p.size else ():
            if held and held + chunk.nbytes > staging_bytes:
                flush()
            batch.append((p, at, chunk))
            at += chunk.nbytes
            held += chunk.nbytes
    if batch:
        flush()


def _write_data(tensors: Mapping[Any, Any], staged: StagedBundle, alignment: int, nthreads: int,
                staging_bytes: int) -> bytes:
    """Create the staged data files, write every tensor, fsync if durable;
    returns the index bytes. A plain dict of C-contiguous little-endian
    numeric arrays is planned and written in C (the per-tensor cost of
    100,000 small tensors); anything else takes the general path."""
    num_shards, durable = staged.num_shards, staged.durable
    fast = None
    if type(tensors) is dict and _FAST_ENUMS:
        with gc_paused():
            fast = _core.plan_write_fast(tensors, _FAST_ENUMS, num_shards, alignment)
    plans: List[TensorPlan] = []
    if fast is not None:
        sizes = list(fast.shard_sizes)
    else:
        plans = plan_bundle(tensors, num_shards, alignment)
        sizes = [0] * num_shards
        for p in plans:
            sizes[p.shard] = max(sizes[p.shard], -(-(p.offset + p.size) // alignment) * alignment)
    finals = staged.data_files()
    fds = [_create_locked(final, staged) for final in finals]
    for fd, size in zip(fds, sizes):
        if size:
            os.ftruncate(fd, size)
    if fast is not None:
        fast.write(fds, nthreads, durable, finals)
    else:
        _write_direct([p for p in plans if p.payload is not None], fds, finals, nthreads, durable)
        staged_plans = [p for p in plans if p.payload is None]
        if staged_plans:
            _write_staged(staged_plans, fds, finals, nthreads, durable, staging_bytes)
    if durable:
        fsync_all(fds)
    return fast.index(num_shards) if fast is not None else build_index(plans, num_shards)


# ---- installing a staged bundle under its final name --------------------------------

_NO_LINK = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS, errno.EXDEV}


def _place(src: str, dst: str, link: bool) -> None:
    """Make ``dst`` name ``src``'s contents: by rename, or (``link``) by a hard
    link (a copy where links are not supported) renamed over ``dst``, so
    ``src`` stays complete meanwhile."""
    if not link:
        os.replace(src, dst)
        return
    tmp = os.path.join(os.path.dirname(dst), ".fclink-" + secrets.token_hex(8))
    try:
        try:
            os.link(src, tmp)
        except OSError as e:
            if e.errno not in _NO_LINK:
                raise
            shutil.copyfile(src, tmp, follow_symlinks=False)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def final_files(prefix: str, num_shards: int) -> List[str]:
    """``prefix``'s data files for ``num_shards`` shards, then its index."""
    return [data_filename(prefix, s, num_shards) for s in range(num_shards)] + [index_filename(prefix)]


def install_bundle(staged: StagedBundle, prefix: str, *, link: bool) -> None:
    """Give the staged bundle the name ``prefix``: an existing checkpoint of
    that name is hidden first (its index unlinked, so no reader pairs its
    index with new data), then the data files, then the index, are put in
    place; data files of an earlier shard count become litter and go.
    ``link=True`` keeps the staged files complete meanwhile (a state file
    may list them)."""
    index = index_filename(prefix)
    if os.path.lexists(index):
        os.unlink(index)
    finals = final_files(prefix, staged.num_shards)
    for src, dst in zip(staged.data_files() + [index_filename(staged.prefix)], finals):
        _place(src, dst, link)
    for stale in set(checkpoint_files(prefix)) - set(finals):
        if not stale.endswith(".meta"):
            with contextlib.suppress(OSError):
                os.unlink(stale)
    if staged.durable:
        fsync_dir(os.path.dirname(prefix) or ".")


def install_plain(staged: StagedBundle, prefix: str) -> None:
    """Rename the staged bundle into place as ``prefix`` (no state file);
    on failure nothing of it is left (data without an index is litter)."""
    try:
        install_bundle(staged, prefix, link=False)
    except BaseException as e:
        if not os.path.lexists(index_filename(prefix)):
            for f in final_files(prefix, staged.num_shards)[:-1]:
                with contextlib.suppress(OSError):
                    os.unlink(f)
        if isinstance(e, OSError):
            raise io_error(e, f"writing checkpoint {prefix!r}") from e
        raise
    finally:
        staged.remove()
        staged.close()


def check_prefix(prefix: Any, num_shards: int = 1) -> str:
    """``prefix`` as a str path, checked: non-empty, not a directory path,
    and its files' names fit the file system."""
    p = os.fspath(prefix) if prefix is not None else None
    if not isinstance(p, str) or not p or p.endswith(os.sep) or os.path.basename(p) in (".", ".."):
        raise InvalidArgumentError(f"prefix must be a non-empty file path prefix, got {prefix!r}")
    for name in final_files(p, num_shards if isinstance(num_shards, int) and num_shards > 0 else 1):
        check_name_fits(name)
    return p


def write_bundle(
    prefix: PathLike,
    tensors: Mapping[Any, Any],
    *,
    alignment: int = 1,
    num_shards: int = 1,
    threads: Optional[int] = None,
    durable: bool = False,
    staging_bytes: int = 64 << 20,
) -> str:
    """Write ``tensors`` (name → array) as the bundle ``prefix``.

    Produces ``prefix.index`` and ``prefix.data-SSSSS-of-NNNNN``, readable by
    TensorFlow. With ``alignment=1`` and one shard the bytes are identical to
    ``tf.raw_ops.SaveV2`` for the same tensors in the same order. The bundle
    is written completely under a private name in the same directory, then
    renamed into place, index last, so ``prefix.index`` only ever names
    complete data. With ``durable=True`` every file and the directory are
    fsync'd first. Replacing an existing bundle this way is not atomic (a
    crash in the renames can leave neither); :class:`Saver` and
    :class:`CheckpointManager` replace checkpoints atomically.

    No copy of the state is made: C-contiguous little-endian arrays are
    written from their own memory by ``threads`` threads (default: all
    cores). Arrays that need converting (non-contiguous, Fortran-order,
    big-endian) pass through a staging pool of at most ``staging_bytes``
    (64 MiB); string tensors are encoded whole.

    Returns the prefix. Raises :class:`InvalidArgumentError` for bad names,
    dtypes or options and :class:`CheckpointIOError` (an ``OSError``) when
    the disk fails; in both cases no partial file is left behind.
    """
    p = check_prefix(prefix, num_shards)
    directory = os.path.dirname(p)
    ensure_directory(directory)
    staged = stage_bundle(directory or ".", tensors, alignment=alignment, num_shards=num_shards,
                          threads=threads, durable=durable, staging_bytes=staging_bytes)
    install_plain(staged, p)
    return p
