"""Reading a bundle: index → plan (entries, files, sizes, checked before any
allocation) → parallel C reads into arrays → checksums."""

from __future__ import annotations

import os
from typing import (Any, Callable, Dict, Iterator, List, Mapping, MutableMapping, Optional, Sequence,
                    Tuple, TypeVar, Union)

import numpy as np

from . import _core
from .dtypes import DT_STRING, DT_VARIANT, dtype_name, fixed_width_dtypes, numpy_dtype
from .errors import (DataLossError, InvalidArgumentError,
                     NotFoundError, TensorNotFoundError, UnsupportedError)
from .files import DataFiles, crc32c_of_range
from .fsutil import default_threads, gc_paused
from .naming import PathLike, index_filename, read_file, resolve_prefix
from .records import Extent, IndexEntry
from .slices import encode_slice_key, slice_region, slice_shape
from .structure import STRUCTURE_KEY, parse_structure_record

__all__ = ["CheckpointReader", "read_bundle", "load_checkpoint", "list_variables", "read_index_header", "open_latest"]

# Data files opened with the index (a consistent generation); beyond this
# many shards they are opened on first use.
EAGER_SHARDS = 1024

_FIXED_DTYPES = fixed_width_dtypes()


def _name_of(key: bytes) -> str:
    return key.decode("utf-8", "surrogateescape")


def _key_of(name: Union[str, bytes]) -> bytes:
    if isinstance(name, bytes):
        return name
    if not isinstance(name, str):
        raise InvalidArgumentError(f"tensor names are str, got {type(name).__name__}: {name!r}")
    return name.encode("utf-8", "surrogateescape")


def _file_id(st: os.stat_result) -> Tuple[int, int, int]:
    return (st.st_dev, st.st_ino, st.st_mtime_ns)


def _read_index(prefix: str) -> Tuple["_core.Index", Tuple[int, int, int]]:
    """The parsed index and the identity of the file it came from."""
    path = index_filename(prefix)
    raw = read_file(path, f"no checkpoint at {prefix!r}")
    try:
        ident = _file_id(os.stat(path))
    except OSError:
        ident = (0, 0, 0)
    return _core.Index(raw, path), ident


def read_index_header(prefix: str) -> int:
    """The number of data files the index of ``prefix`` names (its index is
    parsed and checked whole)."""
    return int(_read_index(prefix)[0].num_shards)


class _Pending:
    """Reads queued for one io_run, and what to do with each afterwards."""

    def __init__(self) -> None:
        self.fds: List[int] = []
        self.offsets: List[int] = []
        self.buffers: List[Any] = []
        self.crcs: List[Optional[int]] = []
        self.names: List[str] = []    # for error messages only
        self.shards: List[int] = []
        self.after: List[Any] = []


