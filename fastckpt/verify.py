"""``fastckpt verify``: check checkpoints completely without loading them.

Every entry of the index is checked -- slice entries included -- every
payload's CRC32C is computed from the data files read in chunks, and the
structure record is checked against the index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, List, Mapping, Optional, Set

import numpy as np

from fastckpt import _core
from fastckpt.bundle.compressed import verify_frame
from fastckpt.bundle.dtypes import DT_STRING, DT_VARIANT, dtype_name, numpy_dtype
from fastckpt.errors import CheckpointError
from fastckpt.bundle.files import crc32c_of_range, read_range
from fastckpt.bundle.naming import PathLike, storage_path
from fastckpt.bundle.reader import CheckpointReader
from fastckpt.structure.record import read_record
from fastckpt.directory.locate import find_checkpoint, open_checkpoint
from fastckpt.bundle.records import IndexEntry
from fastckpt.bundle.slices import decode_slice_key
from fastckpt.directory.state import get_checkpoint_state, readable_prefix
from fastckpt.storage import fs
from fastckpt.storage.s3 import using_storage

__all__ = ["VerifyReport", "verify_checkpoint", "verify_path"]


@dataclass
class VerifyReport:
    """What :func:`verify_checkpoint` found for one checkpoint."""

    prefix: str
    tensors: int = 0
    bytes: int = 0
    problems: List[str] = field(default_factory=list)
    unchecked: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is damaged."""
        return not self.problems

    def summary(self) -> str:
        """One line, then one line per problem."""
        head = (f"{'OK' if self.ok else 'DAMAGED'} {self.prefix}: {self.tensors} entries, "
                f"{self.bytes} bytes checked")
        lines = [head] + [f"  problem: {p}" for p in self.problems]
        lines += [f"  not checked: {u}" for u in self.unchecked]
        return "\n".join(lines)


def _display(key: bytes) -> str:
    if key[:1] == b"\x00":
        try:
            name, extents = decode_slice_key(key)
            return f"{name.decode('utf-8', 'replace')} slice {extents}"
        except ValueError:
            return repr(key)
    return key.decode("utf-8", "surrogateescape")


def verify_checkpoint(prefix: PathLike, threads: Optional[int] = None,
                      progress: Optional[Callable[[str], None]] = None, *,
                      storage_options: Optional[Mapping[str, Any]] = None) -> VerifyReport:
    """Check one checkpoint: its index (structure, block CRCs, every entry's
    consistency), its data files, every tensor's CRC32C, and the structure
    record fastckpt's ``save`` stores. Data is read with ``pread`` in
    chunks, so a file that shrinks meanwhile is reported, never a signal;
    memory stays constant except for string tensors, read whole."""
    with using_storage(storage_options):
        report = VerifyReport(storage_path(prefix, "prefix"))
        try:  # while a commit replaces it, the staged bundle listed in its place
            reader = open_checkpoint(report.prefix, lambda p: CheckpointReader(p, threads=threads))
        except CheckpointError as e:
            report.problems.append(str(e))
            return report
        if readable_prefix(report.prefix) != reader.prefix:  # a path of its index or a data file
            report.prefix = reader.prefix
        with reader:
            count, missing = reader.files.missing()
            if count:
                report.problems.append(f"{count} of {reader.num_shards} data file(s) missing, the first "
                                       f"{reader.files.path(min(missing))}")
            for i, (key, entry) in enumerate(reader.entries()):
                try:
                    _verify_entry(reader, key, entry, missing, report)
                except CheckpointError as e:
                    report.problems.append(f"{_display(key)}: {e}")
                if progress is not None and (i % 256 == 0 or entry.size > 1 << 24):
                    progress(f"{report.prefix}: {report.bytes / 2**20:,.0f} MiB checked")
            if not report.problems:
                try:
                    read_record(reader)
                except CheckpointError as e:
                    report.problems.append(str(e))
        return report


def _verify_entry(reader: CheckpointReader, key: bytes, entry: IndexEntry, missing: Set[int],
                  report: VerifyReport) -> None:
    name = _display(key)
    if entry.slices:
        reader.slice_parts(name, key, entry.dtype, entry.shape, entry.slices)  # tiling, presence, ranges
        report.tensors += 1
        return
    if entry.dtype == DT_VARIANT:
        report.unchecked.append(f"{name}: {dtype_name(entry.dtype)} payloads are not checked")
        return
    if entry.shard in missing:
        return  # the missing data file is already reported
    fd = reader.files.check_range(name, entry.shard, entry.offset, entry.size, fresh=True)
    where = f"{reader.files.path(entry.shard)}: {name}"
    if entry.crc is None:
        report.problems.append(f"{where}: the index entry has no checksum")
        return
    if entry.dtype == DT_STRING:
        payload = read_range(fd, entry.offset, entry.size, where)
        count = int(np.prod(entry.shape, dtype=object)) if entry.shape else 1
        _core.decode_strings(payload, count, entry.crc, True, reader.index.big_endian, where)
    elif reader.index.compressed:  # the CRC is of the raw bytes: restore them (one tensor at a time)
        verify_frame(fd, entry.offset, entry.size, math.prod(entry.shape), numpy_dtype(entry.dtype).itemsize,
                     reader.threads, _core.unmask_crc(entry.crc), where)
    elif crc32c_of_range(fd, entry.offset, entry.size, where) != _core.unmask_crc(entry.crc):
        report.problems.append(f"{where}: checksum does not match")
    report.tensors += 1
    report.bytes += entry.size


def verify_path(path: PathLike, threads: Optional[int] = None,
                progress: Optional[Callable[[str], None]] = None, *,
                storage_options: Optional[Mapping[str, Any]] = None) -> List[VerifyReport]:
    """Verify a checkpoint prefix, or every checkpoint a directory's state
    file lists (a listed checkpoint that is missing is a problem too), or
    the only checkpoint of a directory without a state file."""
    with using_storage(storage_options):
        p = storage_path(path)
        try:
            st = get_checkpoint_state(p) if fs.is_dir(p) else None
            if st is None:  # a prefix, or a directory holding one checkpoint and no state file
                return [verify_checkpoint(find_checkpoint(p), threads, progress)]
        except CheckpointError as e:
            return [VerifyReport(p, problems=[str(e)])]
        reports = []
        for prefix in dict.fromkeys(st.all_model_checkpoint_paths + [st.model_checkpoint_path]):
            if readable_prefix(prefix) is None:
                reports.append(VerifyReport(prefix, problems=[f"listed in {p}/checkpoint but {prefix}.index is missing"]))
            else:
                reports.append(verify_checkpoint(prefix, threads, progress))
        return reports
