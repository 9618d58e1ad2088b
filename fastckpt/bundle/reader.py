"""Reading a bundle: ``CheckpointReader`` (TensorFlow's reader API) over the
index, the data files (``files.py``) and the read plan (the C planner for
plain tensors, ``readplan.py`` for the rest) → parallel reads → checksums."""

from __future__ import annotations

import os
from typing import (Any, Callable, Dict, Iterator, List, Mapping, MutableMapping, Optional, Sequence,
                    Tuple, Union)

import numpy as np

from fastckpt import _core
from fastckpt.bundle.dtypes import DT_STRING, DT_VARIANT, EXTENDED_ENUMS, fixed_width_dtypes, load_extended, numpy_dtype
from fastckpt.errors import CheckpointError, DataLossError, InvalidArgumentError, NotFoundError, TensorNotFoundError
from fastckpt.bundle.files import DataFiles, ObjectDataFiles, crc32c_of_range
from fastckpt.storage.fsutil import default_threads, gc_paused, io_error
from fastckpt.bundle.naming import PathLike, data_filename, index_filename, is_url, resolve_prefix
from fastckpt.storage.fileio import open_file, read_fd
from fastckpt.bundle.readplan import ReadPlan, advise_willneed, find_entry, name_of
from fastckpt.bundle.records import Extent, IndexEntry
from fastckpt.bundle.regions import TensorSlice, read_region
from fastckpt.storage import fs, local
from fastckpt.storage.s3 import ObjectInfo, using_storage

__all__ = ["CheckpointReader", "read_index_header", "read_index_fd", "check_index_footer", "copy_on_write_default"]

# Data files opened with the index (a consistent generation); beyond this
# many shards they are opened on first use.
EAGER_SHARDS = 1024

_FIXED_DTYPES = fixed_width_dtypes()  # (the live table: ml_dtypes' types are added when first needed)
_EXTENDED_MASK = sum(1 << e for e in EXTENDED_ENUMS)


_FOOTER = 48
_MAGIC = bytes.fromhex("57fb808b247547db")  # the table magic number, little-endian


def read_index_fd(fd: int, path: str) -> bytes:
    """The bytes of the index open as ``fd``, read whole only after its
    footer proved it a table whose index block ends at the footer, as
    TensorFlow writes it: a large file that is no index (sparse, or any
    other file) is refused after reading 48 bytes, not loaded into memory."""
    size = local.fd_size(fd)
    check_index_footer(local.pread(fd, _FOOTER, size - _FOOTER) if size >= _FOOTER else b"", size, path)
    return read_fd(fd, path)


def check_index_footer(foot: bytes, size: int, path: str) -> None:
    """Refuse what is not a table whose index block ends at its footer
    (``foot``: the last 48 bytes of the ``size`` bytes of ``path``)."""
    if size < _FOOTER:
        raise DataLossError(f"{path}: {size} bytes is too short to be a checkpoint index")
    if len(foot) != _FOOTER or foot[40:] != _MAGIC:
        raise DataLossError(f"{path} is not a checkpoint index (bad magic number)")
    handles, at = [], 0
    try:
        for _ in range(4):
            value, used = _core.decode_varint(foot[at:40])
            handles.append(value)
            at += used
    except CheckpointError:
        raise DataLossError(f"{path}: corrupt index footer") from None
    if handles[2] + handles[3] + 5 != size - _FOOTER:
        raise DataLossError(f"{path}: the index block ({handles[3]} bytes at {handles[2]}) does not end where the "
                            f"footer begins ({size - _FOOTER}): not a checkpoint index, or damaged")


def _read_index(prefix: str) -> "_core.Index":
    """The parsed index of ``prefix``."""
    path = index_filename(prefix)
    fd = open_file(path, f"no checkpoint at {prefix}")
    try:
        return _core.Index(read_index_fd(fd, path), path)
    finally:
        local.close(fd)


def read_index_header(prefix: str) -> int:
    """The number of data files the index of ``prefix`` names (its index is
    parsed and checked whole)."""
    return int(_read_index(prefix).num_shards)


