"""TensorFlow ``DataType`` enum values and their numpy dtypes.

Every TensorFlow dtype numpy can hold is supported; bfloat16, the float8
family, int4/uint4/int2/uint2 and float4_e2m1fn come from ``ml_dtypes``, whose
one-byte-per-element layout is the one TensorFlow writes. Quantized types
(qint8 ...) are read as their plain integer storage types.

``ml_dtypes`` takes most of a second to import here, so it is imported when
a checkpoint or an array needs one of its types (an array of them means the
caller has imported it already): :func:`load_extended`, :func:`refresh`.
"""

from __future__ import annotations

import sys
from typing import Dict, List, Optional

import numpy as np

from fastckpt.errors import InvalidArgumentError, UnsupportedError

__all__ = ["DT_STRING", "DT_VARIANT", "numpy_dtype", "dtype_enum", "dtype_name", "load_extended", "refresh",
           "EXTENDED_ENUMS"]

DT_STRING = 7
DT_VARIANT = 21

_ENUM_TO_NUMPY: Dict[int, np.dtype] = {
    1: np.dtype(np.float32),
    2: np.dtype(np.float64),
    3: np.dtype(np.int32),
    4: np.dtype(np.uint8),
    5: np.dtype(np.int16),
    6: np.dtype(np.int8),
    7: np.dtype(object),
    8: np.dtype(np.complex64),
    9: np.dtype(np.int64),
    10: np.dtype(np.bool_),
    11: np.dtype(np.int8),  # qint8
    12: np.dtype(np.uint8),  # quint8
    13: np.dtype(np.int32),  # qint32
    15: np.dtype(np.int16),  # qint16
    16: np.dtype(np.uint16),  # quint16
    17: np.dtype(np.uint16),
    18: np.dtype(np.complex128),
    19: np.dtype(np.float16),
    22: np.dtype(np.uint32),
    23: np.dtype(np.uint64),
}

# enum -> the ml_dtypes type, added to the tables when ml_dtypes is loaded
_EXTENDED: Dict[int, str] = {14: "bfloat16", 24: "float8_e5m2", 25: "float8_e4m3fn", 26: "float8_e4m3fnuz",
                             27: "float8_e4m3b11fnuz", 28: "float8_e5m2fnuz", 29: "int4", 30: "uint4", 31: "int2",
                             32: "uint2", 33: "float4_e2m1fn"}
EXTENDED_ENUMS = frozenset(_EXTENDED)
_MAX_ENUM = max(max(_ENUM_TO_NUMPY), max(_EXTENDED))

_NAMES: Dict[int, str] = {
    1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8",
    7: "string", 8: "complex64", 9: "int64", 10: "bool", 11: "qint8",
    12: "quint8", 13: "qint32", 14: "bfloat16", 15: "qint16", 16: "quint16",
    17: "uint16", 18: "complex128", 19: "float16", 20: "resource",
    21: "variant", 22: "uint32", 23: "uint64", 24: "float8_e5m2",
    25: "float8_e4m3fn", 26: "float8_e4m3fnuz", 27: "float8_e4m3b11fnuz",
    28: "float8_e5m2fnuz", 29: "int4", 30: "uint4", 31: "int2", 32: "uint2",
    33: "float4_e2m1fn",
}

# numpy dtype (native byte order) -> enum, for saving. Quantized enums are
# never chosen: a plain int8 array is saved as DT_INT8.
_NUMPY_TO_ENUM: Dict[np.dtype, int] = {}
for _enum, _dt in sorted(_ENUM_TO_NUMPY.items(), reverse=True):
    if _enum not in (7, 11, 12, 13, 15, 16):
        _NUMPY_TO_ENUM[_dt] = _enum
_FIXED: List[Optional[np.dtype]] = [None] * (_MAX_ENUM + 1)
for _enum, _dt in _ENUM_TO_NUMPY.items():
    if _enum not in (DT_STRING, DT_VARIANT):
        _FIXED[_enum] = _dt
_loaded = False


def load_extended() -> None:
    """Import ml_dtypes and add its types to every table (once)."""
    global _loaded
    if _loaded:
        return
    import ml_dtypes
    for enum, name in _EXTENDED.items():
        dt = np.dtype(getattr(ml_dtypes, name))
        _ENUM_TO_NUMPY[enum] = dt
        _NUMPY_TO_ENUM[dt] = enum
        _FIXED[enum] = dt
    _loaded = True


def refresh() -> None:
    """Add ml_dtypes' types to the tables if the process has imported it
    meanwhile (its arrays can exist only then)."""
    if not _loaded and "ml_dtypes" in sys.modules:
        load_extended()


def native_enums() -> Dict[np.dtype, int]:
    """numpy dtype (native byte order, as ``np.dtype`` compares) -> enum, for
    the writer's fast path: the live table (:func:`refresh` extends it),
    not to be changed by the caller."""
    refresh()
    return _NUMPY_TO_ENUM


def fixed_width_dtypes() -> List[Optional[np.dtype]]:
    """numpy dtype by enum for every fixed-width dtype (None elsewhere): what
    the reader's fast path allocates. The live table (:func:`load_extended`
    fills in ml_dtypes' types), not to be changed by the caller."""
    refresh()
    return _FIXED


def numpy_dtype(enum: int) -> np.dtype:
    """The numpy dtype that holds tensors of TensorFlow dtype ``enum``
    (``object`` for strings)."""
    if enum in _EXTENDED:
        load_extended()
    try:
        return _ENUM_TO_NUMPY[enum]
    except KeyError:
        raise UnsupportedError(
            f"TensorFlow dtype {dtype_name(enum)} cannot be read into numpy"
        ) from None


def dtype_enum(dtype: np.dtype) -> int:
    """The TensorFlow ``DataType`` enum for a numpy dtype.

    Byte order is ignored (callers convert to little-endian first); string
    kinds (``S``, ``U``, ``O``) map to DT_STRING.
    """
    if dtype.kind in "SUO":
        return DT_STRING
    refresh()
    enum: Optional[int] = _NUMPY_TO_ENUM.get(dtype.newbyteorder("="))
    if enum is None:
        raise InvalidArgumentError(
            f"numpy dtype {dtype} has no TensorFlow equivalent; supported are "
            + ", ".join(sorted({_NAMES[e] for e in _NUMPY_TO_ENUM.values()} | {"string"}
                               | {_NAMES[e] for e in _EXTENDED}))
        )
    return enum


def dtype_name(enum: int) -> str:
    """TensorFlow's name of a dtype enum (``"float32"``), or ``"dtype<N>"``."""
    return _NAMES.get(enum, f"dtype<{enum}>")
