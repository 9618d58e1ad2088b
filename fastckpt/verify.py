"""``fastckpt verify``: check checkpoints completely without loading them.

Every entry of the index is checked -- slice entries included -- and every
payload's CRC32C is computed over the memory-mapped data file, so a
checkpoint of any size is verified in constant memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from . import _core
from .dtypes import DT_STRING, DT_VARIANT, dtype_name
from .errors import CheckpointError
from .naming import PathLike
from .reader import CheckpointReader
from .slices import decode_slice_key
from .state import checkpoint_exists, get_checkpoint_state
from .writer import default_threads

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


def verify_checkpoint(prefix: PathLike, threads: Optional[int] = None) -> VerifyReport:
    """Check one checkpoint: its index (structure, block CRCs, every entry's
    consistency), its data files, and every tensor's CRC32C."""
    report = VerifyReport(os.fspath(prefix))
    try:
        reader = CheckpointReader(prefix, threads=threads)
    except CheckpointError as e:
        report.problems.append(str(e))
        return report
    report.prefix = reader.prefix
    nthreads = threads or default_threads()
    with reader:
        index = reader._index
        for shard in range(reader.num_shards):
            try:
                reader._open_shard(shard)
            except CheckpointError as e:
                report.problems.append(str(e))
        for i in range(len(index)):
            key = index.key(i)
            try:
                _verify_entry(reader, key, index.entry(i), nthreads, report)
            except CheckpointError as e:
                report.problems.append(f"{_display(key)}: {e}")
    return report


def _verify_entry(reader: CheckpointReader, key: bytes, entry: tuple, threads: int,
                  report: VerifyReport) -> None:
    dtype, shape, shard, offset, size, crc, slices = entry
    name = _display(key)
    if slices:
        reader._slice_parts(name, key, dtype, tuple(shape), slices)  # tiling, presence, ranges
        report.tensors += 1
        return
    if dtype == DT_VARIANT:
        report.unchecked.append(f"{name}: {dtype_name(dtype)} payloads are not checked")
        return
    if shard not in reader._fds:
        return  # the missing data file is already reported
    reader._check_range(name, shard, offset, size)
    if crc is None:
        report.problems.append(f"{reader._data_path(shard)}: {name}: the index entry has no checksum")
        return
    mapped = reader._mapping(shard) if size else None
    if mapped is None:
        if _core.unmask_crc(crc) != 0:
            report.problems.append(f"{reader._data_path(shard)}: {name}: checksum does not match")
        report.tensors += 1
        return
    with memoryview(mapped)[offset:offset + size] as payload:
        if dtype == DT_STRING:
            count = int(np.prod(shape, dtype=object)) if shape else 1
            _core.decode_strings(payload, count, crc, True, reader._index.big_endian,
                                 f"{reader._data_path(shard)}: {name}")
        elif _core.crc32c_parallel(payload, threads) != _core.unmask_crc(crc):
            report.problems.append(f"{reader._data_path(shard)}: {name}: checksum does not match")
    report.tensors += 1
    report.bytes += size


def verify_path(path: PathLike, threads: Optional[int] = None) -> List[VerifyReport]:
    """Verify a checkpoint prefix, or every checkpoint a directory's state
    file lists (a listed checkpoint that is missing is a problem too)."""
    p = os.fspath(path)
    if not os.path.isdir(p):
        return [verify_checkpoint(p, threads)]
    try:
        st = get_checkpoint_state(p)
    except CheckpointError as e:
        return [VerifyReport(p, problems=[str(e)])]
    if st is None:
        return [VerifyReport(p, problems=[f"{p} has no checkpoint state file"])]
    reports = []
    for prefix in dict.fromkeys(st.all_model_checkpoint_paths + [st.model_checkpoint_path]):
        if not checkpoint_exists(prefix):
            reports.append(VerifyReport(prefix, problems=[f"listed in {p}/checkpoint but {prefix}.index is missing"]))
        else:
            reports.append(verify_checkpoint(prefix, threads))
    return reports