class CheckpointReader(Mapping[str, np.ndarray]):
    """A checkpoint opened for reading, like ``tf.train.load_checkpoint``.

    Opening parses only the index; data files are opened on first use.
    Besides TensorFlow's methods (``get_tensor``, ``has_tensor``,
    ``get_variable_to_shape_map``, ``get_variable_to_dtype_map``) it is a
    read-only ``Mapping`` of tensor name → numpy array, and a context manager
    that closes its files. Partitioned (sliced) tensors appear under their
    full name, assembled. Every read checks the tensor's CRC32C unless
    ``verify=False``.

    New arrays (reads without ``into=``) of a local checkpoint are
    copy-on-write maps of its data files where the file system lets the
    file be guarded by a lease: their pages are the page cache's until
    written, so nothing is copied and no new memory is touched; a writer
    that later opens or truncates the file makes this process copy the
    pages first (the arrays never change). ``copy_on_write=False`` (or
    ``FASTCKPT_COPY_ON_WRITE=0`` in the environment) copies into new
    memory instead (:func:`fastckpt.restore` copies unless asked to map). Details: the "Restores without a copy" section of
    docs/performance.md.
    """

    def __init__(self, prefix: PathLike, *, verify: bool = True, threads: Optional[int] = None,
                 storage_options: Optional[Mapping[str, Any]] = None, copy_on_write: Optional[bool] = None):
        with using_storage(storage_options):  # (the data objects' handles keep the storage they were listed by)
            self._prefix = resolve_prefix(prefix)
            self._verify = bool(verify)
            self._cow = copy_on_write_default() if copy_on_write is None else bool(copy_on_write)
            self._threads = threads if threads is not None else default_threads()
            self._files: Union[DataFiles, ObjectDataFiles] = DataFiles(self._prefix, 0)
            self._verified: set = set()
            self._names: Optional[List[str]] = None
            self._tied: Optional[Dict[str, str]] = None
            self._open_generation()

    def _open_generation(self) -> None:
        """Parse the index and open the data files it names, as one
        generation: if the index was replaced meanwhile (a save replacing
        this checkpoint hides the index before it touches any data file),
        start again, so index and data always belong together."""
        path = index_filename(self._prefix)
        if is_url(path):
            self._open_objects(path)
            return
        for _ in range(20):
            # The index stays open until the data files are: while it is
            # open its inode cannot be reused, so an unchanged (device,
            # inode) under the name proves no save replaced it meanwhile.
            fd = open_file(path, f"no checkpoint at {self._prefix}")
            try:
                ident = local.fd_identity(fd)
                self._index = _core.Index(read_index_fd(fd, path), path)
                self._files = DataFiles(self._prefix, self.num_shards)
                if self.num_shards > EAGER_SHARDS:
                    return
                self._files.open_all()
                now = fs.identity(path)
            finally:
                local.close(fd)
            if now == ident:
                return
            self.close()
        raise DataLossError(f"checkpoint {self._prefix!r} keeps being replaced while it is opened")

    def _open_objects(self, path: str) -> None:
        """:meth:`_open_generation` in an object store: the index read with
        its ETag, the data objects listed with theirs (each later read asks
        for exactly that version), the index's ETag checked again after."""
        storage = fs.object_store(path)
        for _ in range(20):
            try:
                data, etag = storage.read_with_etag(path)
            except FileNotFoundError:
                raise NotFoundError(f"no checkpoint at {self._prefix}: {path} does not exist") from None
            except OSError as e:
                raise io_error(e, f"reading {path}") from e
            check_index_footer(data[-_FOOTER:], len(data), path)
            self._index = _core.Index(data, path)
            try:
                listed = storage.list_objects(self._prefix + ".data-")
                now = storage.etag(path)
            except OSError as e:
                raise io_error(e, f"listing the data files of {self._prefix}") from e
            n = self.num_shards
            names = {data_filename(self._prefix, s, n): s for s in range(n)} if n <= 1 << 16 else None
            objects: Dict[int, ObjectInfo] = {}
            for info in listed:
                shard = names.get(info.url) if names is not None else _shard_of(info.url, self._prefix, n)
                if shard is not None:
                    objects[shard] = info
            self._files = ObjectDataFiles(self._prefix, n, objects, storage)
            if now == etag:
                return
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
    def files(self) -> Union[DataFiles, ObjectDataFiles]:
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
        return find_entry(self._index, self._prefix, name)

    def tensor_names(self) -> List[str]:
        """Every tensor name, sorted (slice entries hidden)."""
        if self._names is None:
            self._names = [name_of(k) for k in self._index.keys() if k[:1] != b"\x00"]
        return list(self._names)

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

    def get_tensor(self, name: Union[str, bytes], copy: bool = True) -> np.ndarray:
        """The tensor ``name`` (str, or bytes as TensorFlow accepts): a new
        array, or with ``copy=False`` a zero-copy read-only view where
        possible (strings come back as ``bytes``)."""
        if not copy:
            return self._view(name)
        text = name_of(name) if isinstance(name, bytes) else name
        return self.read([text])[text]

    def _view(self, tensor: Union[str, bytes]) -> np.ndarray:
        key, (dtype, shape, shard, offset, size, crc, slices) = self._entry(tensor)
        name = name_of(key)
        npdt = numpy_dtype(dtype) if dtype not in (DT_STRING, DT_VARIANT) else None
        if (npdt is None or slices or self._files.remote or self._index.big_endian or self._index.compressed
                or (size and offset % npdt.alignment)):
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

    @property
    def verifies(self) -> bool:
        """Whether reads check checksums."""
        return self._verify

    @property
    def threads(self) -> int:
        """Threads a read uses."""
        return int(self._threads)

    def read_region(self, name: Union[str, bytes], offset: Sequence[int], shape: Sequence[int],
                    out: Optional[np.ndarray] = None, *, verify: Optional[bool] = None) -> np.ndarray:
        """The box ``offset`` + ``shape`` of tensor ``name`` (whole or
        partitioned), read from the stored entries that intersect it only.
        With checksums on, an entry the box covers in part is read whole to
        be checked; ``verify=False`` reads only the bytes the box needs."""
        text = name_of(name) if isinstance(name, bytes) else name
        return read_region(self, text, offset, shape, out, verify=verify)

    def get_slice(self, name: Union[str, bytes]) -> "TensorSlice":
        """A handle on tensor ``name`` that reads what numpy-style indexing
        asks for (``reader.get_slice("emb")[100:200]``), as safetensors'."""
        return TensorSlice(self, name_of(name) if isinstance(name, bytes) else name)

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
        if into is not None and names is not None:
            aliases = _shared_buffers(into, names)
            if aliases:  # one buffer under several names (tied weights): filled once, the others compared
                return self._read_aliased(names, into, aliases)
        if into is None and self.tied_names():
            wanted = self.tensor_names() if names is None else list(names)
            tied = self.tied_names()
            first: Dict[str, str] = {}
            same: Dict[str, str] = {}
            for n in wanted:  # each group of tied names read through the first of them asked for
                group = tied.get(n, n)
                if group in first:
                    same[n] = first[group]
                else:
                    first[group] = n
            if same:  # tied weights: one array under every name, read once
                got = self._read([n for n in wanted if n not in same], None)
                return {n: got[same.get(n, n)] for n in wanted}
        return self._read(names, into)

    def _read(self, names: Optional[Sequence[str]], into: Optional[MutableMapping[str, Any]]) -> Dict[str, Any]:
        out: Dict[str, Any] = {} if into is None else into  # type: ignore[assignment]
        plan = self._plan()

        def queue(rest: Sequence[str]) -> None:  # checks every tensor before anything is read
            with gc_paused():
                for name in rest:
                    plan.queue(name, out, into)

        fast = self._read_fast(names, into, queue, out) if into is None or type(into) is dict else None
        if fast is None:
            queue(self.tensor_names() if names is None else names)
        plan.run(self._threads)
        return out

    def tied_names(self) -> Dict[str, str]:
        """Names whose entries name the very bytes of another entry (tied
        weights written once): name -> the name read in its place."""
        if self._tied is None:
            self._tied = {name_of(self._index.key(i)): name_of(self._index.key(j)) for i, j in self._index.shared()}
        return self._tied

    def _read_aliased(self, names: Sequence[str], into: MutableMapping[str, Any],
                      aliases: Dict[str, str]) -> Dict[str, Any]:
        """``read(names, into=into)`` where each name of ``aliases`` shares its
        buffer with another: that one is filled, and the checkpoint's values
        of the alias must be the same bytes (checked by their stored
        checksums before anything is read, then byte for byte)."""
        for alias, first in aliases.items():
            crcs = {self._entry(alias)[1].crc, self._entry(first)[1].crc}
            if len(crcs) > 1 and None not in crcs:
                raise InvalidArgumentError(f"into[{alias!r}] and into[{first!r}] are one buffer, but the checkpoint "
                                           "holds different values for them")
        self.read([n for n in names if n not in aliases], into=into)
        for alias, first in aliases.items():
            stored = self.read([alias])[alias]
            if stored.shape != into[alias].shape or stored.tobytes() != np.asarray(into[first]).tobytes():
                raise InvalidArgumentError(f"into[{alias!r}] and into[{first!r}] are one buffer, but the checkpoint "
                                           "holds different values for them")
        return into  # type: ignore[return-value]

    def _read_fast(self, names: Optional[Sequence[str]], into: Optional[MutableMapping[str, Any]],
                   before_io: Callable[[Sequence[str]], None],
                   out: Dict[str, Any]) -> Optional[Tuple[Dict[str, Any], List[str]]]:
        """Plain tensors planned and read in C; the names left for the general
        path come back (and are queued by ``before_io`` before any read).
        None when the C planner cannot be used at all."""
        if self.num_shards > EAGER_SHARDS or self._index.compressed:
            return None  # the general path opens only the shards it needs, and restores compressed frames
        opened = self._files.descriptors()
        if opened is None:
            return None
        fds, sizes = opened
        if self._index.dtype_mask() & _EXTENDED_MASK:  # bfloat16, float8...: ml_dtypes' types
            load_extended()
        if names is None or 2 * len(names) >= len(self._index):  # most of the files: read ahead
            for fd, size in zip(fds, sizes):
                advise_willneed(fd, 0, size)
        with gc_paused():
            return _core.read_fast(self._index, None if names is None else list(names), fds, sizes,
                                   _FIXED_DTYPES, self._verify, self._threads,
                                   lambda name, shard: f"{self._files.path(shard)}: tensor {name!r}",
                                   into, before_io, out,  # type: ignore[arg-type]
                                   0 if self._cow and into is None else -1)


    def slice_parts(self, name: str, key: bytes, dtype: int, shape: Tuple[int, ...],
                    slices: List[Tuple[Extent, ...]]) -> List[Tuple[Tuple[slice, ...], IndexEntry]]:
        """The slice entries of a partitioned tensor, checked: they tile the
        shape, match its dtype, and lie inside their data files."""
        return self._plan().slice_parts(name, key, dtype, shape, slices)

    def _plan(self) -> ReadPlan:
        return ReadPlan(self._index, self._files, self._prefix, self._verify, int(self._threads))