class CheckpointReader(Mapping[str, np.ndarray]):
    """A checkpoint opened for reading, like ``tf.train.load_checkpoint``.

    Opening parses only the index; data files are opened on first use.
    Besides TensorFlow's methods (``get_tensor``, ``has_tensor``,
    ``get_variable_to_shape_map``, ``get_variable_to_dtype_map``) it is a
    read-only ``Mapping`` of tensor name → numpy array, and a context manager
    that closes its files. Partitioned (sliced) tensors appear under their
    full name, assembled. Every read checks the tensor's CRC32C unless
    ``verify=False``.
    """

    def __init__(self, prefix: PathLike, *, verify: bool = True, threads: Optional[int] = None):
        self._prefix = resolve_prefix(prefix)
        self._verify = bool(verify)
        self._threads = threads if threads is not None else default_threads()
        self._files = DataFiles(self._prefix, 0)
        self._verified: set = set()
        self._names: Optional[List[str]] = None
        self._record: Any = False
        self._open_generation()

    def _open_generation(self) -> None:
        """Parse the index and open the data files it names, as one
        generation: if the index was replaced meanwhile (a save replacing
        this checkpoint hides the index before it touches any data file),
        start again, so index and data always belong together."""
        for _ in range(20):
            self._index, ident = _read_index(self._prefix)
            self._files = DataFiles(self._prefix, self.num_shards)
            if self.num_shards > EAGER_SHARDS:
                return
            self._files.open_all()
            try:
                now = _file_id(os.stat(index_filename(self._prefix)))
            except OSError:
                now = None
            if now == ident:
                return
            self.close()
        raise DataLossError(f"checkpoint {self._prefix!r} keeps being replaced while it is opened")

    # -- files -------------------------------------------------------------------
    @property
    def prefix(self) -> str:
        """The checkpoint's prefix."""
        return self._prefix

    @property
    def num_shards(self) -> int:
        """Number of data files."""
        return int(self._index.num_shards)

    @property
    def files(self) -> DataFiles:
        """The bundle's data files (descriptors, sizes, maps, range checks)."""
        return self._files

    @property
    def index(self) -> "_core.Index":
        """The parsed index."""
        return self._index

    def entries(self) -> Iterator[Tuple[bytes, IndexEntry]]:
        """Every ``(key, entry)`` of the index, slice entries included, sorted."""
        for i in range(len(self._index)):
            yield self._index.key(i), self._index.entry(i)

    def close(self) -> None:
        """Close the data files and mappings. Views already handed out stay
        valid (their mapping closes when the last one is gone); the reader
        itself can still be used and reopens files on demand."""
        self._files.close()

    def __enter__(self) -> "CheckpointReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # -- the index -------------------------------------------------------------------
    def _entry(self, name: Union[str, bytes]) -> Tuple[bytes, IndexEntry]:
        key = _key_of(name)
        i = self._index.find(key) if key and key[0] != 0 else -1
        if i < 0:
            raise TensorNotFoundError(f"Key {_name_of(key)} not found in checkpoint {self._prefix}")
        return key, self._index.entry(i)

    def tensor_names(self) -> List[str]:
        """Every tensor name, sorted (slice entries hidden)."""
        if self._names is None:
            self._names = [_name_of(k) for k in self._index.keys() if k[:1] != b"\x00"]
        return list(self._names)

    def structure_record(self) -> Optional[Dict[str, Any]]:
        """The structure record fastckpt's ``save`` stored (checked against
        the index), or None when the checkpoint has none."""
        if self._record is False:
            if not self.has_tensor(STRUCTURE_KEY):
                self._record = None
            else:
                raw = self.read([STRUCTURE_KEY])[STRUCTURE_KEY]
                if raw.dtype != np.uint8 or raw.ndim != 1:
                    raise DataLossError(f"{self._prefix}: structure record is corrupt: "
                                        f"tensor {STRUCTURE_KEY} is {raw.dtype} {list(raw.shape)}, not uint8 bytes")
                shapes, dtypes = {}, {}
                for key, entry in self.entries():  # one pass over the index
                    if key[:1] != b"\x00":
                        name = _name_of(key)
                        shapes[name] = entry.shape
                        dtypes[name] = numpy_dtype(entry.dtype) if entry.dtype != DT_VARIANT else np.dtype(object)
                self._record = parse_structure_record(raw.tobytes(), shapes, dtypes, index_filename(self._prefix))
        return self._record

    def has_tensor(self, name: Union[str, bytes]) -> bool:
        """True if ``name`` is a tensor of this checkpoint."""
        try:
            self._entry(name)
        except (TensorNotFoundError, InvalidArgumentError):
            return False
        return True

    def get_variable_to_shape_map(self) -> Dict[str, List[int]]:
        """name → shape (a list of ints), as TensorFlow's reader returns."""
        return {n: list(self._entry(n)[1].shape) for n in self.tensor_names()}

    def get_variable_to_dtype_map(self) -> Dict[str, np.dtype]:
        """name → numpy dtype (``object`` for strings)."""
        out = {}
        for n in self.tensor_names():
            dt = self._entry(n)[1].dtype
            out[n] = numpy_dtype(dt) if dt != DT_VARIANT else np.dtype(object)
        return out

    def get_tensor(self, name: str, copy: bool = True) -> np.ndarray:
        """The tensor ``name``: a new array, or with ``copy=False`` a zero-copy
        read-only view where possible (strings come back as ``bytes``)."""
        return self.read([name])[name] if copy else self._view(name)

    def _view(self, name: str) -> np.ndarray:
        key, (dtype, shape, shard, offset, size, crc, slices) = self._entry(name)
        npdt = numpy_dtype(dtype) if dtype not in (DT_STRING, DT_VARIANT) else None
        if npdt is None or slices or self._index.big_endian or (size and offset % npdt.alignment):
            return self.read([name])[name]
        fd = self._files.check_range(name, shard, offset, size, fresh=True)
        if self._verify and key not in self._verified:
            if crc is None:
                raise DataLossError(f"{self._files.path(shard)}: tensor {name!r}: the index entry has no checksum")
            got = crc32c_of_range(fd, offset, size, f"{self._files.path(shard)}: tensor {name!r}")
            if got != _core.unmask_crc(crc):
                raise DataLossError(f"{self._files.path(shard)}: tensor {name!r}: checksum does not match: "
                                    f"stored {crc} vs. calculated {_core.mask_crc(got)}")
            self._verified.add(key)
        mapped = self._files.mapping(shard) if size else None
        if mapped is None:
            arr = np.empty(shape, npdt)
            arr.flags.writeable = False
            return arr
        if offset + size > len(mapped):
            raise DataLossError(f"{self._files.path(shard)}: tensor {name!r} lies beyond the end of the file "
                                "as it was first mapped (the file grew or was replaced)")
        return np.frombuffer(mapped, npdt, size // npdt.itemsize, offset).reshape(shape)

    # -- Mapping -------------------------------------------------------------------
    def __getitem__(self, name: str) -> np.ndarray:
        """A zero-copy read-only view of tensor ``name`` where possible."""
        return self._view(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensor_names())

    def __len__(self) -> int:
        return len(self.tensor_names())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, (str, bytes)) and self.has_tensor(name)

    def __repr__(self) -> str:
        return f"<fastckpt.CheckpointReader {self._prefix!r}: {len(self)} tensors>"

    # -- reading ---------------------------------------------------------------------
    def read(
        self,
        names: Optional[Sequence[str]] = None,
        *,
        into: Optional[MutableMapping[str, Any]] = None,
    ) -> Dict[str, Any]:
        """Read several tensors at once, in parallel.

        ``names`` defaults to the keys of ``into`` if given, else every
        tensor. With ``into``, each array of ``into`` is filled in place
        (shape and dtype must match exactly) and ``into`` itself is returned.
        """
        if isinstance(names, (str, bytes)):
            raise InvalidArgumentError("names must be a list of tensor names, not a single string")
        if names is None and into is not None:
            names = list(into.keys())
        out: Dict[str, Any] = {} if into is None else into  # type: ignore[assignment]
        pending = _Pending()

        def queue(rest: Sequence[str]) -> None:  # checks every tensor before anything is read
            with gc_paused():
                for name in rest:
                    self._queue(name, pending, out, into)

        fast = self._read_fast(names, into, queue, out) if into is None or type(into) is dict else None
        if fast is None:
            queue(self.tensor_names() if names is None else names)
        if pending.buffers:
            _prefetch(pending)
            _core.io_run(pending.fds, pending.offsets, pending.buffers, pending.crcs, write=False, threads=self._threads,
                         describe=lambda i: f"{self._files.path(pending.shards[i])}: tensor {pending.names[i]!r}")
        for finish in pending.after:
            finish()
        return out

    def _read_fast(self, names: Optional[Sequence[str]], into: Optional[MutableMapping[str, Any]],
                   before_io: Callable[[Sequence[str]], None],
                   out: Dict[str, Any]) -> Optional[Tuple[Dict[str, Any], List[str]]]:
        """Plain tensors planned and read in C; the names left for the general
        path come back (and are queued by ``before_io`` before any read).
        None when the C planner cannot be used at all."""
        if self.num_shards > EAGER_SHARDS:
            return None  # the general path opens only the shards it needs
        opened = self._files.descriptors()
        if opened is None:
            return None
        fds, sizes = opened
        if names is None or 2 * len(names) >= len(self._index):  # most of the files: read ahead
            for fd, size in zip(fds, sizes):
                _advise_willneed(fd, 0, size)
        with gc_paused():
            return _core.read_fast(self._index, None if names is None else list(names), fds, sizes,
                                   _FIXED_DTYPES, self._verify, self._threads,
                                   lambda name, shard: f"{self._files.path(shard)}: tensor {name!r}",
                                   into, before_io, out)  # type: ignore[arg-type]

    def _queue(self, name: str, pending: _Pending, out: Dict[str, Any],
               into: Optional[MutableMapping[str, Any]]) -> None:
        key, (dtype, shape, shard, offset, size, crc, slices) = self._entry(name)
        if dtype == DT_VARIANT:
            raise UnsupportedError(f"tensor {name!r} is a DT_VARIANT tensor, which fastckpt does not read")
        npdt = numpy_dtype(dtype)
        # Every byte range is checked against the files before anything is allocated.
        parts = self.slice_parts(name, key, dtype, shape, slices) if slices else None
        fd = self._files.check_range(name, shard, offset, size) if parts is None else -1
        outname = name if isinstance(name, str) else _name_of(key)
        if dtype == DT_STRING and parts is None and into is None:
            # the array is made from the decoded strings: nothing is sized
            # from the element count before the payload's checksums pass
            out[outname] = None
            self._queue_payload(name, dtype, shape, fd, shard, offset, size, crc, None, pending,
                                deliver=lambda arr: out.__setitem__(outname, arr))
            return
        target = self._target(name, shape, npdt, into)
        if parts is not None:
            for region, entry in parts:
                part = np.empty(entry.shape, npdt)
                sfd = self._files.check_range(name, entry.shard, entry.offset, entry.size)
                self._queue_payload(name, dtype, entry.shape, sfd, entry.shard, entry.offset, entry.size, entry.crc,
                                    part, pending)
                pending.after.append(lambda part=part, region=region: target.__setitem__(region, part))
        else:
            self._queue_payload(name, dtype, shape, fd, shard, offset, size, crc, target, pending)
        out[outname] = target

    def _target(self, name: str, shape: Tuple[int, ...], npdt: np.dtype,
                into: Optional[MutableMapping[str, Any]]) -> np.ndarray:
        if into is None or name not in into:
            if into is not None:
                raise InvalidArgumentError(f"into has no array for tensor {name!r}")
            return np.empty(shape, npdt)
        arr = into[name]
        if not isinstance(arr, np.ndarray):
            raise InvalidArgumentError(
                f"into[{name!r}] must be a numpy array, got {type(arr).__name__}")
        if tuple(arr.shape) != tuple(shape):
            raise InvalidArgumentError(
                f"tensor {name!r}: checkpoint shape {list(shape)} does not match into shape {list(arr.shape)}")
        if arr.dtype.newbyteorder("=") != npdt:
            raise InvalidArgumentError(
                f"tensor {name!r}: checkpoint dtype {npdt} does not match into dtype {arr.dtype}")
        if not arr.flags.writeable:
            raise InvalidArgumentError(f"into[{name!r}] is read-only")
        return arr

    def _queue_payload(self, name: str, dtype: int, shape: Tuple[int, ...], fd: int, shard: int,
                       offset: int, size: int, crc: Optional[int], target: Optional[np.ndarray],
                       pending: _Pending, deliver: Optional[Callable[[np.ndarray], None]] = None) -> None:
        if self._verify and crc is None:
            raise DataLossError(f"{self._files.path(shard)}: tensor {name!r}: the index entry has no checksum")
        big = self._index.big_endian
        if dtype == DT_STRING:
            buf = bytearray(size)
            count = int(np.prod(shape, dtype=np.int64)) if shape else 1
            label = f"{self._files.path(shard)}: tensor {name!r}"

            def finish_strings() -> None:
                items = _core.decode_strings(buf, count, crc or 0, self._verify, big, label)
                flat = np.empty(len(items), dtype=object)
                flat[:] = items
                if target is None:
                    assert deliver is not None
                    deliver(flat.reshape(shape))
                else:
                    target[...] = flat.reshape(shape)

            # the string decoder checks the entry CRC, which is not the payload's
            self._add(pending, name, shard, fd, offset, buf, None)
            pending.after.append(finish_strings)
            return
        assert target is not None
        expected = _core.unmask_crc(crc) if (self._verify and crc is not None) else None
        if not big and target.flags.c_contiguous and target.dtype.byteorder in "=|<":
            self._add(pending, name, shard, fd, offset, target, expected)
            return
        dest = np.empty(shape, target.dtype.newbyteorder("="))

        def finish_fixed() -> None:
            if big:
                dest.byteswap(inplace=True)
            if dest is not target:
                np.copyto(target, dest, casting="unsafe")

        self._add(pending, name, shard, fd, offset, dest, expected)
        pending.after.append(finish_fixed)

    @staticmethod
    def _add(p: _Pending, name: str, shard: int, fd: int, offset: int, buf: Any, crc: Optional[int]) -> None:
        p.fds.append(fd)
        p.offsets.append(offset)
        p.buffers.append(buf)
        p.crcs.append(crc)
        p.names.append(name)
        p.shards.append(shard)

    def slice_parts(self, name: str, key: bytes, dtype: int, shape: Tuple[int, ...],
                    slices: List[Tuple[Extent, ...]]) -> List[Tuple[Tuple[slice, ...], IndexEntry]]:
        """The slice entries of a partitioned tensor, checked: they tile the
        shape, match its dtype, and lie inside their data files."""
        _check_coverage(name, shape, slices)
        parts = []
        for extents in slices:
            i = self._index.find(encode_slice_key(key, extents))
            if i < 0:
                raise DataLossError(f"{self._prefix}: slice {list(extents)} of tensor {name!r} is missing")
            entry = self._index.entry(i)
            sdtype, sshape, shard, offset, size, _, sub = entry
            want = slice_shape(extents, shape)
            if sdtype != dtype or tuple(sshape) != want or sub:
                raise DataLossError(
                    f"{self._prefix}: slice {list(extents)} of tensor {name!r} has dtype "
                    f"{dtype_name(sdtype)} shape {list(sshape)}, expected {dtype_name(dtype)} {list(want)}")
            self._files.check_range(name, shard, offset, size)
            parts.append((slice_region(extents, shape), entry))
        return parts


