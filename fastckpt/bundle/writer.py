"""Writing a bundle: user state → the write plan (names, dtypes, shapes,
shards, offsets; made in C) → parallel C writes of a complete bundle under
a private name → installed under its final name (renames, or hard links
while a state file lists the private name)."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np

from fastckpt import _core
from fastckpt.bundle.dtypes import DT_STRING, dtype_enum, native_enums, refresh
from fastckpt.errors import CheckpointError, InvalidArgumentError, UnsupportedError
from fastckpt.bundle.frameworks import to_numpy
from fastckpt.bundle.lazy import LazyTensor
from fastckpt.storage.fsutil import (check_name_fits, default_threads, ensure_directory, fsync_all, fsync_dir, gc_paused,
                     io_error)
from fastckpt.storage.locking import create_locked_temp, release_lock
from fastckpt.bundle.chunks import STAGING_BYTES, c_order_chunks
from fastckpt.bundle.naming import PathLike, checkpoint_files, data_filename, index_filename, is_url, storage_path
from fastckpt.bundle.upload import upload_compressed, upload_data
from fastckpt.bundle.slices import SliceKey
from fastckpt.storage import fs, local
from fastckpt.storage.s3 import using_storage

__all__ = ["write_bundle", "plan_bundle", "upload_plan", "STAGING_BYTES", "c_order_chunks", "StagedBundle", "stage_bundle", "install_bundle",
           "install_plain", "write_part", "write_staged_index", "removed_on_failure", "write_converted",
           "new_stage_prefix", "compression_setting", "check_options", "STAGE_PREFIX", "MAX_SHARDS"]

Name = Union[str, bytes]


def _key_of(name: Name) -> Tuple[str, bytes]:
    if isinstance(name, SliceKey):  # a process's part of a partitioned tensor
        return repr(bytes(name)), bytes(name)
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
    value = to_numpy(value)  # PyTorch (bfloat16, float8 too), JAX, TensorFlow tensors
    try:
        return np.asarray(value)
    except Exception as e:
        raise InvalidArgumentError(f"tensor {name!r}: cannot be converted to an array: {e}") from e


_FAST_ENUMS = native_enums() if np.little_endian else {}  # (live: ml_dtypes' types added once it is imported)


Prepared = Tuple[bytes, str, int, Tuple[int, ...], Any, int, Optional[int], Any]  # source: array or LazyTensor


def _prepare(name: Any, value: Any) -> Prepared:
    """The plan's inputs for an item the C planner does not take as it is:
    ``(key, name, dtype enum, shape, payload, size, preset CRC, source)``.
    Strings are encoded here (their entry CRC is not the payload's); arrays
    that must be converted (non-contiguous, big-endian) have no payload but
    a ``source``, converted piecewise in the staging pool."""
    text, key = _key_of(name)
    if isinstance(value, LazyTensor):
        if value.dtype.kind not in "SUO":  # read when written, one at a time (through the staging pool)
            try:
                enum = dtype_enum(value.dtype)
            except InvalidArgumentError as e:
                raise InvalidArgumentError(f"tensor {text!r}: {e}") from None
            return key, text, enum, tuple(value.shape), None, value.nbytes, None, value
        value = value.array()
    arr = _as_array(text, value)
    shape = tuple(int(d) for d in arr.shape)
    if arr.dtype.kind in "SUO":
        payload, crc = _string_payload(text, arr)
        return key, text, DT_STRING, shape, payload, len(payload), crc, None
    try:
        enum = dtype_enum(arr.dtype)
    except InvalidArgumentError as e:
        raise InvalidArgumentError(f"tensor {text!r}: {e}") from None
    big = arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not _LITTLE)
    if big or not arr.flags.c_contiguous:
        return key, text, enum, shape, None, arr.nbytes, None, arr
    return key, text, enum, shape, arr, arr.nbytes, None, None


_LITTLE = np.little_endian


def plan_bundle(tensors: Mapping[Any, Any], num_shards: int = 1, alignment: int = 1) -> "_core.WritePlan":
    """The write plan of ``tensors``, in the mapping's order: every tensor's
    key, dtype, shape, shard and offset. Tensors are cut into
    ``num_shards`` contiguous runs of about equal byte size; within a shard
    each starts where the previous one ended, padded up to a multiple of
    ``alignment`` (as TensorFlow's ``data_alignment`` does). A tensor whose
    memory is the very memory of an earlier one (tied weights) is planned
    once and named twice in the index."""
    if not isinstance(tensors, Mapping):
        raise InvalidArgumentError(
            f"tensors must be a mapping of name to array, got {type(tensors).__name__}")
    refresh()  # an array of ml_dtypes' types exists only once it is imported: its types join the fast table
    with gc_paused():
        plan = _core.plan_write(tensors, _FAST_ENUMS, num_shards, alignment, _prepare)
        shared = plan.shared_payloads()
        first: Dict[int, int] = {}
        for i, source in plan.staged:  # one source object under two names (a tied tensor converted)
            j = first.setdefault(id(source), i)
            if j != i:
                shared.append((i, j))
        if not shared:
            return plan
        return _plan_once(tensors, plan, dict(shared), num_shards, alignment)


def _plan_once(tensors: Mapping[Any, Any], plan: "_core.WritePlan", alias_of: Dict[int, int], num_shards: int,
               alignment: int) -> "_core.WritePlan":
    """The plan of ``tensors`` where a tensor that is the very memory of an
    earlier one (``alias_of``: tensor number -> the earlier one's, from
    ``plan``) is written once: its name gets an index entry naming the
    same bytes (TensorFlow reads it as it reads any entry)."""
    kept = [i for i in range(len(plan)) if i not in alias_of]
    number = {old: new for new, old in enumerate(kept)}
    items = list(tensors.items())
    unique = {items[i][0]: items[i][1] for i in kept}
    once = _core.plan_write(unique, _FAST_ENUMS, num_shards, alignment, _prepare)
    once.extra = [(plan.key(i), number[j]) for i, j in alias_of.items()]
    return once


ZSTD_CHUNK = 1 << 20  # raw bytes per compressed chunk: a tensor of a few MiB keeps every thread busy


def plan_for(tensors: Mapping[Any, Any], num_shards: int, alignment: int, zstd_level: Optional[int]) -> "_core.WritePlan":
    """The plan a staged bundle of these options writes (compressed
    payloads are not aligned)."""
    check_options(num_shards, alignment, None)
    return plan_bundle(tensors, num_shards, alignment if zstd_level is None else 1)


def compression_setting(compression: Optional[str], level: Any = 1) -> Optional[int]:
    """The zstd level of ``compression="zstd"`` (None: payloads stored as
    they are), checked."""
    if compression is None or compression == "none":
        return None
    if compression != "zstd":
        raise InvalidArgumentError(f"compression must be None or 'zstd', got {compression!r}")
    if not isinstance(level, int) or isinstance(level, bool) or not -7 <= level <= 22:
        raise InvalidArgumentError(f"compression_level must be an int in -7..22, got {level!r}")
    if not _core.zstd_version():
        raise UnsupportedError("compression='zstd' needs the system's libzstd (libzstd.so.1, 1.4 or newer)")
    return level


MAX_SHARDS = 99999


def check_options(num_shards: int, alignment: int, threads: Optional[int]) -> int:
    if not isinstance(num_shards, int) or isinstance(num_shards, bool) or not 1 <= num_shards <= MAX_SHARDS:
        raise InvalidArgumentError(f"num_shards must be an int in 1..{MAX_SHARDS}, got {num_shards!r}")
    if not isinstance(alignment, int) or isinstance(alignment, bool) or not 1 <= alignment <= 1 << 30:
        raise InvalidArgumentError(f"alignment must be an int in 1..2**30, got {alignment!r}")
    if threads is None:
        return default_threads()
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise InvalidArgumentError(f"threads must be a positive int, got {threads!r}")
    return threads


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
    only: Optional[int] = None  # one process's part of a bundle many write: its one data file
    zstd_level: Optional[int] = None  # payloads compressed (byte planes + zstd) at this level
    recycled: Dict[int, int] = field(default_factory=dict)  # shard -> a retired data file's fd (fastckpt.directory.recycle)

    def data_files(self) -> List[str]:
        """The data files' paths (this process's one, for a part)."""
        if self.only is not None:
            return [data_filename(self.prefix, self.only, self.num_shards)]
        return [data_filename(self.prefix, s, self.num_shards) for s in range(self.num_shards)]

    def files(self) -> List[str]:
        """Every file of the bundle, the index first (a part: its data file)."""
        if self.only is not None:
            return self.data_files()
        return [index_filename(self.prefix)] + self.data_files()

    def remove(self) -> None:
        """Delete whatever is left of the staged files (index first)."""
        for path in self.files():
            fs.delete_quietly(path)

    def close(self) -> None:
        """Release the locks (the files themselves stay)."""
        fds, self.fds = self.fds, []
        for fd in fds:
            with contextlib.suppress(OSError):
                release_lock(fd)


def new_stage_prefix(directory: str) -> str:
    """A fresh private prefix for a staged bundle in ``directory``."""
    return os.path.join(directory, STAGE_PREFIX + secrets.token_hex(8))


def stage_bundle(directory: str, tensors: Mapping[Any, Any], *, alignment: int = 1, num_shards: int = 1,
                 threads: Optional[int] = None, durable: bool = False,
                 staging_bytes: int = STAGING_BYTES, zstd_level: Optional[int] = None,
                 staged: Optional[StagedBundle] = None, plan: Optional["_core.WritePlan"] = None) -> StagedBundle:
    """Write ``tensors`` as a complete bundle under a new private prefix in
    ``directory`` (or as ``staged``, whose ``recycled`` data files are
    rewritten in place; ``plan``: the tensors already planned): data
    files, fsync'd when ``durable``, then the index. On any failure nothing
    is left behind and the error is raised (:class:`CheckpointIOError` for
    the system's)."""
    nthreads = check_options(num_shards, alignment, threads)
    if not isinstance(staging_bytes, int) or isinstance(staging_bytes, bool) or staging_bytes < 1:
        raise InvalidArgumentError(f"staging_bytes must be a positive int, got {staging_bytes!r}")
    if staged is None:
        staged = StagedBundle(new_stage_prefix(directory), num_shards, durable, zstd_level=zstd_level)
    with removed_on_failure(staged, f"writing a checkpoint in {directory!r}"):
        write_staged_index(staged, _write_data(tensors, staged, alignment, nthreads, staging_bytes, plan))
    return staged


def write_staged_index(staged: StagedBundle, index: bytes) -> None:
    """Write the staged bundle's ``.index`` (locked, fsync'd with its
    directory when durable): the last file of a staged bundle."""
    _write_all(_create_locked(index_filename(staged.prefix), staged), index, staged.durable)
    if staged.durable:
        fsync_dir(os.path.dirname(staged.prefix) or ".")


def write_part(part: StagedBundle, tensors: Mapping[Any, Any], *, alignment: int = 1,
               threads: Optional[int] = None) -> List[Tuple[bytes, bytes]]:
    """Write this process's data file of a bundle many processes write
    (``part.only`` is its number); returns the index records of what it
    holds, ``(key, serialized entry)`` naming that data file, for the merge.
    On failure the file is removed and the error raised."""
    nthreads = check_options(1, alignment, threads)
    with removed_on_failure(part, f"writing {part.data_files()[0]!r}"):
        records: List[Tuple[bytes, bytes]] = _write_data(tensors, part, alignment, nthreads, STAGING_BYTES)
    return records


@contextlib.contextmanager
def removed_on_failure(staged: StagedBundle, what: str) -> Iterator[None]:
    """On any failure inside, the staged files go and the error is raised
    (:class:`CheckpointIOError` for the system's)."""
    try:
        yield
    except BaseException as e:
        staged.remove()
        staged.close()
        if isinstance(e, OSError) and not isinstance(e, CheckpointError):
            raise io_error(e, what) from e
        raise


def _create_locked(path: str, staged: StagedBundle, shared: bool = False) -> int:
    _, fd = create_locked_temp(lambda: path, shared=shared)
    staged.fds.append(fd)
    return fd


def _data_fd(staged: StagedBundle, shard: int, path: str) -> int:
    """The descriptor to write a data file through: a recycled file
    (already under this name, exclusively locked), or a new one (shared
    lock: readers of the committed checkpoint may share it)."""
    fd = staged.recycled.pop(shard, None)  # (its lock is among staged.fds already)
    return _create_locked(path, staged, shared=True) if fd is None else fd


def _write_all(fd: int, data: bytes, durable: bool) -> None:
    local.write_all(fd, data)
    if durable:
        local.fsync(fd)


def write_converted(plan: "_core.WritePlan", fds: List[int], finals: List[str], nthreads: int,
                    durable: bool, staging_bytes: int = STAGING_BYTES) -> None:
    """Arrays that need converting (non-contiguous, big-endian) go through a
    staging pool of at most ``staging_bytes``: converted piece by piece,
    written in parallel batches, their CRCs combined per tensor."""
    batch: List[Tuple[int, int, np.ndarray]] = []
    crcs: Dict[int, int] = {}
    held = 0

    def flush() -> None:
        nonlocal held
        got = _core.io_run([fds[plan.shard(i)] for i, _, _ in batch], [plan.offset(i) + at for i, at, _ in batch],
                           [c for _, _, c in batch], write=True, threads=nthreads, uncached=durable,
                           describe=lambda k: f"tensor {plan.names[batch[k][0]]!r} in {finals[plan.shard(batch[k][0])]}")
        assert got is not None
        for (i, at, chunk), crc in zip(batch, got):
            crcs[i] = crc if at == 0 else _core.crc32c_combine(crcs[i], crc, chunk.nbytes)
        batch.clear()
        held = 0

    for i, source in plan.staged:
        if isinstance(source, LazyTensor):  # at most one read tensor beside the pool
            if batch and held + source.nbytes > staging_bytes:
                flush()
            source = source.array()
        at = 0
        crcs[i] = 0
        for chunk in c_order_chunks(source, staging_bytes) if source.nbytes else ():
            if held and held + chunk.nbytes > staging_bytes:
                flush()
            batch.append((i, at, chunk))
            at += chunk.nbytes
            held += chunk.nbytes
        chunk = source = None  # type: ignore[assignment]  # the batch alone keeps a read tensor alive: at most one beside the pool
    if batch:
        flush()
    for i, crc in crcs.items():
        plan.set_crc(i, crc)


def _write_data(tensors: Mapping[Any, Any], staged: StagedBundle, alignment: int, nthreads: int,
                staging_bytes: int, plan: Optional["_core.WritePlan"] = None) -> Any:
    """Plan every tensor, create the staged data files, write the payloads
    (ready ones from their own memory, the rest through the staging pool),
    fsync if durable; returns the index bytes (a part: its index records)."""
    num_shards, durable = staged.num_shards if staged.only is None else 1, staged.durable
    level = staged.zstd_level
    if plan is None:
        plan = plan_bundle(tensors, num_shards, alignment if level is None else 1)
    finals = staged.data_files()
    reused = set(staged.recycled)
    fds = [_data_fd(staged, shard if staged.only is None else staged.only, final)
           for shard, final in enumerate(finals)]
    if level is not None:  # sizes are known only once compressed: the C core appends
        for i, source in plan.staged:  # every payload at once (mapped files cost no memory)
            if isinstance(source, LazyTensor):
                source = source.array()
            plan.set_ready(i, np.ascontiguousarray(source, dtype=source.dtype.newbyteorder("<")))
        plan.write_compressed(fds, level, ZSTD_CHUNK, nthreads, finals)
        for shard in reused:  # a recycled file keeps no bytes past the new data
            local.truncate(fds[shard], plan.shard_sizes[shard])
    else:
        for shard, (fd, size) in enumerate(zip(fds, plan.shard_sizes)):
            if size or shard in reused:  # a recycled file shrinks or grows to the new size
                local.truncate(fd, size)
        plan.write(fds, nthreads, durable, finals)
        if plan.staged:
            write_converted(plan, fds, finals, nthreads, durable, staging_bytes)
    if durable:
        fsync_all(fds)
    if staged.only is not None:
        return plan.records(staged.only)
    return plan.index(num_shards, 0 if level is None else _core.ZSTD_MIN_CONSUMER)


# ---- installing a staged bundle under its final name --------------------------------

_NO_LINK = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS, errno.EXDEV}


def _place(src: str, dst: str, link: bool) -> None:
    """Make ``dst`` name ``src``'s contents: by rename, or (``link``) by a hard
    link (a copy where links are not supported) renamed over ``dst``, so
    ``src`` stays complete meanwhile."""
    if not link:
        fs.replace(src, dst)
        return
    tmp = os.path.join(os.path.dirname(dst), ".fclink-" + secrets.token_hex(8))
    try:
        try:
            fs.link(src, tmp)
        except OSError as e:
            if e.errno not in _NO_LINK:
                raise
            fs.copy(src, tmp)
        fs.replace(tmp, dst)
    except BaseException:
        fs.delete_quietly(tmp)
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
    if fs.exists(index):
        fs.delete(index)
    finals = final_files(prefix, staged.num_shards)
    for src, dst in zip(staged.data_files() + [index_filename(staged.prefix)], finals):
        _place(src, dst, link)
    for stale in set(checkpoint_files(prefix)) - set(finals):
        if not stale.endswith(".meta"):
            fs.delete_quietly(stale)
    if staged.durable:
        fsync_dir(os.path.dirname(prefix) or ".")


def install_plain(staged: StagedBundle, prefix: str) -> None:
    """Rename the staged bundle into place as ``prefix`` (no state file);
    on failure nothing of it is left (data without an index is litter)."""
    try:
        install_bundle(staged, prefix, link=False)
    except BaseException as e:
        if not fs.exists(index_filename(prefix)):
            for f in final_files(prefix, staged.num_shards)[:-1]:
                fs.delete_quietly(f)
        if isinstance(e, OSError):
            raise io_error(e, f"writing checkpoint {prefix!r}") from e
        raise
    finally:
        staged.remove()
        staged.close()


def upload_plan(storage: Any, plan: "_core.WritePlan", urls: List[str], zstd_level: Optional[int],
                threads: Optional[int]) -> bytes:
    """Write the plan's data objects (compressed at ``zstd_level``, or
    streamed from the arrays); returns the index (for the shard count of
    ``urls``)."""
    if zstd_level is None:
        upload_data(storage, plan, urls)
        return plan.index(len(urls))
    upload_compressed(storage, plan, urls, zstd_level, ZSTD_CHUNK, check_options(1, 1, threads))
    return plan.index(len(urls), _core.ZSTD_MIN_CONSUMER)


def _upload_replacing(prefix: str, plan: "_core.WritePlan", num_shards: int, zstd_level: Optional[int],
                      threads: Optional[int]) -> None:
    """Write the bundle ``prefix`` to its object store: an existing index
    goes first (never an old index over new data), then the data objects,
    the index last. As locally, replacing a bundle this way is not atomic."""
    storage = fs.object_store(prefix)
    try:
        storage.delete_quietly(index_filename(prefix))
        index = upload_plan(storage, plan, [data_filename(prefix, s, num_shards) for s in range(num_shards)],
                            zstd_level, threads)
        storage.put(index_filename(prefix), index)
    except OSError as e:
        if isinstance(e, CheckpointError):
            raise
        raise io_error(e, f"writing checkpoint {prefix!r}") from e


def check_prefix(prefix: Any, num_shards: int = 1) -> str:
    """``prefix`` as a str path, checked: non-empty, not a directory path,
    and its files' names fit the file system."""
    p = storage_path(prefix, "prefix") if prefix is not None else None
    if not isinstance(p, str) or not p or p.endswith(os.sep) or os.path.basename(p) in (".", ".."):
        raise InvalidArgumentError(f"prefix must be a non-empty file path prefix, got {prefix!r}")
    n = num_shards if isinstance(num_shards, int) and 0 < num_shards <= MAX_SHARDS else 1
    if is_url(p):
        if "/" not in p[len("s3://"):] or p.endswith("/"):
            raise InvalidArgumentError(f"prefix {p!r} names no key: s3://BUCKET/dir/name")
        if len(data_filename(p, n - 1, n).split("/", 3)[3].encode()) > 1024:
            raise InvalidArgumentError(f"prefix {p!r}: its object keys would be longer than S3's 1024 bytes")
        return p
    check_name_fits(index_filename(p))
    check_name_fits(data_filename(p, n - 1, n))  # the longest data file name
    return p


def write_bundle(
    prefix: PathLike,
    tensors: Mapping[Any, Any],
    *,
    alignment: int = 1,
    num_shards: int = 1,
    threads: Optional[int] = None,
    durable: bool = False,
    staging_bytes: int = STAGING_BYTES,
    compression: Optional[str] = None,
    compression_level: int = 1,
    storage_options: Optional[Mapping[str, Any]] = None,
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

    ``compression="zstd"`` stores every numeric tensor compressed: split
    into byte planes, in chunks of 1 MiB (``ZSTD_CHUNK``) compressed with zstd at
    ``compression_level`` on the C threads (chunks that do not shrink are
    stored as they are). Every fastckpt reader reads it transparently;
    TensorFlow refuses it by its header (a fastckpt extension).

    Returns the prefix. Raises :class:`InvalidArgumentError` for bad names,
    dtypes or options and :class:`CheckpointIOError` (an ``OSError``) when
    the disk fails; in both cases no partial file is left behind.
    """
    with using_storage(storage_options):
        p = check_prefix(prefix, num_shards)
        level = compression_setting(compression, compression_level)
        if is_url(p):
            _upload_replacing(p, plan_for(tensors, num_shards, alignment, level), num_shards, level, threads)
            return p
        directory = os.path.dirname(p)
        ensure_directory(directory)
        staged = stage_bundle(directory or ".", tensors, alignment=alignment, num_shards=num_shards,
                              threads=threads, durable=durable, staging_bytes=staging_bytes, zstd_level=level)
        install_plain(staged, p)
        return p