def copy_on_write_default(restoring: bool = False) -> bool:
    """Whether new arrays are copy-on-write maps of the data files (where
    the files can be guarded): ``FASTCKPT_COPY_ON_WRITE=1`` or ``0`` in the
    environment decides for every reader of the process; otherwise readers
    map and restores of training state (``restoring``) copy, since training
    writes what it restores and a written page of a map costs a page fault
    and a copy of its own."""
    value = os.environ.get("FASTCKPT_COPY_ON_WRITE", "").strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    return not restoring


def _span(a: np.ndarray) -> Tuple[int, int]:
    """The bytes ``[low, high)`` an array's elements occupy."""
    low = high = a.__array_interface__["data"][0]
    for n, step in zip(a.shape, a.strides):
        low, high = low + min(0, (n - 1) * step), high + max(0, (n - 1) * step)
    return low, high + a.itemsize


def _shared_buffers(into: Mapping[str, Any], names: Sequence[str]) -> Dict[str, str]:
    """Names of ``into`` whose arrays are the very buffer of an earlier name
    (alias -> first); :class:`InvalidArgumentError` when two arrays overlap
    otherwise (a read into one would clobber the other)."""
    spans = []
    for name in names:
        a = into.get(name)
        if isinstance(a, np.ndarray) and a.nbytes:
            spans.append(_span(a) + (a.dtype.str, a.shape, a.strides, name))
    if len(spans) < 2:
        return {}
    spans.sort(key=lambda t: (t[0], t[1]))
    aliases: Dict[str, str] = {}
    head, reach = spans[0], spans[0][1]
    for cur in spans[1:]:
        if cur[:5] == head[:5]:
            aliases[cur[5]] = head[5]
        elif cur[0] < reach:
            raise InvalidArgumentError(f"into[{head[5]!r}] and into[{cur[5]!r}] share memory: each tensor needs "
                                       "a buffer of its own (or the very same one, for tied weights)")
        else:
            head, reach = cur, max(reach, cur[1])
    return aliases


def _shard_of(url: str, prefix: str, num_shards: int) -> Optional[int]:
    """The shard number of a data object's URL, or None if it is not one of
    ``prefix``'s ``num_shards`` data files."""
    tail = url[len(prefix):]
    suffix = f"-of-{num_shards:05d}"
    if not tail.startswith(".data-") or not tail.endswith(suffix):
        return None
    digits = tail[len(".data-"):-len(suffix)]
    if not digits.isdigit() or len(digits) < 5:
        return None
    shard = int(digits)
    return shard if shard < num_shards and data_filename(prefix, shard, num_shards) == url else None
