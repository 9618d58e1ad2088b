"""Named records shared by the bridge and the Python layer."""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

__all__ = ["IndexEntry", "Extent"]

Extent = Tuple[int, int]  # (start, length); length -1: the whole dimension


class IndexEntry(NamedTuple):
    """One entry of a bundle's index (a ``BundleEntryProto``), checked
    against the others when the index was parsed."""

    dtype: int                                    # TensorFlow DataType enum
    shape: Tuple[int, ...]
    shard: int                                    # data file number
    offset: int                                   # byte offset in that file
    size: int                                     # payload bytes
    crc: Optional[int]                            # masked CRC32C as stored; None if absent
    slices: Optional[List[Tuple[Extent, ...]]]    # a partitioned tensor's slices, else None