def _prefetch(pending: _Pending) -> None:
    """Ask the kernel to read ahead each file's requested span at once, so
    cold reads stream at disk speed while the threads copy and checksum
    (a no-op for pages already cached)."""
    spans: Dict[int, List[int]] = {}
    for fd, off, buf in zip(pending.fds, pending.offsets, pending.buffers):
        end = off + memoryview(buf).nbytes if not isinstance(buf, np.ndarray) else off + buf.nbytes
        lo_hi = spans.setdefault(fd, [off, end])
        lo_hi[0] = min(lo_hi[0], off)
        lo_hi[1] = max(lo_hi[1], end)
    for fd, (lo, hi) in spans.items():
        _advise_willneed(fd, lo, hi - lo)


def _advise_willneed(fd: int, offset: int, length: int) -> None:
    if length > 0 and hasattr(os, "posix_fadvise"):
        try:
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass


def _check_coverage(name: str, shape: Tuple[int, ...], slices: List[Tuple[Extent, ...]]) -> None:
    """The slices must tile the tensor exactly: no gap (uninitialised
    memory) and no overlap."""
    total = int(np.prod(shape, dtype=object)) if shape else 1
    boxes = [[(0, d) if ln < 0 else (st, st + ln) for (st, ln), d in zip(ext, shape)] for ext in slices]
    volume = sum(int(np.prod([hi - lo for lo, hi in b], dtype=object)) if b else 1 for b in boxes)
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            if all(max(a[0], b[0]) < min(a[1], b[1]) for a, b in zip(boxes[i], boxes[j])):
                raise DataLossError(f"partitioned tensor {name!r} has overlapping slices")
    if volume != total:
        raise DataLossError(f"the slices of partitioned tensor {name!r} do not cover its shape {list(shape)}")


