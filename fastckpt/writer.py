"""Writing a bundle: user state → plan (names, dtypes, shards, offsets) →
parallel C writes → index → commit (renames, index last)."""

from __future__ import annotations

import contextlib
import gc
import os
import secrets
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core
from .dtypes import DT_STRING, dtype_enum, native_enums
from .errors import CheckpointError, CheckpointIOError, InvalidArgumentError
from .locking import create_locked_temp
from .naming import PathLike, data_filename, index_filename

__all__ = ["write_bundle", "default_threads", "TensorPlan", "plan_bundle"]

Name = Union[str, bytes]


def default_threads() -> int:
    """The number of cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


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
    with _gc_paused():
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


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic GC passes while building many small objects (they hold no
    cycles); each pass would walk every one of them again."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


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


def fsync_all(fds: Sequence[int]) -> None:
    """fsync several files at once (each flush waits on the disk, not the CPU)."""
    if len(fds) == 1:
        os.fsync(fds[0])
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(len(fds), 16)) as pool:
        list(pool.map(os.fsync, fds))


def fsync_dir(path: str) -> None:
    """fsync a directory so renames and creations in it are durable."""
    fd = os.open(path or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_name(path: str) -> str:
    return f"{path}.tempstate{secrets.randbits(63)}"


def _io_error(e: OSError, what: str) -> CheckpointIOError:
    if isinstance(e, CheckpointIOError):
        return e
    return CheckpointIOError(e.errno or 0, f"{what}: {e.strerror or e}", e.filename)


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


def write_bundle(
    prefix: PathLike,
    tensors: Mapping[Any, Any],
    *,
    alignment: int = 1,
    num_shards: int = 1,
    threads: Optional[int] = None,
    durable: bool = False,
    staging_bytes: int = STAGING_BYTES,
) -> str:
    """Write ``tensors`` (name → array) as the bundle ``prefix``.

    Produces ``prefix.index`` and ``prefix.data-SSSSS-of-NNNNN``, readable by
    TensorFlow. With ``alignment=1`` and one shard the bytes are identical to
    ``tf.raw_ops.SaveV2`` for the same tensors in the same order. Data files
    and the index are written under temporary names and renamed into place,
    index last, so ``prefix.index`` only ever names complete data. With
    ``durable=True`` every file and the directory are fsync'd first.

    No copy of the state is made: C-contiguous little-endian arrays are
    written from their own memory by ``threads`` threads (default: all
    cores). Arrays that need converting (non-contiguous, Fortran-order,
    big-endian) pass through a staging pool of at most ``staging_bytes``
    (64 MiB); string tensors are encoded whole.

    Returns the prefix. Raises :class:`InvalidArgumentError` for bad names,
    dtypes or options and :class:`CheckpointIOError` (an ``OSError``) when
    the disk fails; in both cases no partial file is left behind.
    """
    prefix = os.fspath(prefix)
    if not isinstance(prefix, str) or not prefix or prefix.endswith(os.sep):
        raise InvalidArgumentError(f"prefix must be a non-empty file path prefix, got {prefix!r}")
    nthreads = _check_options(num_shards, alignment, threads)
    if not isinstance(staging_bytes, int) or isinstance(staging_bytes, bool) or staging_bytes < 1:
        raise InvalidArgumentError(f"staging_bytes must be a positive int, got {staging_bytes!r}")
    directory = os.path.dirname(prefix)
    try:
        if directory:
            os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise _io_error(e, f"cannot create directory {directory!r}") from e
    finals = [data_filename(prefix, s, num_shards) for s in range(num_shards)]
    temps: List[str] = []
    open_fds: List[int] = []  # temporaries stay open and flock-ed until renamed
    try:
        index = _write_data(tensors, finals, temps, open_fds, num_shards, alignment, nthreads, durable,
                            staging_bytes)
        _write_all(_create_temp(index_filename(prefix), temps, open_fds), index, durable)
        _commit(prefix, finals, temps, durable)
    except BaseException as e:
        for t in temps:
            try:
                os.unlink(t)
            except OSError:
                pass
        if isinstance(e, OSError) and not isinstance(e, CheckpointError):
            raise _io_error(e, f"writing checkpoint {prefix!r}") from e
        raise
    finally:
        for fd in open_fds:
            os.close(fd)
    return prefix


def _create_temp(final: str, temps: List[str], open_fds: List[int]) -> int:
    """Create the temporary for ``final``, locked against leftover cleaning."""
    path, fd = create_locked_temp(lambda: _temp_name(final))
    temps.append(path)
    open_fds.append(fd)
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


def _write_data(tensors: Mapping[Any, Any], finals: List[str], temps: List[str], open_fds: List[int],
                num_shards: int, alignment: int, nthreads: int, durable: bool, staging_bytes: int) -> bytes:
    """Create the data files under temporary names, write every tensor,
    fsync if durable; returns the index bytes. A plain dict of C-contiguous
    little-endian numeric arrays is planned and written in C (the per-tensor
    cost of 100,000 small tensors); anything else takes the general path."""
    fast = None
    if type(tensors) is dict and _FAST_ENUMS:
        with _gc_paused():
            fast = _core.plan_write_fast(tensors, _FAST_ENUMS, num_shards, alignment)
    plans: List[TensorPlan] = []
    if fast is not None:
        sizes = list(fast.shard_sizes)
    else:
        plans = plan_bundle(tensors, num_shards, alignment)
        sizes = [0] * num_shards
        for p in plans:
            sizes[p.shard] = max(sizes[p.shard], -(-(p.offset + p.size) // alignment) * alignment)
    fds = [_create_temp(final, temps, open_fds) for final in finals]
    for fd, size in zip(fds, sizes):
        if size:
            os.ftruncate(fd, size)
    if fast is not None:
        fast.write(fds, nthreads, durable, finals)
    else:
        _write_direct([p for p in plans if p.payload is not None], fds, finals, nthreads, durable)
        staged = [p for p in plans if p.payload is None]
        if staged:
            _write_staged(staged, fds, finals, nthreads, durable, staging_bytes)
    if durable:
        fsync_all(fds)
    return fast.index(num_shards) if fast is not None else build_index(plans, num_shards)


def _commit(prefix: str, finals: List[str], temps: List[str], durable: bool) -> None:
    """Rename data files, then the index, into place (temps: data..., index).

    Each rename replaces its entry in ``temps`` by the final name, so if a
    later step fails the caller's cleanup removes what was already renamed:
    without the index those files are no checkpoint, only litter."""
    index = index_filename(prefix)
    if os.path.lexists(index):
        # Hide the checkpoint being replaced before its data changes under it.
        os.unlink(index)
    for i, final in enumerate(finals):
        os.replace(temps[i], final)
        temps[i] = final
    os.replace(temps[-1], index)
    del temps[:]
    if durable:
        fsync_dir(os.path.dirname(prefix))
