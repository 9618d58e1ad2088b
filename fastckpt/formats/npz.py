"""numpy ``.npz`` archives: a zip of ``NAME.npy`` files. Stored (not
deflated) members are copied out of the mapped archive and their CRC-32
checked; deflated ones (``np.savez_compressed``) are decoded (and checked
by zipfile) one at a time. Object arrays are
refused (they need pickle). Written stored, member by member."""

from __future__ import annotations

import contextlib
import lzma
import mmap
import struct
import zipfile
import zlib
from typing import Any, Iterator, List, Optional, Tuple

import numpy as np

from fastckpt.errors import DataLossError, InvalidArgumentError, UnsupportedError
from fastckpt.bundle.lazy import LazyTensor, guarded_copy
from fastckpt.formats.source import Source, open_input, tensors_only
from fastckpt.formats.files import chunks_of, replace_all
from fastckpt.storage import local

__all__ = ["open_npz", "write_npz"]

_LOCAL = struct.Struct("<4sHHHHHIIIHH")


def open_npz(path: str) -> Source:
    """The arrays of the archive ``path`` as a :class:`Source`."""
    fh = open_input(path)
    try:
        zf = zipfile.ZipFile(fh)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, OverflowError) as e:
        fh.close()
        raise DataLossError(f"{path} is not an npz archive: {e}") from None
    size = local.fd_size(fh.fileno())
    try:
        m = local.map_read(fh.fileno()) if size else None
    except (OSError, ValueError) as e:
        zf.close()
        fh.close()
        raise DataLossError(f"{path}: cannot be mapped: {e}") from None
    try:
        tensors = {}
        for member in zf.infolist():
            if not member.filename.endswith(".npy"):  # not an array; its names must agree all the same
                with _damage_is_data_loss(f"{path}: {member.filename}"), zf.open(member):
                    continue
            tensors[member.filename[:-4]] = _lazy(path, zf, m, member)
    except BaseException:
        zf.close()
        fh.close()
        raise

    def close() -> None:
        zf.close()
        fh.close()
        if m is not None:
            try:
                m.close()
            except BufferError:
                pass
    info = {"data_files": 1, "file_bytes": size, "format_version": "npz",
            "compression": "deflate" if any(i.compress_type != zipfile.ZIP_STORED for i in zf.infolist()) else None,
            "dtypes": {n: str(t.dtype) for n, t in tensors.items()}}
    return Source("npz", path, tensors, info=info, close=close)


def _header(fp: Any, what: str) -> Tuple[Tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(fp)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(fp)
    except Exception as e:  # numpy's header parser raises whatever its tokenizer and literal_eval raise
        raise DataLossError(f"{what}: not an .npy member: {type(e).__name__}: {e}") from None
    if dtype.hasobject:
        raise InvalidArgumentError(f"{what}: an object array (it needs pickle, which fastckpt never runs)")
    return tuple(shape), bool(fortran), dtype


def _lazy(path: str, zf: zipfile.ZipFile, m: Optional[mmap.mmap], member: zipfile.ZipInfo) -> LazyTensor:
    what = f"{path}: {member.filename}"
    with _damage_is_data_loss(what), zf.open(member) as fp:
        shape, fortran, dtype = _header(fp, what)
        header_len = fp.tell() if member.compress_type == zipfile.ZIP_STORED else 0
    count = int(np.prod(shape, dtype=object))
    if member.compress_type == zipfile.ZIP_STORED and m is not None:
        start = _data_start(m, member, what)
        if member.file_size - header_len != count * dtype.itemsize or start + member.file_size > len(m):
            raise DataLossError(f"{what}: {member.file_size - header_len} bytes for a {dtype}{list(shape)} array")

        def load() -> np.ndarray:  # copied out of the map (guarded), then its CRC-32 checked
            raw = guarded_copy(np.frombuffer(m, np.uint8, member.file_size, start), what)
            if zlib.crc32(raw.data) != member.CRC:
                raise DataLossError(f"{what}: damaged: its CRC-32 does not match the archive's record")
            if not count:
                return np.empty(shape, dtype, order="F" if fortran else "C")
            return np.ndarray(shape, dtype, buffer=raw, offset=header_len, order="F" if fortran else "C")
        return LazyTensor(dtype, shape, load, what=what)

    def decode() -> np.ndarray:
        with _damage_is_data_loss(what), zf.open(member) as f:
            return np.lib.format.read_array(f, allow_pickle=False)
    return LazyTensor(dtype, shape, decode, what=what)


@contextlib.contextmanager
def _damage_is_data_loss(what: str) -> Iterator[None]:
    """A damaged member (bad local header, deflate stream or CRC) as DataLossError."""
    try:
        yield
    except (zipfile.BadZipFile, zlib.error, EOFError, lzma.LZMAError, OSError) as e:  # bz2 raises OSError
        raise DataLossError(f"{what}: damaged: {e}") from None
    except NotImplementedError as e:  # a compression method zipfile lacks (or a damaged method field)
        raise UnsupportedError(f"{what}: {e}") from None
    except RuntimeError as e:  # "File ... is encrypted, password required for extraction"
        raise UnsupportedError(f"{what}: encrypted members are not supported: {e}") from None


def _data_start(m: mmap.mmap, member: zipfile.ZipInfo, what: str) -> int:
    at = member.header_offset
    if at + _LOCAL.size > len(m):
        raise DataLossError(f"{what}: its local header lies beyond the end of the archive")
    fields = _LOCAL.unpack_from(m, at)
    if fields[0] != b"PK\x03\x04":
        raise DataLossError(f"{what}: bad local header")
    return at + _LOCAL.size + fields[9] + fields[10]


def write_npz(dst: str, source: Source, *, durable: bool = False) -> List[str]:
    """``source``'s tensors as the archive ``dst`` (stored members, as
    ``np.savez`` writes them; ``np.load`` reads it)."""
    if not dst.endswith(".npz"):
        raise InvalidArgumentError(f"an npz destination ends with .npz, got {dst!r}")
    tensors = tensors_only(source, "npz")
    for name, t in tensors.items():
        check_npz_dtype(name, t.dtype)
    def write(fh: Any) -> None:
        with zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, t in tensors.items():
                _write_member(zf, name, t)
    return replace_all([(dst, write)], durable)


def _write_member(zf: zipfile.ZipFile, name: str, t: LazyTensor) -> None:
    """One ``NAME.npy`` member; the tensor is read here and let go on return."""
    arr = t.copied()  # zipfile's CRC pass reads it
    with zf.open(name + ".npy", "w", force_zip64=True) as out:
        header = {"descr": np.lib.format.dtype_to_descr(arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">"
                                                         else arr.dtype),
                  "fortran_order": False, "shape": tuple(arr.shape)}
        try:
            np.lib.format.write_array_header_1_0(out, header)
        except ValueError:  # a header over 64 KiB (very many dimensions)
            np.lib.format.write_array_header_2_0(out, header)
        for chunk in chunks_of(arr):
            out.write(chunk)


def check_npz_dtype(name: str, dtype: np.dtype) -> None:
    """npy records only numpy's own dtypes: bfloat16, float8 and int4 would
    come back as raw bytes (void), so they are refused."""
    if dtype.kind == "V" or type(dtype).__module__.startswith("ml_dtypes") or dtype.type.__module__ == "ml_dtypes":
        raise InvalidArgumentError(f"tensor {name!r}: npz cannot record dtype {dtype} (numpy would read it back as "
                                   "raw bytes): convert to safetensors or a TensorFlow bundle")