def read_bundle(
    prefix: PathLike,
    names: Optional[Sequence[str]] = None,
    *,
    into: Optional[MutableMapping[str, Any]] = None,
    verify: bool = True,
    threads: Optional[int] = None,
) -> Dict[str, Any]:
    """Read tensors of the bundle ``prefix`` into a dict of numpy arrays.

    ``names`` selects tensors (default: all, or the keys of ``into``). With
    ``into`` (name → array), arrays are filled in place after checking shape
    and dtype, and ``into`` is returned. Each tensor's CRC32C is verified
    unless ``verify=False``; damage raises :class:`DataLossError` naming the
    file and the tensor. String tensors come back as object arrays of
    ``bytes``.
    """
    with CheckpointReader(prefix, verify=verify, threads=threads) as reader:
        return reader.read(names, into=into)


def load_checkpoint(dir_or_prefix: PathLike, *, verify: bool = True) -> CheckpointReader:
    """A :class:`CheckpointReader` for a checkpoint prefix, or for the latest
    checkpoint of a directory (from its ``checkpoint`` state file)."""
    path = os.fspath(dir_or_prefix)
    if os.path.isdir(path):
        return open_latest(path, lambda p: CheckpointReader(p, verify=verify))
    return CheckpointReader(path, verify=verify)


T = TypeVar("T")


def open_latest(directory: str, use: Callable[[str], T]) -> T:
    """``use(prefix)`` on the directory's latest checkpoint. A save that
    replaces or deletes that checkpoint meanwhile is no failure: when the
    state file has changed since it was read (every commit changes its
    text: new names, new timestamps), it is read again and the checkpoint
    it names now is used."""
    from .state import checkpoint_exists, get_checkpoint_state

    for _ in range(100):
        st = get_checkpoint_state(directory)
        latest = st.model_checkpoint_path if st is not None else None
        try:
            if latest is None or not checkpoint_exists(latest):
                raise NotFoundError(f"Couldn't find 'checkpoint' file or checkpoints in given directory {directory}")
            return use(latest)
        except NotFoundError:
            if get_checkpoint_state(directory) == st:
                raise
    raise DataLossError(f"the latest checkpoint of {directory} keeps changing while it is opened")


def list_variables(dir_or_prefix: PathLike) -> List[Tuple[str, List[int]]]:
    """Sorted ``(name, shape)`` pairs of a checkpoint, like ``tf.train.list_variables``."""
    with load_checkpoint(dir_or_prefix) as reader:
        shapes = reader.get_variable_to_shape_map()
    return sorted(shapes.items())

